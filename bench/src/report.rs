//! The figures of one run, as a table or one JSON object, with the §13 goals beside them.
use std::fmt::Write as _;

use crate::ceiling::Ceiling;
use crate::run::Outcome;

/// Goals of contract §13.
const GOAL_CEILING_RATIO: f64 = 0.5;
const GOAL_P99_MS: f64 = 20.0;
const GOAL_RSS_MB: f64 = 150.0;
const GOAL_RELOAD_S: f64 = 1.0;

/// Everything one run measured.
pub struct Report {
    ceiling: Ceiling,
    scenarios: Vec<Outcome>,
    paced: Option<Outcome>,
    serialized: Outcome,
    marbles: usize,
    rss_mb: f64,
    rss_peak_mb: f64,
    state_bytes: u64,
    reload_s: f64,
    reload_state_ms: Option<u64>,
    rss_reload_mb: f64,
}

impl Report {
    /// Collects the figures.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ceiling: Ceiling,
        scenarios: Vec<Outcome>,
        paced: Option<Outcome>,
        serialized: Outcome,
        marbles: usize,
        rss_mb: f64,
        rss_peak_mb: f64,
        state_bytes: u64,
        reload_s: f64,
        reload_state_ms: Option<u64>,
        rss_reload_mb: f64,
    ) -> Report {
        Report {
            ceiling,
            scenarios,
            paced,
            serialized,
            marbles,
            rss_mb,
            rss_peak_mb,
            state_bytes,
            reload_s,
            reload_state_ms,
            rss_reload_mb,
        }
    }

    /// The scenario at the highest concurrency (100 by default): the headline figures.
    fn top(&self) -> &Outcome {
        self.scenarios
            .iter()
            .max_by_key(|s| s.concurrency)
            .unwrap_or(&self.serialized)
    }

    /// achieved / ceiling: the coordinator-side ceiling on all cores vs activations/s.
    fn ceiling_ratio(&self) -> f64 {
        self.top().per_s / self.ceiling.per_s
    }

    /// The ceiling's coordinator cost over the coordinator's measured CPU per activation: the
    /// ratio the coordinator would reach if the sidecars did not share its cores.
    fn cpu_efficiency(&self) -> f64 {
        self.ceiling.coordinator_us / self.top().coordinator_cpu_us
    }

    /// One JSON object.
    pub fn json(&self) -> serde_json::Value {
        let top = self.top();
        serde_json::json!({
            "activations_per_s": round(top.per_s),
            "ceiling_per_s": round(self.ceiling.per_s),
            "ceiling_ratio": round3(self.ceiling_ratio()),
            "serialized_per_s": round(self.serialized.per_s),
            "serialized_ratio": round3(top.per_s / self.serialized.per_s),
            "p50_ms": round3(top.p50_ms),
            "p99_ms": round3(top.p99_ms),
            "max_ms": round3(top.max_ms),
            "concurrency": top.concurrency,
            "coordinator_cpu_us_per_activation": round(top.coordinator_cpu_us),
            "client_cpu_us_per_activation": round(top.client_cpu_us),
            "cpu_efficiency": round3(self.cpu_efficiency()),
            "errors": self.scenarios.iter().chain(&self.paced).map(|s| s.errors).sum::<usize>() + self.serialized.errors,
            "marbles": self.marbles,
            "rss_mb_10k": round(self.rss_mb),
            "rss_peak_mb_10k": round(self.rss_peak_mb),
            "state_log_bytes_10k": self.state_bytes,
            "reload_s_10k": round3(self.reload_s),
            "reload_state_ms_10k": self.reload_state_ms,
            "rss_mb_after_reload": round(self.rss_reload_mb),
            "paced_offered_per_s": self.paced.as_ref().and_then(|p| p.offered_per_s.map(round)),
            "paced_p50_ms": self.paced.as_ref().map(|p| round3(p.p50_ms)),
            "paced_p99_ms": self.paced.as_ref().map(|p| round3(p.p99_ms)),
            "paced": self.paced,
            "ceiling": self.ceiling,
            "scenarios": self.scenarios,
            "serialized": self.serialized,
        })
    }

    /// A human-readable table (markdown).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let c = &self.ceiling;
        let pinned = match &c.coordinator_cpus {
            Some(list) => format!(": the coordinator's, pinned to CPUs {list}"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "\nCeiling ({} cores{pinned}), µs per operation, one core:",
            c.cores
        );
        let _ = writeln!(out, "| evidence verify | leaf sign | TLS 1.3 mTLS handshake, server | coordinator sum | ceiling/s |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        let _ = writeln!(
            out,
            "| {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            c.verify_us, c.sign_us, c.handshake_server_us, c.coordinator_us, c.per_s
        );
        let _ = writeln!(
            out,
            "Sidecar side ({}): key + self-signed cert {:.1} µs, evidence {:.1} µs, handshake client {:.1} µs\n",
            if c.coordinator_cpus.is_some() {
                "on the benchmark's own CPUs"
            } else {
                "shares the cores here"
            },
            c.client_key_us,
            c.evidence_us,
            c.handshake_client_us
        );
        let _ = writeln!(out, "| concurrency | mode | activations | errors | act/s | p50 ms | p99 ms | max ms | coordinator CPU µs/act | sidecar CPU µs/act | RSS MiB |");
        let _ = writeln!(
            out,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for s in self
            .scenarios
            .iter()
            .chain(&self.paced)
            .chain(std::iter::once(&self.serialized))
        {
            let mode = match (s.serialized, s.offered_per_s) {
                (true, _) => "serialised".to_string(),
                (false, Some(rate)) => format!("open loop, offered {rate:.0}/s"),
                (false, None) => "concurrent".to_string(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.1} |",
                s.concurrency,
                mode,
                s.ok,
                s.errors,
                s.per_s,
                s.p50_ms,
                s.p99_ms,
                s.max_ms,
                s.coordinator_cpu_us,
                s.client_cpu_us,
                s.rss_mb
            );
            if let Some(e) = &s.first_error {
                let _ = writeln!(out, "|  | first error: {e} |");
            }
        }
        let top = self.top();
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let _ = writeln!(out, "\n| goal (contract §13) | measured | target | |");
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        let r = self.ceiling_ratio();
        let _ = writeln!(
            out,
            "| throughput / ceiling at {} concurrent | {:.0}/s ÷ {:.0}/s = {:.1} % | ≥ 50 % | {} |",
            top.concurrency,
            top.per_s,
            c.per_s,
            r * 100.0,
            verdict(r >= GOAL_CEILING_RATIO)
        );
        let _ = writeln!(
            out,
            "| coordinator CPU efficiency (ceiling cost ÷ coordinator CPU per activation) | {:.0} µs ÷ {:.0} µs = {:.1} % | (diagnostic) | |",
            c.coordinator_us,
            top.coordinator_cpu_us,
            self.cpu_efficiency() * 100.0
        );
        let _ = writeln!(
            out,
            "| p99 latency at {} concurrent | {:.2} ms | ≤ {GOAL_P99_MS} ms | {} |",
            top.concurrency,
            top.p99_ms,
            verdict(top.p99_ms <= GOAL_P99_MS)
        );
        if let Some(p) = &self.paced {
            let _ = writeln!(
                out,
                "| p99 latency, open loop at {:.0}/s ({:.0} % of the closed-loop throughput), ≤ {} in flight | {:.2} ms (p50 {:.2}) | ≤ {GOAL_P99_MS} ms | {} |",
                p.offered_per_s.unwrap_or(0.0),
                p.offered_per_s.unwrap_or(0.0) / top.per_s.max(f64::MIN_POSITIVE) * 100.0,
                p.concurrency,
                p.p99_ms,
                p.p50_ms,
                verdict(p.p99_ms <= GOAL_P99_MS)
            );
        }
        let _ = writeln!(
            out,
            "| concurrent ÷ serialised | {:.0}/s ÷ {:.0}/s = {:.2}× | > 1 | {} |",
            top.per_s,
            self.serialized.per_s,
            top.per_s / self.serialized.per_s,
            verdict(top.per_s > self.serialized.per_s)
        );
        let _ = writeln!(
            out,
            "| RSS at {} marbles | {:.1} MiB (peak {:.1}; state log {:.1} MiB) | ≤ {GOAL_RSS_MB} MB | {} |",
            self.marbles,
            self.rss_mb,
            self.rss_peak_mb,
            self.state_bytes as f64 / 1048576.0,
            verdict(self.rss_peak_mb <= GOAL_RSS_MB)
        );
        let _ = writeln!(
            out,
            "| reload after restart (spawn → listening) | {:.3} s (state replay {} ms; RSS after reload {:.1} MiB) | ≤ {GOAL_RELOAD_S} s | {} |",
            self.reload_s,
            self.reload_state_ms.map_or("?".to_string(), |m| m.to_string()),
            self.rss_reload_mb,
            verdict(self.reload_s <= GOAL_RELOAD_S)
        );
        out
    }
}

fn round(x: f64) -> f64 {
    x.round()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

//! Prometheus metrics (the `prometheus` crate: registry, counters, histograms and the text
//! exposition format). This module knows nothing of the coordinator's state, so the store and
//! every handler can record into it without an import circle: the gauges read from the state
//! arrive as [`Gauges`], built by the operations listener ([`crate::http::ops`]), which
//! serves `/metrics`, `/healthz` and `/readyz` on `--metrics-addr`.
//!
//! Every label is bounded: marble types are those of the current manifest (anything else is
//! `unknown`), outcomes and refusal reasons come from a fixed list, routes are the matched
//! route templates, methods the standard ones. No UUID, serial or raw path is ever a label.
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use quarry_api::EvidenceType;

use crate::http::error::ApiError;
use crate::store::{Store, StoreError, Txn, Versioned};

/// The marble-type label of a type that the current manifest does not define.
pub const UNKNOWN_MARBLE_TYPE: &str = "unknown";

/// Every value of the `outcome` label of activations and renewals: `ok` or the failure's
/// stable code ([`ApiError::code`]).
pub fn outcomes() -> impl Iterator<Item = &'static str> {
    std::iter::once("ok")
        .chain(crate::marble::refusal::Refusal::CODES)
        .chain(ApiError::REQUEST_CODES)
}

/// Latency buckets in seconds, from 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Records the outcome of one activation request (`error` is `None` on success);
/// `known_type`: the current manifest defines `marble_type` (otherwise the label is
/// `unknown`, since a client can send any string).
pub fn activation(known_type: bool, marble_type: &str, error: Option<&ApiError>) {
    let outcome = outcome(error);
    let label = bounded_marble_label(known_type && outcome != "unknown-marble-type", marble_type);
    METRICS
        .activations
        .with_label_values(&[&label, outcome])
        .inc();
}

/// Records the outcome of one certificate renewal: `outcome` is `ok` or a refusal code.
/// `marble_type` comes from a leaf the coordinator issued (`?` before that is checked).
pub fn renewal(marble_type: &str, outcome: &'static str) {
    let marble_type = match marble_type {
        "" | "?" => UNKNOWN_MARBLE_TYPE,
        t => t,
    };
    METRICS
        .renewals
        .with_label_values(&[marble_type, outcome])
        .inc();
}

/// Runs `verify` (evidence verification) and records its duration by evidence type.
pub fn time_verification<T>(kind: EvidenceType, verify: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = verify();
    METRICS
        .verification
        .with_label_values(&[kind.as_str()])
        .observe(start.elapsed().as_secs_f64());
    out
}

/// The bounded `outcome` label of a request result: `ok` or the failure's stable code.
pub fn outcome(error: Option<&ApiError>) -> &'static str {
    error.map_or("ok", ApiError::code)
}

/// axum middleware counting requests by API, matched route template, method and status.
/// Added with `.layer(axum::middleware::from_fn_with_state("client", metrics::track_http))`.
pub async fn track_http(State(api): State<&'static str>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(req.method());
    let start = Instant::now();
    let resp = next.run(req).await;
    METRICS
        .http_duration
        .with_label_values(&[api, &route])
        .observe(start.elapsed().as_secs_f64());
    METRICS
        .http_requests
        .with_label_values(&[api, &route, method, resp.status().as_str()])
        .inc();
    resp
}

/// Counts an open connection of `api` (`quarry_http_open_connections`) until the guard drops.
pub fn open_connection(api: &'static str) -> OpenConnection {
    METRICS.open_connections.with_label_values(&[api]).inc();
    OpenConnection(api)
}

/// An open connection counted in `quarry_http_open_connections`.
#[derive(Debug)]
pub struct OpenConnection(&'static str);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        METRICS.open_connections.with_label_values(&[self.0]).dec();
    }
}

/// Registers a metric whose definition is a constant: it cannot fail except by a
/// programming error (a bad name, a name used twice), which the unit tests catch.
fn registered<C>(registry: &Registry, metric: prometheus::Result<C>) -> C
where
    C: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

/// Wraps a store so that every commit is timed (`quarry_store_commit_seconds`).
pub fn timed_store<S: Store + 'static>(store: S) -> Arc<dyn Store> {
    Arc::new(TimedStore(store))
}

/// The gauges read from the coordinator's state at each scrape.
pub struct Gauges<'a> {
    /// `quarry_coordinator_state`: the phase's state code.
    pub state: i64,
    /// The coordinator runs on a simulated TEE.
    pub simulation: bool,
    /// Entries in the transparency log.
    pub log_entries: u64,
    /// The root CA certificate, DER.
    pub root_ca: &'a [u8],
    /// The current mesh CA certificate, DER (None without a manifest).
    pub mesh_ca: Option<&'a [u8]>,
    /// The collateral cache directory, when there is one.
    pub collateral_dir: Option<&'a std::path::Path>,
    /// Marbles out of policy after the TCB monitor's last run: (marble type, status) → count.
    pub tcb_out_of_policy: BTreeMap<(String, String), i64>,
}

/// Renders every metric in the Prometheus text format, after setting the gauges that are
/// read from the coordinator's state.
pub fn render(gauges: &Gauges<'_>) -> String {
    set_gauges(gauges);
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn set_gauges(g: &Gauges<'_>) {
    let m = &*METRICS;
    m.state.set(g.state);
    m.simulation.set(i64::from(g.simulation));
    m.log_entries
        .set(i64::try_from(g.log_entries).unwrap_or(i64::MAX));
    m.root_ca_expiry.set(not_after(g.root_ca).unwrap_or(0));
    m.mesh_ca_expiry
        .set(g.mesh_ca.and_then(not_after).unwrap_or(0));
    m.collateral_expiry
        .set(collateral_expiry_in(g.collateral_dir));
    // Rebuilt from the monitor's last run, so a marble back in policy (or gone) disappears.
    // Marble types come from stored records, which only activations of manifest types
    // write, and statuses from a fixed list: the labels stay bounded.
    m.tcb_out_of_policy.reset();
    for ((marble_type, status), n) in &g.tcb_out_of_policy {
        m.tcb_out_of_policy
            .with_label_values(&[marble_type, status])
            .set(*n);
    }
}

/// How long a scan of the collateral cache is reused (the cache changes when collateral is
/// fetched, which is rare; a scrape must not read every file each time).
const COLLATERAL_SCAN_TTL: Duration = Duration::from_secs(60);

/// The last scan of a collateral cache: its directory, when, and the earliest expiry (Unix
/// seconds).
type CollateralScan = (std::path::PathBuf, Instant, Option<i64>);

static COLLATERAL_SCAN: Mutex<Option<CollateralScan>> = Mutex::new(None);

/// Seconds from now until the earliest expiry of the cached collateral (negative once
/// expired); NaN without a collateral cache or with nothing in it.
fn collateral_expiry_in(dir: Option<&std::path::Path>) -> f64 {
    let Some(dir) = dir else { return f64::NAN };
    let mut scan = COLLATERAL_SCAN.lock().unwrap_or_else(|p| p.into_inner());
    let earliest = match &*scan {
        Some((d, at, earliest)) if d == dir && at.elapsed() < COLLATERAL_SCAN_TTL => *earliest,
        _ => {
            let earliest = quarry_attestation::collateral::CollateralCache::offline(dir)
                .earliest_expiry()
                .map(|e| e.at);
            *scan = Some((dir.to_path_buf(), Instant::now(), earliest));
            earliest
        }
    };
    match earliest {
        Some(at) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            at as f64 - now
        }
        None => f64::NAN,
    }
}

/// End of validity of a certificate, Unix seconds.
fn not_after(der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

fn bounded_marble_label(known: bool, marble_type: &str) -> String {
    if known {
        marble_type.to_string()
    } else {
        UNKNOWN_MARBLE_TYPE.to_string()
    }
}

fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

// === impl TimedStore ===

struct TimedStore<S>(S);

#[async_trait]
impl<S: Store> Store for TimedStore<S> {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.0.get(key).await
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.0.scan(prefix).await
    }

    async fn scan_from(
        &self,
        prefix: &str,
        from: &str,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.0.scan_from(prefix, from).await
    }

    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let start = Instant::now();
        let out = self.0.commit(txn).await;
        METRICS.store_commit.observe(start.elapsed().as_secs_f64());
        out
    }
}

// === the registry ===

struct Metrics {
    registry: Registry,
    state: IntGauge,
    simulation: IntGauge,
    activations: IntCounterVec,
    renewals: IntCounterVec,
    verification: HistogramVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    root_ca_expiry: IntGauge,
    mesh_ca_expiry: IntGauge,
    store_commit: Histogram,
    log_entries: IntGauge,
    open_connections: IntGaugeVec,
    collateral_expiry: Gauge,
    tcb_out_of_policy: IntGaugeVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        // The definitions are constants: they cannot fail except by a programming error,
        // which the unit tests catch.
        let gauge = |name: &str, help: &str| registered(&registry, IntGauge::new(name, help));
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let buckets =
            |name: &str, help: &str| HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, HistogramVec::new(buckets(name, help), labels))
        };
        let store_commit = registered(
            &registry,
            Histogram::with_opts(buckets(
                "quarry_store_commit_seconds",
                "Duration of state store commits (sealed and durable).",
            )),
        );
        let open_connections = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "quarry_http_open_connections",
                    "Open connections of the client and mesh API listeners (TCP accepted, TLS included).",
                ),
                &["api"],
            ),
        );
        let collateral_expiry = registered(
            &registry,
            Gauge::new(
                "quarry_collateral_expiry_seconds",
                "Seconds until the earliest nextUpdate/notAfter of the cached attestation collateral (negative once expired; NaN without cached collateral).",
            ),
        );
        let tcb_out_of_policy = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "quarry_tcb_marbles_out_of_policy",
                    "Running marbles whose platform the TCB monitor found out of their package's policy, by marble type and TCB status.",
                ),
                &["marble_type", "status"],
            ),
        );
        Metrics {
            tcb_out_of_policy,
            state: gauge(
                "quarry_coordinator_state",
                "Coordinator state: 1 Recovery, 2 AcceptingManifest, 3 AcceptingMarbles.",
            ),
            simulation: gauge(
                "quarry_coordinator_simulation",
                "1 when the coordinator runs on a simulated TEE.",
            ),
            activations: counter(
                "quarry_activations_total",
                "Marble activation requests by marble type and outcome (ok or the refusal reason).",
                &["marble_type", "outcome"],
            ),
            renewals: counter(
                "quarry_renewals_total",
                "Marble certificate renewals by marble type and outcome.",
                &["marble_type", "outcome"],
            ),
            verification: histogram(
                "quarry_evidence_verification_seconds",
                "Duration of marble evidence verification by evidence type.",
                &["tee"],
            ),
            http_requests: counter(
                "quarry_http_requests_total",
                "HTTP requests by API (client, mesh), route template, method and status code.",
                &["api", "route", "method", "code"],
            ),
            http_duration: histogram(
                "quarry_http_request_duration_seconds",
                "HTTP request duration by API and route template.",
                &["api", "route"],
            ),
            root_ca_expiry: gauge(
                "quarry_root_ca_expiry_timestamp_seconds",
                "End of validity of the coordinator root CA, Unix seconds.",
            ),
            mesh_ca_expiry: gauge(
                "quarry_mesh_ca_expiry_timestamp_seconds",
                "End of validity of the current mesh CA, Unix seconds (0 without a manifest).",
            ),
            log_entries: gauge(
                "quarry_transparency_log_entries",
                "Number of entries in the transparency log.",
            ),
            open_connections,
            collateral_expiry,
            store_commit,
            registry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_in_the_fixed_list_and_is_the_failures_code() {
        use crate::marble::refusal::Refusal;
        let messages = ["", "a UUID 0f8fad5b-d9cb-469f-a165-70867728950e", "nonce"];
        for m in messages {
            let mut errors = vec![
                ApiError::forbidden(m.into()),
                ApiError::wrong_state(m.into()),
                ApiError::bad_request(m.into()),
                ApiError::Request(crate::http::error::RequestFault::InvalidManifest {
                    pointer: "/Secrets".into(),
                    message: m.into(),
                }),
                ApiError::unauthorized(m.into()),
                ApiError::not_found(m.into()),
                ApiError::method_not_allowed(m.into()),
                ApiError::too_large(1),
                ApiError::timeout(m.into()),
                ApiError::unavailable(m.into()),
                ApiError::Internal(m.into()),
            ];
            errors.extend([
                Refusal::Nonce(crate::state::nonces::NonceError::Expired).into(),
                Refusal::Evidence(quarry_attestation::VerifyError::Malformed(m.into())).into(),
                Refusal::MaxActivations {
                    marble_type: m.into(),
                    max: 1,
                }
                .into(),
            ]);
            for e in errors {
                assert!(outcomes().any(|o| o == outcome(Some(&e))), "{e:?}");
                assert_eq!(outcome(Some(&e)), e.code());
            }
        }
        let all: Vec<&str> = outcomes().collect();
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(all.len(), unique.len(), "codes are unique: {all:?}");
        assert_eq!(outcome(None), "ok");
        assert_eq!(
            outcome(Some(&ApiError::wrong_state("x".into()))),
            "wrong-state"
        );
        assert_eq!(
            outcome(Some(
                &Refusal::Nonce(crate::state::nonces::NonceError::Unknown).into()
            )),
            "nonce"
        );
    }

    #[test]
    fn unknown_marble_types_share_one_label() {
        assert_eq!(bounded_marble_label(true, "db"), "db");
        assert_eq!(
            bounded_marble_label(false, "0f8fad5b-d9cb-469f-a165-70867728950e"),
            UNKNOWN_MARBLE_TYPE
        );
    }

    #[test]
    fn nonstandard_methods_share_one_label() {
        let custom = axum::http::Method::from_bytes(b"FROBNICATE").expect("valid token");
        assert_eq!(method_label(&custom), "other");
        assert_eq!(method_label(&axum::http::Method::POST), "POST");
    }

    #[test]
    fn collateral_expiry_is_seconds_until_the_earliest_next_update_or_nan() {
        assert!(collateral_expiry_in(None).is_nan(), "no cache: NaN");
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            collateral_expiry_in(Some(dir.path())).is_nan(),
            "an empty cache: NaN"
        );
        let in_a_day = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        let next = in_a_day
            .format(&time::format_description::well_known::Rfc3339)
            .expect("formats");
        let item = serde_json::json!({
            "pck_crl_issuer_chain": "", "root_ca_crl": "", "pck_crl": "",
            "tcb_info_issuer_chain": "", "tcb_info": format!(r#"{{"nextUpdate":"{next}"}}"#),
            "tcb_info_signature": "", "qe_identity_issuer_chain": "",
            "qe_identity": r#"{"nextUpdate":"2099-01-01T00:00:00Z"}"#, "qe_identity_signature": "",
        });
        std::fs::create_dir_all(dir.path().join("tdx")).expect("mkdir");
        std::fs::write(
            dir.path().join("tdx").join("00806F050000-platform.json"),
            item.to_string(),
        )
        .expect("writes");
        // A fresh scan: the directory differs from the empty one scanned above.
        let other = tempfile::tempdir().expect("tempdir");
        assert!(collateral_expiry_in(Some(other.path())).is_nan());
        let secs = collateral_expiry_in(Some(dir.path()));
        assert!(
            (86_300.0..=86_400.0).contains(&secs),
            "expected about one day, got {secs}"
        );
    }

    #[test]
    fn the_registry_builds_and_encodes_every_family() {
        time_verification(EvidenceType::Simulated, || ());
        METRICS.store_commit.observe(0.001);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&METRICS.registry.gather(), &mut out)
            .expect("encodes");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("quarry_evidence_verification_seconds_bucket{tee=\"simulated\""));
        assert!(text.contains("quarry_store_commit_seconds_count"));
        assert!(text.contains("quarry_coordinator_state"));
        assert!(text.contains("quarry_collateral_expiry_seconds"));
        let _open = open_connection("client");
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&METRICS.registry.gather(), &mut out)
            .expect("encodes");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.contains("quarry_http_open_connections{api=\"client\"} 1"),
            "{text}"
        );
    }
}

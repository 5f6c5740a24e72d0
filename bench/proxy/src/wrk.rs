//! Load from `wrk` (HTTP/1.1, fixed threads / connections / duration) and its output parsed.
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

/// How the load is generated.
#[derive(Debug, Clone)]
pub struct Load {
    /// `wrk -t`.
    pub threads: u32,
    /// `wrk -c`.
    pub connections: u32,
    /// `wrk -d`.
    pub duration: Duration,
    /// New TCP (and TLS, behind the proxies) connection per request (`Connection: close`).
    pub close: bool,
}

/// What one wrk run measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Completed requests.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

/// The wrk command line for `target`.
pub fn command(load: &Load, target: SocketAddr) -> Vec<String> {
    let mut args = vec![
        "wrk".to_string(),
        format!("-t{}", load.threads),
        format!("-c{}", load.connections),
        format!("-d{}s", load.duration.as_secs().max(1)),
        "--latency".to_string(),
    ];
    if load.close {
        args.push("-H".into());
        args.push("Connection: close".into());
    }
    args.push(format!("http://{target}/"));
    args
}

/// Runs wrk against `target`.
pub fn run(load: &Load, target: SocketAddr) -> anyhow::Result<Measured> {
    let args = command(load, target);
    let out = Command::new(&args[0])
        .args(&args[1..])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// A wrk duration (`250.00us`, `1.20ms`, `2.00s`, `1.00m`) in milliseconds.
fn duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return None,
    })
}

/// Parses `wrk --latency` output.
pub fn parse(text: &str) -> anyhow::Result<Measured> {
    let mut m = Measured::default();
    let mut have = (false, false, false);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => {
                m.p50_ms = duration_ms(v).context("p50")?;
                have.0 = true;
            }
            ["99%", v] => {
                m.p99_ms = duration_ms(v).context("p99")?;
                have.1 = true;
            }
            ["Requests/sec:", v] => {
                m.rps = v.parse().context("Requests/sec")?;
                have.2 = true;
            }
            [n, "requests", "in", ..] => m.requests = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                m.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => m.errors += n.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    if have != (true, true, true) {
        bail!("p50, p99 or Requests/sec missing");
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:8080/\n  2 threads and 50 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   635.91us    0.89ms  12.92ms   93.59%\n    Req/Sec    56.20k     8.07k   62.00k    86.54%\n  Latency Distribution\n     50%  250.00us\n     75%  491.00us\n     90%    1.00ms\n     99%    5.10ms\n  1117963 requests in 10.01s, 169.52MB read\n  Socket errors: connect 0, read 3, write 0, timeout 1\n  Non-2xx or 3xx responses: 12\nRequests/sec: 111696.30\nTransfer/sec:     16.94MB\n";
        let m = parse(text).unwrap();
        assert_eq!(m.requests, 1_117_963);
        assert!((m.rps - 111_696.30).abs() < 0.01);
        assert!((m.p50_ms - 0.25).abs() < 1e-9);
        assert!((m.p99_ms - 5.1).abs() < 1e-9);
        assert_eq!(m.errors, 16);
        assert!(parse("Requests/sec: 1\n").is_err());
        assert_eq!(duration_ms("2.00s"), Some(2000.0));
    }
}

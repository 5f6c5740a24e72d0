//! Evidence verification time per evidence type on this machine (a benchmark, not a test).
//!
//! Run: `cargo run --release -p quarry-attestation --example verify_bench [ITERATIONS]`
//!
//! Each evidence type is measured twice: **cold** (the verified-collateral cache is emptied
//! before every verification, so every collateral signature and chain is checked) and
//! **warm** (the cache holds this collateral; the quote's own signatures, the validity
//! windows, revocation and TCB matching still run every time).
//! (vectors from `$QUARRY_SHARED_DIR/testdata/attestation` or `shared/` above the repo).
use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};

use quarry_attestation::dcap::{parse_collateral, DcapVerifier};
use quarry_attestation::snp::{SnpCollateral, SnpVerifier};

fn vectors() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUARRY_SHARED_DIR") {
        return PathBuf::from(dir).join("testdata/attestation");
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let p = dir.join("shared/testdata/attestation");
        if p.is_dir() {
            return p;
        }
        if !dir.pop() {
            eprintln!("shared/testdata/attestation not found; set QUARRY_SHARED_DIR");
            std::process::exit(2);
        }
    }
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(vectors().join(rel)).unwrap_or_else(|e| {
        eprintln!("{rel}: {e}");
        std::process::exit(2)
    })
}

/// Verification times in one mode.
struct Figures {
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

fn run(n: u32, cold: bool, f: &mut impl FnMut() -> bool) -> Figures {
    let mut times = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if cold {
            quarry_attestation::cache::clear();
        }
        let t = Instant::now();
        let ok = f();
        times.push(t.elapsed());
        assert!(ok);
    }
    times.sort();
    let p = |q: f64| times[((n as f64 - 1.0) * q) as usize];
    Figures {
        mean: times.iter().sum::<Duration>() / n,
        p50: p(0.5),
        p99: p(0.99),
    }
}

fn measure(name: &str, n: u32, mut f: impl FnMut() -> bool) {
    assert!(f(), "{name}: the vector must verify");
    let cold = run(n, true, &mut f);
    assert!(f(), "{name}: the vector must verify");
    let warm = run(n, false, &mut f);
    let speedup = cold.p50.as_secs_f64() / warm.p50.as_secs_f64();
    println!(
        "{name:<28} n={n:<5} cold p50 {:>7.3} ms p99 {:>7.3} ms | warm p50 {:>7.3} ms p99 {:>7.3} ms | x{speedup:.1} ({:.0}/s warm on one core)",
        ms(cold.p50),
        ms(cold.p99),
        ms(warm.p50),
        ms(warm.p99),
        1.0 / warm.mean.as_secs_f64()
    );
    let _ = cold.mean;
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let text = |rel: &str| String::from_utf8(read(rel)).unwrap_or_default();
    let dcap = |name: &str, tdx: bool, quote: &str, col: &str, secs: u64| {
        let q = read(quote);
        let c = parse_collateral(&text(col)).expect("collateral");
        let v = if tdx {
            DcapVerifier::tdx()
        } else {
            DcapVerifier::sgx()
        };
        let now = UNIX_EPOCH + Duration::from_secs(secs);
        measure(name, n, || v.verify_quote(&q, Some(&c), now).is_ok());
    };
    dcap(
        "sgx-dcap (quote v3)",
        false,
        "sgx/dcapqvl_sgx_quote_v3.bin",
        "sgx/dcapqvl_sgx_quote_v3.collateral.json",
        1751328000,
    );
    dcap(
        "tdx-dcap (quote v4)",
        true,
        "tdx/dcapqvl_tdx_quote_v4.bin",
        "tdx/dcapqvl_tdx_quote_v4.collateral.json",
        1751328000,
    );
    dcap(
        "tdx-dcap (quote v5, TD1.5ex)",
        true,
        "tdx/dcapqvl_tdx_quote_v5_td15ex.bin",
        "tdx/dcapqvl_tdx_quote_v5_td15ex.collateral.json",
        1792454400,
    );
    let report = read("snp/virtee_milan_report.bin");
    let col = SnpCollateral {
        vek: quarry_api::bytes::encode_pem("CERTIFICATE", &read("snp/virtee_milan_vcek.der")),
        ca_chain: Some(text("snp/virtee_milan_ask_ark.pem")),
    };
    let v = SnpVerifier::new();
    let now = UNIX_EPOCH + Duration::from_secs(1748736000);
    measure("snp (report v2, Milan VCEK)", n, || {
        v.verify_report(&report, Some(&col), now).is_ok()
    });
}

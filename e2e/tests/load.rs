//! Load and bad input on the HTTP surfaces (issue 9): oversized bodies, slowloris partial
//! requests, 1,000 concurrent connections and malformed TLS. Invariant: the coordinator
//! keeps answering a normal request quickly and its memory stays bounded.
use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_e2e::{fetch_root_unverified, https, tls_config, Coordinator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A normal request must be answered within this while the coordinator is under attack.
const RESPONSIVE: Duration = Duration::from_secs(2);

struct Running {
    coord: Coordinator,
    root: String,
    _tmp: tempfile::TempDir,
}

async fn running() -> Running {
    let tmp = tempfile::tempdir().unwrap();
    let platform = tmp.path().join("sim");
    quarry_attestation::simulated::SimPlatform::create(&platform).unwrap();
    let coord = Coordinator::start(
        &tmp.path().join("data"),
        &platform,
        &tmp.path().join("coordinator.log"),
    )
    .unwrap();
    let root = fetch_root_unverified(&coord).await.unwrap();
    Running {
        coord,
        root,
        _tmp: tmp,
    }
}

/// `GET /api/v2/status` answers 200 within [`RESPONSIVE`]; returns how long it took.
async fn assert_responsive(r: &Running, when: &str) -> Duration {
    let client = https(tls_config(&r.root, None).unwrap()).unwrap();
    let t = Instant::now();
    let resp = tokio::time::timeout(
        RESPONSIVE,
        client
            .get(format!("{}/api/v2/status", r.coord.client_url()))
            .send(),
    )
    .await
    .unwrap_or_else(|_| panic!("{when}: status did not answer within {RESPONSIVE:?}"))
    .unwrap_or_else(|e| panic!("{when}: status failed: {e}"));
    assert_eq!(resp.status().as_u16(), 200, "{when}");
    t.elapsed()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A TLS connection to `addr` trusting `root`, without a client certificate.
async fn tls_stream(
    addr: std::net::SocketAddr,
    root: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = tls_config(root, None).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_with_413_and_nothing_is_buffered() {
    let r = running().await;
    let client = https(tls_config(&r.root, None).unwrap()).unwrap();
    let big = vec![b'{'; quarry_api::http::MAX_BODY_BYTES + 1];
    let resp = client
        .post(format!("{}/api/v2/manifest", r.coord.client_url()))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let mut buf = vec![0u8; 4096];
    // A chunked body that never ends is cut at the limit too.
    let mut s = tls_stream(r.coord.client, &r.root).await.unwrap();
    s.write_all(b"POST /api/v2/manifest HTTP/1.1\r\nhost: c\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024));
    let mut answered = false;
    for _ in 0..(quarry_api::http::MAX_BODY_BYTES / (64 * 1024) + 8) {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            answered = true;
            break;
        }
    }
    let n = tokio::time::timeout(RESPONSIVE, s.read(&mut buf)).await;
    if let Ok(Ok(n)) = n {
        let head = String::from_utf8_lossy(&buf[..n]);
        answered |= head.starts_with("HTTP/1.1 413");
    }
    assert!(answered, "an endless chunked body was not cut off");
    assert_responsive(&r, "after oversized bodies").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tls_and_plaintext_are_dropped_and_the_coordinator_keeps_serving() {
    let r = running().await;
    let inputs: Vec<Vec<u8>> = vec![
        b"GET /api/v2/status HTTP/1.1\r\nhost: c\r\n\r\n".to_vec(),
        vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00],
        vec![0x16, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5],
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
        vec![0u8; 70_000],
    ];
    for addr in [r.coord.client, r.coord.mesh] {
        for input in &inputs {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(input).await;
            let mut buf = vec![0u8; 1024];
            // The coordinator answers with an alert and/or closes; it must not hang.
            let read = tokio::time::timeout(Duration::from_secs(12), async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            assert!(read.is_ok(), "{addr}: a malformed handshake was kept open");
        }
    }
    assert_responsive(&r, "after malformed TLS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_are_served_and_memory_stays_bounded() {
    let r = running().await;
    let pid_rss = |r: &Running| rss_kb(r.coord.pid().expect("coordinator runs"));
    let before = pid_rss(&r);
    let addr = r.coord.client;
    let root = Arc::new(r.root.clone());
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let root = root.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = tls_stream(addr, &root).await?;
            s.write_all(b"GET /api/v2/status HTTP/1.1\r\nhost: c\r\n\r\n")
                .await?;
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await?;
            // Hold the connection open until every other one is established.
            Ok::<_, std::io::Error>((String::from_utf8_lossy(&buf[..n]).to_string(), s))
        }));
    }
    let mut held = Vec::new();
    let mut failed = 0;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(60), t).await {
            Ok(Ok(Ok((head, s)))) => {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                held.push(s);
            }
            _ => failed += 1,
        }
    }
    assert_eq!(failed, 0, "{failed} of 1000 connections failed");
    let during = assert_responsive(&r, "with 1000 open connections").await;
    let peak = pid_rss(&r);
    drop(held);
    eprintln!(
        "1000 connections: status answered in {during:?}; RSS {} → {} MiB",
        before / 1024,
        peak / 1024
    );
    assert!(
        peak < before + 200 * 1024,
        "1000 idle connections cost {} MiB",
        (peak - before) / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_partial_requests_do_not_block_other_clients() {
    let r = running().await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = tls_stream(r.coord.client, &r.root).await.unwrap();
        s.write_all(b"GET /api/v2/status HTTP/1.1\r\nhost: c\r\nx-slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // Trickle one byte per connection, several rounds, checking a normal client each time.
    for round in 0..3 {
        for s in slow.iter_mut() {
            let _ = s.write_all(b"a").await;
        }
        assert_responsive(&r, &format!("slowloris round {round}")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Half a TLS handshake (TCP connect, nothing sent) does not pin a task either.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(r.coord.mesh).await.unwrap());
    }
    assert_responsive(&r, "with 300 silent TCP connections").await;
}

/// Documents a missing limit: the body limit is only enforced as bytes arrive, so a request
/// that declares 10 GB and then sends nothing holds its connection and task forever. Run with
/// `--ignored` once the routers refuse by `content-length` up front and time out body reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "no content-length check before reading and no body read timeout yet (see docs/performance.md)"]
async fn a_declared_oversized_body_is_refused_before_it_is_read() {
    let r = running().await;
    let mut buf = vec![0u8; 4096];
    // A declared length of 10 GB is refused without reading (or waiting for) the body.
    let mut s = tls_stream(r.coord.client, &r.root).await.unwrap();
    s.write_all(
        b"POST /api/v2/manifest HTTP/1.1\r\nhost: c\r\ncontent-type: application/json\r\ncontent-length: 10000000000\r\n\r\n{",
    )
    .await
    .unwrap();
    let n = tokio::time::timeout(RESPONSIVE, s.read(&mut buf))
        .await
        .expect("no answer to a 10 GB content-length")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

/// Documents a missing limit: hyper only enforces `header_read_timeout` when the connection
/// builder has a timer, and `tls.rs` sets none, so a partial request is kept forever.
/// Run with `--ignored` once the coordinator sets a timer and header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the coordinator has no HTTP header read timeout yet (see docs/performance.md)"]
async fn a_partial_request_is_closed_by_a_header_timeout() {
    let r = running().await;
    let mut s = tls_stream(r.coord.client, &r.root).await.unwrap();
    s.write_all(b"GET /api/v2/status HTTP/1.1\r\nhost: c\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(45), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a partial request was kept open for 45 s");
}

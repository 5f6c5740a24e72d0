//! The crypto ceiling of one activation on this machine, measured in this process: one
//! simulated evidence verification, one marble leaf signature (the coordinator's own
//! `issue_marble_leaf`) and the server side of one TLS 1.3 handshake with client
//! authentication (in memory, the coordinator's TLS settings). The client-side costs a
//! sidecar pays are measured too: unless the coordinator is pinned (`--coordinator-cpus`),
//! the sidecars of this benchmark share its cores.
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use quarry_attestation::simulated::{SimProvider, SimVerifier};
use quarry_attestation::{EvidenceProvider, Verifier};
use quarry_coordinator::pki::{CaKey, LeafRequest};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;

/// Per-operation costs in microseconds (median of rounds) and the ceiling they imply.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// One simulated evidence verification.
    pub verify_us: f64,
    /// One marble leaf certificate (build + ECDSA P-256 signature).
    pub sign_us: f64,
    /// Server side of one TLS 1.3 full handshake with client certificate.
    pub handshake_server_us: f64,
    /// Client side of the same handshake (paid by the sidecar).
    pub handshake_client_us: f64,
    /// Sidecar key generation + self-signed certificate.
    pub client_key_us: f64,
    /// Sidecar evidence generation (simulated: one ECDSA signature).
    pub evidence_us: f64,
    /// CPUs the coordinator runs on (all of this machine's unless pinned).
    pub cores: usize,
    /// The coordinator's CPU list when pinned (`--coordinator-cpus`), else `None`.
    pub coordinator_cpus: Option<String>,
    /// verify + sign + server handshake.
    pub coordinator_us: f64,
    /// `cores` / `coordinator_us`: activations per second if the cores did nothing else.
    pub per_s: f64,
}

/// Measures the ceiling of a coordinator on `cores` CPUs (`pinned`: their list, if the
/// coordinator is pinned); `provider` signs evidence that `verifier` accepts.
pub fn measure(
    provider: &SimProvider,
    verifier: &SimVerifier,
    round: Duration,
    cores: usize,
    pinned: Option<String>,
) -> anyhow::Result<Ceiling> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let rd = quarry_api::evidence::activation_report_data(&spki, Some(&[7; 32]));
    let evidence = provider.evidence(&rd)?;

    let verify_us = median_us(round, || {
        verifier
            .verify(&evidence, SystemTime::now())
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    let evidence_us = median_us(round, || {
        provider.evidence(&rd).map(|_| ()).map_err(Into::into)
    })?;
    let client_key_us = median_us(round, || {
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        rcgen::CertificateParams::new(vec![])?.self_signed(&k)?;
        Ok(())
    })?;

    let root = CaKey::new_root()?;
    let mesh = CaKey::new_mesh(&root)?;
    let uuid = uuid::Uuid::new_v4();
    let spiffe = format!("spiffe://quarry.bench/marble/bench/{uuid}");
    let digest = [3u8; 32];
    let sign_us = median_us(round, || {
        mesh.issue_marble_leaf(&LeafRequest {
            spki_der: &spki,
            uuid: &uuid,
            spiffe_id: &spiffe,
            dns_names: &[],
            valid_for: Duration::from_secs(86400),
            marble_type: "bench",
            claims_digest: &digest,
            simulation: true,
        })?;
        Ok(())
    })?;

    let (server_cfg, client_cfg) = tls_configs(&root)?;
    let mut server_times = Vec::new();
    let mut client_times = Vec::new();
    for _ in 0..3 {
        let (mut s, mut c, mut n) = (Duration::ZERO, Duration::ZERO, 0u32);
        let end = Instant::now() + round;
        while Instant::now() < end {
            let (sd, cd) = handshake(&server_cfg, &client_cfg)?;
            s += sd;
            c += cd;
            n += 1;
        }
        server_times.push(s.as_secs_f64() * 1e6 / f64::from(n));
        client_times.push(c.as_secs_f64() * 1e6 / f64::from(n));
    }
    let handshake_server_us = median(server_times);
    let handshake_client_us = median(client_times);
    let coordinator_us = verify_us + sign_us + handshake_server_us;
    Ok(Ceiling {
        verify_us,
        sign_us,
        handshake_server_us,
        handshake_client_us,
        client_key_us,
        evidence_us,
        cores,
        coordinator_cpus: pinned,
        coordinator_us,
        per_s: cores as f64 * 1e6 / coordinator_us,
    })
}

/// Median over 3 rounds of the mean time of `op`, in µs.
fn median_us(round: Duration, mut op: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let warm = Instant::now() + round / 4;
    while Instant::now() < warm {
        op()?;
    }
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < round {
            op()?;
            n += 1;
        }
        rounds.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(n));
    }
    Ok(median(rounds))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Server (coordinator settings: TLS 1.3, ring, chain leaf + root, any client certificate
/// whose key signs the handshake) and client (pinned root, fresh self-signed certificate).
fn tls_configs(
    root: &CaKey,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> {
    let provider = quarry_coordinator::http::tls::provider();
    let (leaf, leaf_key) = root.issue_server_cert(&["127.0.0.1".to_string()])?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(quarry_trust::tls::AnyClientCert::new(true)))
        .with_single_cert(
            vec![
                CertificateDer::from(leaf),
                CertificateDer::from(root.cert_der().to_vec()),
            ],
            PrivateKeyDer::Pkcs8(leaf_key.expose().to_vec().into()),
        )?;
    quarry_coordinator::http::tls::apply_server_policy(&mut server);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.cert_der().to_vec()))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = rcgen::CertificateParams::new(vec![])?.self_signed(&key)?;
    // The sidecars' provider: ring's default order (the server picks the suite).
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )?;
    Ok((Arc::new(server), Arc::new(client)))
}

/// One full in-memory handshake; returns (server time, client time).
fn handshake(
    server_cfg: &Arc<rustls::ServerConfig>,
    client_cfg: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<(Duration, Duration)> {
    let (mut st, mut ct) = (Duration::ZERO, Duration::ZERO);
    let t = Instant::now();
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut client = rustls::ClientConnection::new(client_cfg.clone(), name)?;
    ct += t.elapsed();
    let t = Instant::now();
    let mut server = rustls::ServerConnection::new(server_cfg.clone())?;
    st += t.elapsed();
    let mut buf = Vec::new();
    for _ in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() && !server.wants_write() {
            break;
        }
        let t = Instant::now();
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf)?;
        }
        ct += t.elapsed();
        let t = Instant::now();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd)?;
            server.process_new_packets()?;
        }
        let mut out = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut out)?;
        }
        st += t.elapsed();
        let t = Instant::now();
        let mut rd = &out[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd)?;
            client.process_new_packets()?;
        }
        ct += t.elapsed();
    }
    anyhow::ensure!(
        !client.is_handshaking() && !server.is_handshaking(),
        "in-memory handshake did not complete"
    );
    Ok((st, ct))
}

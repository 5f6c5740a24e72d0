//! Driving the coordinator: bootstrap (root CA, manifest) and the concurrent scenarios.
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use quarry_attestation::simulated::SimProvider;
use rustls_pki_types::CertificateDer;
use serde::Serialize;

use crate::coordinator::{cpu_seconds_of, Coordinator};
use crate::sidecar::{connect, request, Mesh, SerialLock};

/// The marble type every sidecar activates as.
pub const MARBLE_TYPE: &str = "bench";
/// MaxActivations of the benchmark marble: set so every activation writes its counter.
const MAX_ACTIVATIONS: u64 = 1_000_000_000;

/// One concurrency level and how many activations to run at it.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Sidecars running at once.
    pub concurrency: usize,
    /// Activations in total.
    pub count: usize,
}

impl FromStr for Scenario {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Scenario> {
        let (c, n) = s
            .split_once(':')
            .with_context(|| format!("scenario {s:?} is not LEVEL:COUNT"))?;
        Ok(Scenario {
            concurrency: c.trim().parse()?,
            count: n.trim().parse()?,
        })
    }
}

/// Figures of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Sidecars at once.
    pub concurrency: usize,
    /// One global lock around evidence + activation request.
    pub serialized: bool,
    /// Successful activations.
    pub ok: usize,
    /// Failed activations (with the first error).
    pub errors: usize,
    /// First error text, if any.
    pub first_error: Option<String>,
    /// Wall time.
    pub secs: f64,
    /// ok / secs.
    pub per_s: f64,
    /// Latency percentiles of one activation (key generation to response), ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
    /// Coordinator CPU per activation (user + system, all threads), µs.
    pub coordinator_cpu_us: f64,
    /// Benchmark (sidecar) CPU per activation, µs.
    pub client_cpu_us: f64,
    /// Coordinator VmRSS after the scenario, MiB.
    pub rss_mb: f64,
    /// Open-loop runs only: the offered arrival rate, activations/s (latency then counts
    /// from each activation's scheduled start, so queueing before it starts is included).
    pub offered_per_s: Option<f64>,
}

/// Fetches the root CA (bootstrap over an unauthenticated connection: benchmark only),
/// posts the manifest and returns the sidecars' shared setup.
pub async fn prepare(coord: &Coordinator, provider: Arc<SimProvider>) -> anyhow::Result<Mesh> {
    let mesh = prepare_existing(coord, provider).await?;
    let manifest = serde_json::json!({
        "Packages": {
            "bench": {"TEE": "simulated", "UniqueID": hex::encode([0x42u8; 32])}
        },
        "Marbles": {
            MARBLE_TYPE: {
                "Package": "bench",
                "MaxActivations": MAX_ACTIVATIONS,
                "Parameters": {
                    "Env": {
                        "SHARED": "{{ hex .Secrets.shared_key }}",
                        "PRIVATE": "{{ hex .Secrets.private_key }}"
                    },
                    "Argv": ["bench-svc"]
                }
            }
        },
        "Secrets": {
            "shared_key": {"Type": "symmetric-key", "Size": 256, "Shared": true},
            "private_key": {"Type": "symmetric-key", "Size": 256}
        }
    });
    let body = serde_json::json!({
        "manifest": quarry_api::bytes::b64(&serde_json::to_vec(&manifest)?)
    });
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(mesh.roots.clone())
    .with_no_client_auth();
    let (mut send, _driver) = connect(coord.client, config).await?;
    request(
        &mut send,
        "POST",
        "/api/v2/manifest",
        Some(serde_json::to_vec(&body)?),
    )
    .await
    .context("setting the manifest")?;
    Ok(mesh)
}

/// Like [`prepare`] for a coordinator that already runs the deployment.
pub async fn prepare_existing(
    coord: &Coordinator,
    provider: Arc<SimProvider>,
) -> anyhow::Result<Mesh> {
    let (mut send, _driver) = connect(coord.client, insecure::config()?).await?;
    let quote = request(&mut send, "GET", "/api/v2/quote", None).await?;
    let chain = quote["data"]["cert"]
        .as_str()
        .context("quote response without a certificate chain")?;
    let root = pem::parse_many(chain)?
        .pop()
        .context("empty certificate chain")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.contents().to_vec()))?;
    Ok(Mesh {
        addr: coord.mesh,
        roots: Arc::new(roots),
        provider,
        marble_type: MARBLE_TYPE.to_string(),
    })
}

/// `n` sequential activations that must all succeed; returns `n`.
pub async fn warm_up(mesh: &Mesh, n: usize) -> anyhow::Result<usize> {
    for _ in 0..n {
        mesh.activate(None).await.context("warm-up activation")?;
    }
    Ok(n)
}

/// Runs `s.count` activations with `s.concurrency` sidecars at once.
pub async fn scenario(
    mesh: &Arc<Mesh>,
    coord: &Coordinator,
    s: Scenario,
    serialized: bool,
) -> anyhow::Result<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Tally::new(s.count);
    let lock: Option<SerialLock> = serialized.then(|| Arc::new(tokio::sync::Mutex::new(())));
    let meter = Meter::start(coord)?;
    let mut tasks = Vec::new();
    for _ in 0..s.concurrency {
        let (mesh, next, tally, lock) = (mesh.clone(), next.clone(), tally.clone(), lock.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < s.count {
                tally.record(mesh.activate(lock.as_ref()).await.map(|a| a.total));
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    meter.finish(coord, &tally, s.concurrency, serialized, None)
}

/// Latencies and errors of one scenario, shared by its tasks.
#[derive(Clone)]
struct Tally {
    latencies: Arc<Mutex<Vec<Duration>>>,
    errors: Arc<Mutex<(usize, Option<String>)>>,
}

impl Tally {
    fn new(capacity: usize) -> Tally {
        Tally {
            latencies: Arc::new(Mutex::new(Vec::with_capacity(capacity))),
            errors: Arc::new(Mutex::new((0, None))),
        }
    }

    /// Counts one activation: its latency, or its error (the first one is kept as text).
    fn record(&self, outcome: anyhow::Result<Duration>) {
        match outcome {
            Ok(latency) => self.latencies.lock().expect("latencies").push(latency),
            Err(e) => {
                let mut g = self.errors.lock().expect("errors");
                g.0 += 1;
                g.1.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
}

/// Wall time and CPU (coordinator and this process) since a scenario started.
struct Meter {
    started: Instant,
    coordinator_cpu: f64,
    own_cpu: f64,
}

impl Meter {
    fn start(coord: &Coordinator) -> anyhow::Result<Meter> {
        Ok(Meter {
            coordinator_cpu: coord.cpu_seconds()?,
            own_cpu: cpu_seconds_of("/proc/self/stat")?,
            started: Instant::now(),
        })
    }

    /// The figures of the scenario that ran since [`Meter::start`].
    fn finish(
        self,
        coord: &Coordinator,
        tally: &Tally,
        concurrency: usize,
        serialized: bool,
        offered_per_s: Option<f64>,
    ) -> anyhow::Result<Outcome> {
        let secs = self.started.elapsed().as_secs_f64();
        let coordinator_cpu = coord.cpu_seconds()? - self.coordinator_cpu;
        let client_cpu = cpu_seconds_of("/proc/self/stat")? - self.own_cpu;
        let mut lat = std::mem::take(&mut *tally.latencies.lock().expect("latencies"));
        lat.sort();
        let (errors, first_error) = tally.errors.lock().expect("errors").clone();
        let ok = lat.len();
        let per = |cpu: f64| if ok == 0 { 0.0 } else { cpu * 1e6 / ok as f64 };
        Ok(Outcome {
            concurrency,
            serialized,
            ok,
            errors,
            first_error,
            secs,
            per_s: ok as f64 / secs,
            p50_ms: percentile(&lat, 0.50),
            p99_ms: percentile(&lat, 0.99),
            max_ms: lat.last().map_or(0.0, ms),
            coordinator_cpu_us: per(coordinator_cpu),
            client_cpu_us: per(client_cpu),
            rss_mb: coord.rss_mb()?.0,
            offered_per_s,
        })
    }
}

/// Open loop: `count` activations started at a fixed `rate` per second, at most
/// `max_in_flight` at once. Unlike [`scenario`] (closed loop, where N sidecars always have
/// a request outstanding and latency = N ÷ throughput by Little's law), this measures the
/// latency a pod start sees when the coordinator is loaded but not saturated. Latency counts
/// from the scheduled start, so waiting for a free slot is included.
pub async fn paced(
    mesh: &Arc<Mesh>,
    coord: &Coordinator,
    max_in_flight: usize,
    rate: f64,
    count: usize,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(rate > 0.0, "paced rate must be positive");
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let tally = Tally::new(count);
    let meter = Meter::start(coord)?;
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let (mesh, slots, tally) = (mesh.clone(), slots.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            tally.record(mesh.activate(None).await.map(|_| due.elapsed()));
        }));
    }
    for t in tasks {
        t.await?;
    }
    meter.finish(coord, &tally, max_in_flight, false, Some(rate))
}

/// Nearest-rank percentile of sorted durations, in ms.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    ms(&sorted[rank - 1])
}

fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A verifier that accepts any server certificate, for fetching the root CA once.
mod insecure {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

    pub(super) fn config() -> anyhow::Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth(),
        )
    }

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("TLS 1.2 is not offered".into()))
        }

        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

//! Certificate renewal (contract §3, §6): while the proxies run, the sidecar renews the
//! marble's leaf at 2/3 of its lifetime with `POST /api/v2/renew`, authenticated by the current
//! leaf as TLS client certificate plus fresh evidence binding the same key to a new nonce, and
//! swaps the new chain into the running proxies ([`CertStore::replace`]): open connections keep
//! their certificate, new handshakes use the new one. Failures are retried with exponential
//! backoff, each one logged with the time left before the certificate expires.
//!
//! The lifetime is counted from the later of the leaf's notBefore and the moment the sidecar
//! received it, because the coordinator backdates notBefore for clock skew.
//!
//! What is renewed: the certificate the proxies present, and (`run`) the manifest Files the
//! sidecar wrote at activation whose templates use `.MarbleRun.MarbleCert.Cert`: the
//! coordinator renders them again with the new leaf and the sidecar replaces each one
//! atomically (temporary file, fsync, rename, mode 0600) before the next renewal is
//! scheduled. The `MARBLE_PREDEFINED_MARBLE_CERTIFICATE_CHAIN` variable of the running service
//! cannot change, and `activate --out DIR` is one-shot, so its files are not renewed either;
//! services that read the leaf only at start must be restarted (re-activated) within
//! `CertValidFor`, as with MarbleRun.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quarry_api::evidence::activation_report_data;
use quarry_api::http::{RenewRequest, Value};
use quarry_attestation::EvidenceProvider;
use rustls::sign::CertifiedKey;
use zeroize::Zeroizing;

use crate::client::{ClientError, MeshClient, TrustAnchor};
use crate::proxy::{CertStore, MeshIdentity, Proxies};
/// First wait after a failed renewal; doubles after each further failure.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two renewal attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Shortest wait before a renewal or retry.
const MIN_DELAY: Duration = Duration::from_millis(100);

/// Why renewal or a CRL fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum UpkeepError {
    /// The client could not be built.
    #[error("building the coordinator client: {0}")]
    Setup(String),
    /// The request did not complete.
    #[error("request to {url} failed: {reason}")]
    Transport {
        /// The URL called.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The coordinator refused.
    #[error("refused by the coordinator: {0}")]
    Refused(String),
    /// The answer is not what the protocol says.
    #[error("unexpected answer from the coordinator to {what}: {reason}")]
    Protocol {
        /// The request.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The TEE could not produce evidence.
    #[error("producing evidence: {0}")]
    Evidence(String),
    /// The renewed certificate cannot be used.
    #[error("the renewed certificate is unusable: {0}")]
    Certificate(String),
    /// A file holding the certificate could not be replaced.
    #[error("replacing the files that hold the certificate: {0}")]
    Files(#[from] crate::materialise::MaterialiseError),
}

impl From<ClientError> for UpkeepError {
    /// The mesh client's errors, worded for renewal and CRL refresh (a refusal here is not
    /// an activation refusal).
    fn from(e: ClientError) -> UpkeepError {
        match e {
            ClientError::Refused {
                message,
                code,
                fields,
            } => UpkeepError::Refused(crate::client::refusal_line(
                code.as_deref(),
                &message,
                &fields,
            )),
            ClientError::Unreachable { url, reason }
            | ClientError::Transport { url, reason }
            | ClientError::Handshake { url, reason }
            | ClientError::CoordinatorNotAuthenticated { url, reason } => {
                UpkeepError::Transport { url, reason }
            }
            ClientError::Protocol { what, reason } => UpkeepError::Protocol { what, reason },
            ClientError::Evidence(e) => UpkeepError::Evidence(e.to_string()),
            ClientError::LeafKeyMismatch => UpkeepError::Certificate(e.to_string()),
            ClientError::RootCa { .. } | ClientError::Setup(_) => UpkeepError::Setup(e.to_string()),
        }
    }
}

/// The manifest Files the sidecar wrote at activation, replaced when a renewal brings them
/// re-rendered with the new certificate.
pub struct RenewedFiles {
    /// The paths as the manifest names them (only these are ever written).
    pub written: BTreeSet<String>,
    /// What relative paths resolve against (`None`: the working directory), as at activation.
    pub base: Option<PathBuf>,
    /// The marble's private key, PKCS#8 DER, for `.MarbleRun.MarbleCert.Private` segments.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for RenewedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewedFiles")
            .field("written", &self.written)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl RenewedFiles {
    /// Replaces, atomically and at mode 0600, each file of `files` that was written at
    /// activation; others are ignored with a warning. Returns how many were replaced.
    pub fn replace(&self, files: &BTreeMap<String, Value>) -> Result<usize, UpkeepError> {
        let mut replaced = 0;
        for (name, value) in files {
            if !self.written.contains(name) {
                tracing::warn!(path = %name, "the renewal carries a file this sidecar did not write at activation; ignored");
                continue;
            }
            let relative = crate::materialise::check_path(name)?;
            let path = match &self.base {
                Some(base) if relative.is_relative() => base.join(relative),
                _ => relative.to_path_buf(),
            };
            let bytes = Zeroizing::new(value.assemble(&self.key_pkcs8));
            crate::materialise::write_file(&path, &bytes, crate::materialise::SECRET_FILE_MODE)?;
            tracing::info!(path = %path.display(), "replaced file with the renewed certificate");
            replaced += 1;
        }
        Ok(replaced)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// notBefore and notAfter of a certificate (DER), Unix seconds.
pub fn leaf_times(cert_der: &[u8]) -> Result<(i64, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// How long to wait before renewing a leaf valid from `not_before` to `not_after` (Unix
/// seconds) that was received at `received_ms`, at `now_ms`: until 2/3 of its lifetime,
/// counted from the later of notBefore and its receipt.
pub fn renewal_delay(not_before: i64, not_after: i64, received_ms: i64, now_ms: i64) -> Duration {
    let start = (not_before.saturating_mul(1000)).max(received_ms);
    let end = not_after.saturating_mul(1000);
    let at = start + (end - start).max(0) * 2 / 3;
    Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0)).max(MIN_DELAY)
}

/// How long to wait after a failed attempt: the backoff, but never past half the time left
/// before expiry (so several attempts happen before it).
pub fn retry_delay(backoff: Duration, not_after: i64, now_ms: i64) -> Duration {
    let left = not_after.saturating_mul(1000) - now_ms;
    if left <= 0 {
        return backoff;
    }
    backoff
        .min(Duration::from_millis(u64::try_from(left / 2).unwrap_or(0)))
        .max(MIN_DELAY)
}

/// Renews the marble's leaf for as long as the proxies run.
pub struct Renewer {
    link: Arc<MeshClient>,
    provider: Arc<dyn EvidenceProvider>,
    spki: Vec<u8>,
    spiffe_id: String,
    certs: Arc<CertStore>,
    files: Option<Arc<RenewedFiles>>,
}

impl std::fmt::Debug for Renewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewer")
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

impl Renewer {
    /// A renewer of the leaf in `certs` for the key `spki` with SPIFFE ID `spiffe_id`.
    pub fn new(
        link: Arc<MeshClient>,
        provider: Arc<dyn EvidenceProvider>,
        spki: Vec<u8>,
        spiffe_id: String,
        certs: Arc<CertStore>,
    ) -> Renewer {
        Renewer {
            link,
            provider,
            spki,
            spiffe_id,
            certs,
            files: None,
        }
    }

    /// Also replaces these files when a renewal brings them re-rendered.
    pub fn with_files(mut self, files: Option<RenewedFiles>) -> Renewer {
        self.files = files.map(Arc::new);
        self
    }

    /// One renewal: nonce, evidence, request, checks, swap. Returns the new serial (hex).
    pub async fn renew_once(&self) -> Result<String, UpkeepError> {
        let nonce = self.link.nonce().await?;
        let report_data = activation_report_data(&self.spki, Some(&nonce));
        let provider = self.provider.clone();
        let evidence = tokio::task::spawn_blocking(move || provider.evidence(&report_data))
            .await
            .map_err(|e| UpkeepError::Evidence(e.to_string()))?
            .map_err(|e| UpkeepError::Evidence(e.to_string()))?;
        let mut response = self
            .link
            .renew(&RenewRequest {
                evidence,
                nonce: hex::encode(nonce),
            })
            .await?;
        if response.spiffe_id != self.spiffe_id {
            return Err(UpkeepError::Certificate(format!(
                "it names {:?}, this marble is {:?}",
                response.spiffe_id, self.spiffe_id
            )));
        }
        let chain = rustls_pemfile::certs(&mut response.certificate_chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| UpkeepError::Certificate(format!("not PEM: {e}")))?;
        if chain.len() < 2 {
            return Err(UpkeepError::Certificate(
                "the chain must hold the leaf and the mesh CA".into(),
            ));
        }
        let current = self.certs.current();
        let renewed = CertifiedKey::new(chain, current.key.clone());
        // The leaf must be for this marble's key, or nothing of the answer is used.
        renewed
            .keys_match()
            .map_err(|e| UpkeepError::Certificate(format!("not for this marble's key: {e}")))?;
        self.certs.replace(Arc::new(renewed));
        if let Some(files) = self.files.clone() {
            // fsync and rename off the proxies' thread.
            let rendered = std::mem::take(&mut response.files);
            tokio::task::spawn_blocking(move || files.replace(&rendered))
                .await
                .map_err(|e| UpkeepError::Setup(format!("file replacement task: {e}")))??;
        }
        Ok(response.serial)
    }

    /// Renews at 2/3 of each leaf's lifetime, retrying failures with backoff, forever.
    pub async fn run_forever(self) {
        let mut received = unix_now_ms();
        loop {
            let current = self.certs.current();
            let Some((not_before, not_after)) = current
                .end_entity_cert()
                .ok()
                .and_then(|c| leaf_times(c).ok())
            else {
                tracing::error!("the marble certificate does not parse; renewal stopped");
                return;
            };
            let delay = renewal_delay(not_before, not_after, received, unix_now_ms());
            tracing::info!(
                renew_in_ms = delay.as_millis() as u64,
                not_after,
                "certificate renewal scheduled"
            );
            tokio::time::sleep(delay).await;
            let mut backoff = INITIAL_BACKOFF;
            loop {
                match self.renew_once().await {
                    Ok(serial) => {
                        received = unix_now_ms();
                        tracing::info!(%serial, "marble certificate renewed and swapped into the proxies");
                        break;
                    }
                    Err(e) => {
                        let now = unix_now_ms();
                        let wait = retry_delay(backoff, not_after, now);
                        let left_s = not_after - now / 1000;
                        if left_s > 0 {
                            tracing::warn!(
                                error = %e,
                                expires_in_s = left_s,
                                retry_in_ms = wait.as_millis() as u64,
                                "certificate renewal failed; retrying before the certificate expires"
                            );
                        } else {
                            tracing::error!(
                                error = %e,
                                expired_s_ago = -left_s,
                                retry_in_ms = wait.as_millis() as u64,
                                "certificate renewal failed and the certificate has EXPIRED: mesh peers refuse this marble; restart it to activate again"
                            );
                        }
                        tokio::time::sleep(wait).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }
}

/// What the background upkeep (renewal and CRL refresh) needs besides the proxies' identity.
pub struct Upkeep {
    /// Base URL of the coordinator's mesh API.
    pub coordinator: reqwest::Url,
    /// How the coordinator is authenticated.
    pub trust: TrustAnchor,
    /// Evidence for renewals.
    pub provider: Arc<dyn EvidenceProvider>,
    /// The marble key's SubjectPublicKeyInfo (DER).
    pub spki: Vec<u8>,
    /// The marble's SPIFFE ID.
    pub spiffe_id: String,
    /// CRL refresh interval.
    pub crl_interval: Duration,
    /// Files written at activation, replaced at each renewal (`run`); `None` for `proxy`.
    pub files: Option<RenewedFiles>,
}

impl std::fmt::Debug for Upkeep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upkeep")
            .field("coordinator", &self.coordinator.as_str())
            .field("spiffe_id", &self.spiffe_id)
            .field("crl_interval", &self.crl_interval)
            .finish_non_exhaustive()
    }
}

impl Upkeep {
    /// Starts renewal and CRL refresh beside `proxies` (they stop with them).
    pub fn start(self, proxies: &mut Proxies, identity: &MeshIdentity) -> Result<(), UpkeepError> {
        let link = Arc::new(MeshClient::with_current_leaf(
            self.coordinator,
            &self.trust,
            identity.certs.clone(),
        )?);
        let renewer = Renewer::new(
            link.clone(),
            self.provider,
            self.spki,
            self.spiffe_id,
            identity.certs.clone(),
        )
        .with_files(self.files);
        proxies.spawn(renewer.run_forever());
        proxies.spawn(crate::crl::refresh_forever(
            link,
            identity.certs.clone(),
            identity.revoked.clone(),
            self.crl_interval,
        ));
        tracing::info!(
            crl_interval_ms = self.crl_interval.as_millis() as u64,
            "certificate renewal and CRL refresh running"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime_from_receipt() {
        // 24 h leaf received at notBefore: renew after 16 h.
        let nb = 1_000_000;
        let d = renewal_delay(nb, nb + 86_400, nb * 1000, nb * 1000);
        assert_eq!(d, Duration::from_secs(57_600));
        // Backdated notBefore (5 min) and a 6 s validity: counted from receipt, 4 s.
        let now = 2_000_000_000;
        let d = renewal_delay(now / 1000 - 300, now / 1000 + 6, now, now);
        assert_eq!(d, Duration::from_secs(4));
        // Overdue: at once (after the minimum delay).
        assert_eq!(
            renewal_delay(nb, nb + 10, nb * 1000, (nb + 20) * 1000),
            MIN_DELAY
        );
    }

    #[test]
    fn renewed_files_replace_only_what_activation_wrote() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let files = RenewedFiles {
            written: ["tls/cert.pem".to_string(), "both.pem".to_string()].into(),
            base: Some(dir.path().to_path_buf()),
            key_pkcs8: Zeroizing::new(vec![1, 2, 3]),
        };
        std::fs::create_dir_all(dir.path().join("tls")).unwrap();
        std::fs::write(dir.path().join("tls/cert.pem"), "old").unwrap();
        let mut rendered = BTreeMap::new();
        rendered.insert(
            "tls/cert.pem".to_string(),
            Value::data(b"new cert".to_vec()),
        );
        rendered.insert(
            "both.pem".to_string(),
            Value(vec![
                quarry_api::http::Segment::Data(b"cert;".to_vec()),
                quarry_api::http::Segment::MarblePrivateKey(quarry_api::http::KeyEncoding::Hex),
            ]),
        );
        rendered.insert("other.pem".to_string(), Value::data(b"x".to_vec()));
        assert_eq!(files.replace(&rendered).unwrap(), 2);
        let cert = dir.path().join("tls/cert.pem");
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "new cert");
        assert_eq!(
            std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("both.pem")).unwrap(),
            "cert;010203"
        );
        assert!(!dir.path().join("other.pem").exists());
        // Nothing else (no temporary files) left behind.
        let names: BTreeSet<String> = std::fs::read_dir(dir.path().join("tls"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["cert.pem".to_string()].into());
        // An unsafe path is refused even if it was (somehow) recorded.
        let bad = RenewedFiles {
            written: ["../escape".to_string()].into(),
            base: Some(dir.path().to_path_buf()),
            key_pkcs8: Zeroizing::new(vec![]),
        };
        let mut rendered = BTreeMap::new();
        rendered.insert("../escape".to_string(), Value::data(b"x".to_vec()));
        assert!(bad.replace(&rendered).is_err());
    }

    #[test]
    fn retries_fit_before_expiry() {
        let now = 1_000_000_000;
        // 10 s left: a 60 s backoff is cut to 5 s.
        assert_eq!(
            retry_delay(MAX_BACKOFF, now / 1000 + 10, now),
            Duration::from_secs(5)
        );
        assert_eq!(
            retry_delay(INITIAL_BACKOFF, now / 1000 + 100, now),
            INITIAL_BACKOFF
        );
        // Expired: plain backoff.
        assert_eq!(retry_delay(MAX_BACKOFF, now / 1000 - 1, now), MAX_BACKOFF);
    }
}

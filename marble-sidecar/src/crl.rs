//! Certificate revocation in the mesh proxies (contract §3, invariant 11). The sidecar fetches
//! `GET /api/v2/crl` from the coordinator's mesh API every `--crl-interval` (default 30 s),
//! accepts the CRL only when its signature verifies against the mesh CA of the marble's own
//! certificate chain, and from then on the proxies refuse peers whose certificate serial it
//! lists: ingress in its client certificate verifier, egress in its server certificate
//! verifier, so a revoked peer gets a TLS alert.
//!
//! Fail closed: a CRL that does not parse, is not issued by the mesh CA or whose signature
//! does not verify is never used and never shrinks what is known; the revoked set only grows
//! (revocation is permanent), so an old but validly signed CRL cannot undo a revocation
//! either. When no fresh CRL can be fetched the last one stays in force and a warning is
//! logged every interval once its nextUpdate has passed; peers are not refused wholesale
//! because the coordinator is unreachable.
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::client::MeshClient;
use crate::proxy::CertStore;

/// CRL refresh interval used when none is configured.
pub const DEFAULT_CRL_INTERVAL: Duration = Duration::from_secs(30);
/// Shortest accepted CRL interval.
pub const MIN_CRL_INTERVAL: Duration = Duration::from_millis(100);
/// Longest accepted CRL interval.
pub const MAX_CRL_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Why a CRL was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    /// The bytes are not a DER X.509 CRL.
    #[error("the CRL does not parse: {0}")]
    Malformed(String),
    /// The mesh CA certificate to check against is unusable.
    #[error("the mesh CA certificate does not parse: {0}")]
    Issuer(String),
    /// The CRL names another issuer.
    #[error("the CRL is not issued by this marble's mesh CA (issuer {0})")]
    WrongIssuer(String),
    /// The signature does not verify with the mesh CA's key.
    #[error("the CRL signature does not verify against the mesh CA")]
    Signature,
}

/// What a verified CRL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCrl {
    /// Revoked serials (DER INTEGER content octets).
    pub serials: Vec<Vec<u8>>,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds, if present.
    pub next_update: Option<i64>,
}

/// Checks `crl_der` against the mesh CA certificate `mesh_ca_der` (issuer name and
/// signature) and returns the revoked serials.
pub fn verify_crl(crl_der: &[u8], mesh_ca_der: &[u8]) -> Result<VerifiedCrl, CrlError> {
    let (rest, crl) =
        x509_parser::parse_x509_crl(crl_der).map_err(|e| CrlError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CrlError::Malformed("trailing bytes".into()));
    }
    let (_, ca) = x509_parser::parse_x509_certificate(mesh_ca_der)
        .map_err(|e| CrlError::Issuer(e.to_string()))?;
    if crl.issuer().as_raw() != ca.subject().as_raw() {
        return Err(CrlError::WrongIssuer(crl.issuer().to_string()));
    }
    crl.verify_signature(ca.public_key())
        .map_err(|_| CrlError::Signature)?;
    Ok(VerifiedCrl {
        serials: crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect(),
        this_update: crl.last_update().timestamp(),
        next_update: crl.next_update().map(|t| t.timestamp()),
    })
}

#[derive(Debug, Default)]
struct State {
    serials: HashSet<Vec<u8>>,
    next_update: Option<i64>,
    installed: bool,
}

/// The serials of revoked certificates the proxies refuse. It only grows.
#[derive(Debug, Default)]
pub struct Revoked {
    state: RwLock<State>,
}

impl Revoked {
    /// An empty set (nothing known to be revoked yet).
    pub fn new() -> Arc<Revoked> {
        Arc::new(Revoked::default())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a verified CRL's serials; returns how many were not known before.
    pub fn install(&self, crl: &VerifiedCrl) -> usize {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        let before = s.serials.len();
        s.serials.extend(crl.serials.iter().cloned());
        s.next_update = match (s.next_update, crl.next_update) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => b.or(a),
        };
        s.installed = true;
        s.serials.len() - before
    }

    /// Number of revoked serials known.
    pub fn len(&self) -> usize {
        self.read().serials.len()
    }

    /// True when nothing is known to be revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// nextUpdate of the freshest CRL installed, Unix seconds.
    pub fn next_update(&self) -> Option<i64> {
        self.read().next_update
    }

    /// True once a CRL was installed.
    pub fn has_crl(&self) -> bool {
        self.read().installed
    }

    /// Refuses a certificate (DER) whose serial is revoked; the error names the serial.
    pub fn check(&self, cert_der: &[u8]) -> Result<(), String> {
        let s = self.read();
        if s.serials.is_empty() {
            return Ok(());
        }
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        if s.serials.contains(cert.raw_serial()) {
            return Err(format!(
                "certificate {} is revoked",
                hex::encode(cert.raw_serial())
            ));
        }
        Ok(())
    }
}

/// Parses an interval: a number with a unit (`500ms`, `2s`, `5m`, `1h`) or plain seconds.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30s, 500ms or 2m"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("unknown unit {other:?} in {text:?} (ms, s, m, h)")),
    };
    if d < MIN_CRL_INTERVAL || d > MAX_CRL_INTERVAL {
        return Err(format!("{text:?} is outside 100ms..24h"));
    }
    Ok(d)
}

/// Fetches, verifies and installs the coordinator's CRL once; returns how many serials it
/// newly revoked.
pub async fn refresh_once(
    link: &MeshClient,
    certs: &CertStore,
    revoked: &Revoked,
) -> Result<usize, String> {
    let der = link
        .crl()
        .await
        .map_err(|e| crate::renew::UpkeepError::from(e).to_string())?;
    let current = certs.current();
    let mesh_ca = current
        .cert
        .get(1)
        .ok_or("the marble's certificate chain has no mesh CA to check the CRL against")?;
    let crl = verify_crl(&der, mesh_ca).map_err(|e| e.to_string())?;
    Ok(revoked.install(&crl))
}

/// Refreshes the CRL every `interval`, forever (runs beside the proxies).
pub async fn refresh_forever(
    link: Arc<MeshClient>,
    certs: Arc<CertStore>,
    revoked: Arc<Revoked>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match refresh_once(&link, &certs, &revoked).await {
            Ok(0) => tracing::debug!(revoked = revoked.len(), "CRL refreshed"),
            Ok(n) => tracing::warn!(
                newly_revoked = n,
                revoked = revoked.len(),
                "CRL refreshed: refusing newly revoked peer certificates from now on"
            ),
            Err(e) => {
                let stale = revoked
                    .next_update()
                    .is_some_and(|t| crate::renew::unix_now_ms() / 1000 > t);
                if stale || !revoked.has_crl() {
                    tracing::error!(error = %e, revoked = revoked.len(), "CRL refresh failed and no current CRL is in force: revocations since the last good CRL are not enforced");
                } else {
                    tracing::warn!(error = %e, revoked = revoked.len(), "CRL refresh failed; the last verified CRL stays in force");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };

    fn ca(cn: &str) -> (Vec<u8>, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        (cert.der().to_vec(), Issuer::new(p, key))
    }

    fn crl(issuer: &Issuer<'static, KeyPair>, serials: &[&[u8]]) -> Vec<u8> {
        let now = rcgen::date_time_ymd(2024, 1, 1);
        CertificateRevocationListParams {
            this_update: now,
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .der()
        .to_vec()
    }

    #[test]
    fn crl_signed_by_the_mesh_ca_is_accepted_and_lists_its_serials() {
        let (mesh, issuer) = ca("Quarry Mesh CA");
        let v = verify_crl(&crl(&issuer, &[&[0x11, 0x22], &[0x33]]), &mesh).unwrap();
        assert_eq!(v.serials, vec![vec![0x11, 0x22], vec![0x33]]);
        assert!(v.next_update.unwrap() > v.this_update);
    }

    #[test]
    fn crl_with_a_bad_signature_or_issuer_is_refused_and_changes_nothing() {
        let (mesh, _) = ca("Quarry Mesh CA");
        // Same name, other key: the signature check must catch it.
        let (_, impostor) = ca("Quarry Mesh CA");
        let forged = crl(&impostor, &[&[0x01]]);
        assert_eq!(verify_crl(&forged, &mesh), Err(CrlError::Signature));
        let (_, other) = ca("Some Other CA");
        assert!(matches!(
            verify_crl(&crl(&other, &[&[0x01]]), &mesh),
            Err(CrlError::WrongIssuer(_))
        ));
        // A flipped bit in a genuine CRL.
        let (mesh2, issuer2) = ca("Quarry Mesh CA");
        let mut tampered = crl(&issuer2, &[&[0x01]]);
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(verify_crl(&tampered, &mesh2).is_err());
        assert!(matches!(
            verify_crl(b"garbage", &mesh2),
            Err(CrlError::Malformed(_))
        ));
    }

    #[test]
    fn revoked_set_only_grows_and_checks_certificates_by_serial() {
        let (mesh, issuer) = ca("Quarry Mesh CA");
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.serial_number = Some(SerialNumber::from_slice(&[0x42, 0x01]));
        let leaf = p.signed_by(&key, &issuer).unwrap().der().to_vec();
        let revoked = Revoked::new();
        assert!(revoked.check(&leaf).is_ok());
        let first = verify_crl(&crl(&issuer, &[&[0x42, 0x01]]), &mesh).unwrap();
        assert_eq!(revoked.install(&first), 1);
        let err = revoked.check(&leaf).unwrap_err();
        assert!(err.contains("4201") && err.contains("revoked"), "{err}");
        // An older, smaller CRL does not un-revoke.
        let empty = verify_crl(&crl(&issuer, &[]), &mesh).unwrap();
        assert_eq!(revoked.install(&empty), 0);
        assert!(revoked.check(&leaf).is_err());
        assert_eq!(revoked.len(), 1);
    }

    #[test]
    fn intervals_parse_with_units_and_bounds() {
        assert_eq!(parse_interval("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "0s", "10ms", "2d", "x", "25h", "-1s"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }
}

//! Key sharing between replicas: both sides present an ephemeral self-signed TLS key and
//! evidence binding both keys and their role; each checks the other's identity against its
//! own under the manifest's SealMode before the DEK crosses the connection.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quarry_api::manifest::SealMode;
use quarry_api::{Claims, Evidence, Secret, TcbStatus};
use quarry_trust::tls::KeyPossession;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::sealing;
use crate::tee::Tee;

/// Largest key-sharing message.
const MAX_MESSAGE: u32 = 1024 * 1024;
/// Time limit of one key-sharing exchange.
pub(super) const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);

/// A log head as replicas exchange it: size and root (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogHead {
    /// Entries.
    pub size: u64,
    /// RFC 6962 root over them, lowercase hex.
    pub root: String,
}

/// A request on the peer channel: the asking replica's evidence, and with `head` its log
/// head for a split-view check ([`super::heads`]) instead of a key-sharing request.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PeerRequest {
    pub(super) evidence: Evidence,
    #[serde(default)]
    pub(super) head: Option<LogHead>,
}

/// A key-sharing answer: the serving replica's evidence and the DEK, or why not.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DekResponse {
    #[serde(default)]
    pub(super) evidence: Option<Evidence>,
    #[serde(default)]
    pub(super) dek: Option<String>,
    #[serde(default)]
    pub(super) error: Option<String>,
}

impl Drop for DekResponse {
    /// The base64 key text is wiped with the answer, wherever the answer ends.
    fn drop(&mut self) {
        if let Some(dek) = self.dek.as_mut() {
            zeroize::Zeroize::zeroize(dek);
        }
    }
}

/// The report data of key-sharing evidence: `role` binds who speaks, then both TLS keys.
pub(super) fn report_data(role: &str, own_spki: &[u8], other_spki: &[u8]) -> [u8; 64] {
    let mut h = Sha256::new();
    h.update(b"quarry peer key sharing v1 ");
    h.update(role.as_bytes());
    h.update(Sha256::digest(own_spki));
    h.update(Sha256::digest(other_spki));
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&h.finalize());
    out
}

/// This coordinator's own claims (its evidence verified by its own verifier).
pub fn own_claims(tee: &Tee) -> Result<Claims, String> {
    let ev = tee
        .provider
        .evidence(&[0u8; 64])
        .map_err(|e| format!("own evidence: {e}"))?;
    tee.verifier
        .verify(&ev, SystemTime::now())
        .map_err(|e| format!("own evidence does not verify with the own verifier: {e}"))
}

/// Why a peer's identity does not allow sharing the DEK between it and this coordinator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    /// An identity value differs: `field` as the verifiers name it (`UniqueID`,
    /// `Measurement`, `RTMR0`, `TEE` …), ours and the peer's (`(absent)` when missing).
    #[error("peer {field} {theirs} differs from ours ({ours})")]
    Differs {
        /// The compared field.
        field: String,
        /// This coordinator's value.
        ours: String,
        /// The peer's value.
        theirs: String,
    },
    /// ProductKey: the peer's SecurityVersion is below ours (the side giving the key
    /// requires at least its own).
    #[error("peer SecurityVersion {theirs} is below ours ({ours})")]
    SecurityVersionBelow {
        /// Ours.
        ours: u64,
        /// The peer's.
        theirs: u64,
    },
    /// The peer runs in debug mode and this coordinator does not.
    #[error("peer runs in debug mode, this coordinator does not")]
    Debug,
    /// The peer's TCB status is outside the package default and not ours.
    #[error(
        "peer TCB status {theirs} is neither accepted by default ({}) nor ours ({})",
        TcbStatus::join(&TcbStatus::DEFAULT_ACCEPTED),
        ours.as_str()
    )]
    TcbStatus {
        /// The peer's status with its advisories ([`Claims::tcb_summary`]).
        theirs: String,
        /// Ours.
        ours: TcbStatus,
    },
    /// Our own evidence carries no measurement to compare with (TDX/SNP: platform fields only).
    #[error("this coordinator's evidence carries no measurement")]
    NoOwnMeasurement,
    /// The peer's evidence carries measurements ours does not.
    #[error("peer evidence carries measurements ours does not")]
    ExtraMeasurements,
}

impl PeerRefusal {
    fn differs(field: &str, ours: impl ToString, theirs: impl ToString) -> PeerRefusal {
        PeerRefusal::Differs {
            field: field.to_string(),
            ours: ours.to_string(),
            theirs: theirs.to_string(),
        }
    }
}

/// Compares a peer's identity with this coordinator's for sharing the DEK under `mode`.
/// `require_svn`: the peer's security version must be at least ours (the side that gives the
/// key requires it).
pub fn check_peer(
    own: &Claims,
    peer: &Claims,
    mode: SealMode,
    require_svn: bool,
) -> Result<(), PeerRefusal> {
    if peer.tee != own.tee {
        return Err(PeerRefusal::differs("TEE", own.tee, peer.tee));
    }
    if peer.simulation != own.simulation {
        return Err(PeerRefusal::differs(
            "Simulation",
            own.simulation,
            peer.simulation,
        ));
    }
    if peer.debug && !own.debug {
        return Err(PeerRefusal::Debug);
    }
    // The package default (contract §12.4), or the status this replica runs with itself: a
    // cluster waiting for a TCB update can still grow, but never onto a platform worse off
    // than the ones that hold the key already.
    if !TcbStatus::DEFAULT_ACCEPTED.contains(&peer.tcb_status) && peer.tcb_status != own.tcb_status
    {
        return Err(PeerRefusal::TcbStatus {
            theirs: peer.tcb_summary(),
            ours: own.tcb_status,
        });
    }
    let same_measurement = || -> Result<(), PeerRefusal> {
        match (&own.identity.unique_id, &peer.identity.unique_id) {
            (Some(a), Some(b)) if a == b => Ok(()),
            (Some(a), Some(b)) => Err(PeerRefusal::differs(
                "UniqueID",
                hex::encode(a),
                hex::encode(b),
            )),
            // TDX and SNP: the image's measurements. Host fields (SNP ChipID, TDX MRSEAM…)
            // are left out, or replicas on two machines could never share the key; a new
            // field the verifier adds is compared until it is named a platform field.
            _ => {
                let (ours, theirs) = (own.identity.image_fields(), peer.identity.image_fields());
                if ours.is_empty() {
                    return Err(PeerRefusal::NoOwnMeasurement);
                }
                match ours
                    .iter()
                    .find(|(name, value)| theirs.get(*name) != Some(*value))
                {
                    None if theirs.len() == ours.len() => Ok(()),
                    None => Err(PeerRefusal::ExtraMeasurements),
                    Some((name, value)) => Err(PeerRefusal::differs(
                        name,
                        value,
                        theirs.get(*name).copied().unwrap_or("(absent)"),
                    )),
                }
            }
        }
    };
    match mode {
        SealMode::UniqueKey | SealMode::Disabled => same_measurement(),
        SealMode::ProductKey => match (&own.identity.signer_id, &peer.identity.signer_id) {
            (Some(a), Some(b)) => {
                if a != b {
                    return Err(PeerRefusal::differs(
                        "SignerID",
                        hex::encode(a),
                        hex::encode(b),
                    ));
                }
                if own.identity.product_id != peer.identity.product_id {
                    let show = |p: Option<u64>| p.map_or("(absent)".to_string(), |p| p.to_string());
                    return Err(PeerRefusal::differs(
                        "ProductID",
                        show(own.identity.product_id),
                        show(peer.identity.product_id),
                    ));
                }
                let (ours, theirs) = (
                    own.identity.security_version.unwrap_or(0),
                    peer.identity.security_version.unwrap_or(0),
                );
                if require_svn && theirs < ours {
                    return Err(PeerRefusal::SecurityVersionBelow { ours, theirs });
                }
                Ok(())
            }
            // TEEs without a signer identity (TDX, SNP): the measurement decides.
            _ => same_measurement(),
        },
    }
}

/// An ephemeral self-signed TLS identity: (certificate DER, PKCS#8 key DER, SPKI DER).
pub(super) type TlsIdentity = (Vec<u8>, Zeroizing<Vec<u8>>, Vec<u8>);

/// A fresh [`TlsIdentity`] (P-256).
pub(super) fn ephemeral_identity() -> Result<TlsIdentity, String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("key generation: {e}"))?;
    let params = rcgen::CertificateParams::new(vec!["quarry-peer".to_string()])
        .map_err(|e| format!("certificate parameters: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("self-signing: {e}"))?;
    let spki = crate::pki::spki_of(cert.der()).map_err(|e| e.to_string())?;
    Ok((
        cert.der().to_vec(),
        Zeroizing::new(key.serialize_der()),
        spki,
    ))
}

pub(super) async fn write_msg<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("message too large"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await
}

pub(super) async fn read_msg<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_MESSAGE {
        return Err(std::io::Error::other(format!(
            "message of {len} bytes exceeds {MAX_MESSAGE}"
        )));
    }
    let mut body = Zeroizing::new(vec![0u8; len as usize]);
    r.read_exact(&mut body).await?;
    Ok(body)
}

pub(super) fn peer_spki<T>(conn: &rustls::ConnectionCommon<T>) -> Result<Vec<u8>, String> {
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("the peer presented no TLS certificate")?;
    crate::pki::spki_of(cert).map_err(|e| e.to_string())
}

/// Verifies `evidence` from a peer: valid for our verifier, bound to `role` and both TLS
/// keys, and of a coordinator allowed to hold the DEK under `mode`.
pub(super) async fn verify_peer(
    tee: &Tee,
    own: &Claims,
    evidence: Evidence,
    expected: [u8; 64],
    mode: SealMode,
    require_svn: bool,
) -> Result<(), String> {
    let verifier = tee.verifier.clone();
    let claims = tokio::task::spawn_blocking(move || verifier.verify(&evidence, SystemTime::now()))
        .await
        .map_err(|e| format!("verification task: {e}"))?
        .map_err(|e| format!("evidence refused: {e}"))?;
    if claims.report_data != expected {
        return Err(
            "the evidence does not bind this TLS connection (replayed or made for another connection)"
                .into(),
        );
    }
    check_peer(own, &claims, mode, require_svn).map_err(|e| e.to_string())
}

/// Obtains the DEK from the replica at `addr` over mutually attested TLS.
pub async fn fetch_dek(tee: &Tee, own: &Claims, addr: &str) -> Result<Secret, String> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, fetch_dek_inner(tee, own, addr))
        .await
        .map_err(|_| format!("no answer within {}s", EXCHANGE_TIMEOUT.as_secs()))?
}

/// A TLS connection to the peer channel at `addr` with a fresh client key: (stream, own
/// SPKI, the server's SPKI). Who the peer is, its evidence decides (bound to the key it
/// proves possession of), so the server certificate itself is not trusted.
pub(super) async fn connect_peer(
    addr: &str,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
        Vec<u8>,
    ),
    String,
> {
    let (cert, key, spki) = ephemeral_identity()?;
    let config = quarry_trust::tls::client_with_verifier(Arc::new(KeyPossession::new()))
        .map_err(|e| e.to_string())?
        .with_client_auth_cert(
            vec![CertificateDer::from(cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )
        .map_err(|e| format!("client TLS config: {e}"))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let name = ServerName::try_from("quarry-peer").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let server_spki = peer_spki(tls.get_ref().1)?;
    Ok((tls, spki, server_spki))
}

async fn fetch_dek_inner(tee: &Tee, own: &Claims, addr: &str) -> Result<Secret, String> {
    let (mut tls, spki, server_spki) = connect_peer(addr).await?;
    let evidence = tee
        .provider
        .evidence(&report_data("joiner", &spki, &server_spki))
        .map_err(|e| format!("own evidence: {e}"))?;
    let req = serde_json::to_vec(&PeerRequest {
        evidence,
        head: None,
    })
    .map_err(|e| e.to_string())?;
    write_msg(&mut tls, &req)
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let body = read_msg(&mut tls)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let mut resp: DekResponse =
        serde_json::from_slice(&body).map_err(|e| format!("malformed answer: {e}"))?;
    if let Some(e) = resp.error.take() {
        return Err(format!("refused by the peer: {e}"));
    }
    let evidence = resp.evidence.take().ok_or("the answer has no evidence")?;
    verify_peer(
        tee,
        own,
        evidence,
        report_data("holder", &server_spki, &spki),
        SealMode::ProductKey,
        false,
    )
    .await
    .map_err(|e| format!("the peer is not a coordinator we trust: {e}"))?;
    let dek = Zeroizing::new(resp.dek.take().ok_or("the answer has no key")?);
    let bytes =
        Zeroizing::new(quarry_api::bytes::unb64(&dek).map_err(|e| format!("key encoding: {e}"))?);
    if bytes.len() != sealing::DEK_LEN {
        return Err(format!("the key has {} bytes", bytes.len()));
    }
    Ok(Secret::new(bytes.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::serve::serve_peers;
    use crate::state::Core;
    use quarry_api::claims::Identity;
    use quarry_trust::tls::AnyClientCert;

    fn claims(unique: u8, signer: u8, product: u64, svn: u64) -> Claims {
        Claims {
            tee: quarry_api::TeeKind::Simulated,
            identity: Identity {
                unique_id: Some(vec![unique; 32]),
                signer_id: Some(vec![signer; 32]),
                product_id: Some(product),
                security_version: Some(svn),
                fields: Default::default(),
            },
            debug: false,
            report_data: [0; 64],
            tcb_status: quarry_api::claims::TcbStatus::UpToDate,
            advisory_ids: vec![],
            platform_id: None,
            simulation: true,
            reported_tcb: None,
            tcb_standing: None,
        }
    }

    #[test]
    fn a_peer_on_a_platform_worse_off_than_the_default_and_than_ours_gets_no_key() {
        let with = |status: TcbStatus| {
            let mut c = claims(1, 2, 3, 5);
            c.tcb_status = status;
            c.advisory_ids = vec!["INTEL-SA-00837".into()];
            c
        };
        let own = claims(1, 2, 3, 5);
        for mode in [
            SealMode::UniqueKey,
            SealMode::ProductKey,
            SealMode::Disabled,
        ] {
            assert!(check_peer(&own, &with(TcbStatus::SWHardeningNeeded), mode, true).is_ok());
            for worse in [
                TcbStatus::OutOfDate,
                TcbStatus::ConfigurationNeeded,
                TcbStatus::OutOfDateConfigurationNeeded,
            ] {
                let e = check_peer(&own, &with(worse), mode, true).unwrap_err();
                assert_eq!(
                    e,
                    PeerRefusal::TcbStatus {
                        theirs: format!("{} (advisories: INTEL-SA-00837)", worse.as_str()),
                        ours: TcbStatus::UpToDate,
                    }
                );
                assert_eq!(
                    e.to_string(),
                    format!(
                        "peer TCB status {} (advisories: INTEL-SA-00837) is neither accepted by default (UpToDate,SWHardeningNeeded) nor ours (UpToDate)",
                        worse.as_str()
                    )
                );
                // Both directions of the exchange apply it (the joiner too).
                assert!(check_peer(&own, &with(worse), mode, false).is_err());
            }
        }
        // A cluster that waits for a TCB update still grows onto equal platforms, not worse.
        let outdated = with(TcbStatus::OutOfDate);
        assert!(check_peer(
            &outdated,
            &with(TcbStatus::OutOfDate),
            SealMode::UniqueKey,
            true
        )
        .is_ok());
        assert!(check_peer(&outdated, &own, SealMode::UniqueKey, true).is_ok());
        assert!(check_peer(
            &outdated,
            &with(TcbStatus::OutOfDateConfigurationNeeded),
            SealMode::UniqueKey,
            true
        )
        .is_err());
    }

    /// A [`PeerRefusal::Differs`] of `field` with ours and the peer's value.
    fn differs(field: &str, ours: &str, theirs: &str) -> PeerRefusal {
        PeerRefusal::differs(field, ours, theirs)
    }

    #[test]
    fn peers_must_match_the_seal_mode_rule() {
        let own = claims(1, 2, 3, 5);
        let (one, nine) = (hex::encode([1u8; 32]), hex::encode([9u8; 32]));
        assert!(check_peer(&own, &claims(1, 2, 3, 5), SealMode::UniqueKey, true).is_ok());
        let e = check_peer(&own, &claims(9, 2, 3, 5), SealMode::UniqueKey, true).unwrap_err();
        assert_eq!(e, differs("UniqueID", &one, &nine));
        assert_eq!(
            e.to_string(),
            format!("peer UniqueID {nine} differs from ours ({one})")
        );
        assert_eq!(
            check_peer(&own, &claims(9, 2, 3, 5), SealMode::Disabled, true),
            Err(differs("UniqueID", &one, &nine))
        );
        // ProductKey: another build of the same signer and product, same or newer SVN.
        assert!(check_peer(&own, &claims(9, 2, 3, 5), SealMode::ProductKey, true).is_ok());
        assert!(check_peer(&own, &claims(9, 2, 3, 6), SealMode::ProductKey, true).is_ok());
        let e = check_peer(&own, &claims(9, 2, 3, 4), SealMode::ProductKey, true).unwrap_err();
        assert_eq!(e, PeerRefusal::SecurityVersionBelow { ours: 5, theirs: 4 });
        assert_eq!(e.to_string(), "peer SecurityVersion 4 is below ours (5)");
        assert!(check_peer(&own, &claims(9, 2, 3, 4), SealMode::ProductKey, false).is_ok());
        assert_eq!(
            check_peer(&own, &claims(1, 7, 3, 5), SealMode::ProductKey, true),
            Err(differs(
                "SignerID",
                &hex::encode([2u8; 32]),
                &hex::encode([7u8; 32])
            ))
        );
        assert_eq!(
            check_peer(&own, &claims(1, 2, 4, 5), SealMode::ProductKey, true),
            Err(differs("ProductID", "3", "4"))
        );
        let mut debug = claims(1, 2, 3, 5);
        debug.debug = true;
        assert_eq!(
            check_peer(&own, &debug, SealMode::UniqueKey, true),
            Err(PeerRefusal::Debug)
        );
        let mut hw = claims(1, 2, 3, 5);
        hw.simulation = false;
        assert_eq!(
            check_peer(&own, &hw, SealMode::UniqueKey, true),
            Err(differs("Simulation", "true", "false"))
        );
    }

    /// Claims of a confidential VM (no UniqueID) with the given identity fields.
    fn cvm(tee: quarry_api::TeeKind, fields: &[(&str, &str)]) -> Claims {
        let mut c = claims(0, 0, 0, 0);
        c.tee = tee;
        c.simulation = false;
        c.identity = Identity {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Identity::default()
        };
        c
    }

    #[test]
    fn one_cvm_image_on_two_hosts_shares_the_key_and_another_image_does_not() {
        use quarry_api::TeeKind::{Snp, Tdx};
        let snp = [
            ("Measurement", "aa"),
            ("HostData", "00"),
            ("Policy", "0x30000"),
            ("ChipID", "c1"),
            ("ReportVersion", "2"),
        ];
        let own = cvm(Snp, &snp);
        for mode in [
            SealMode::UniqueKey,
            SealMode::ProductKey,
            SealMode::Disabled,
        ] {
            // Another chip with firmware that writes version-3 reports: the same image.
            let other_host = cvm(
                Snp,
                &[
                    snp[0],
                    snp[1],
                    snp[2],
                    ("ChipID", "c2"),
                    ("ReportVersion", "3"),
                ],
            );
            assert_eq!(
                check_peer(&own, &other_host, mode, true),
                Ok(()),
                "{mode:?}"
            );
            let other_image = cvm(
                Snp,
                &[("Measurement", "bb"), snp[1], snp[2], snp[3], snp[4]],
            );
            let e = check_peer(&own, &other_image, mode, true).unwrap_err();
            assert_eq!(e, differs("Measurement", "aa", "bb"));
            assert_eq!(e.to_string(), "peer Measurement bb differs from ours (aa)");
            let other_host_data = cvm(Snp, &[snp[0], ("HostData", "01"), snp[2], snp[3], snp[4]]);
            assert_eq!(
                check_peer(&own, &other_host_data, mode, true),
                Err(differs("HostData", "00", "01"))
            );
            let no_policy = cvm(Snp, &[snp[0], snp[1], snp[3], snp[4]]);
            let e = check_peer(&own, &no_policy, mode, true).unwrap_err();
            assert_eq!(e, differs("Policy", "0x30000", "(absent)"));
            assert_eq!(
                e.to_string(),
                "peer Policy (absent) differs from ours (0x30000)"
            );
            let extra = cvm(
                Snp,
                &[snp[0], snp[1], snp[2], snp[3], snp[4], ("VMPL", "1")],
            );
            assert_eq!(
                check_peer(&own, &extra, mode, true),
                Err(PeerRefusal::ExtraMeasurements)
            );
        }
        let tdx = [
            ("MRTD", "11"),
            ("RTMR0", "22"),
            ("MRSEAM", "5e"),
            ("TEETCBSVN", "01"),
        ];
        let own = cvm(Tdx, &tdx);
        let newer_module = cvm(
            Tdx,
            &[tdx[0], tdx[1], ("MRSEAM", "5f"), ("TEETCBSVN", "02")],
        );
        assert_eq!(
            check_peer(&own, &newer_module, SealMode::UniqueKey, true),
            Ok(())
        );
        let other_rtmr = cvm(Tdx, &[tdx[0], ("RTMR0", "23"), tdx[2], tdx[3]]);
        assert_eq!(
            check_peer(&own, &other_rtmr, SealMode::UniqueKey, true),
            Err(differs("RTMR0", "22", "23"))
        );
        // A TDX peer is never an SNP one, whatever its fields.
        assert_eq!(
            check_peer(&own, &cvm(Snp, &tdx), SealMode::UniqueKey, true),
            Err(differs("TEE", &Tdx.to_string(), &Snp.to_string()))
        );
        // Evidence with nothing but platform fields proves no image.
        let bare = cvm(Tdx, &[tdx[2], tdx[3]]);
        assert_eq!(
            check_peer(&bare, &bare.clone(), SealMode::UniqueKey, true),
            Err(PeerRefusal::NoOwnMeasurement)
        );
    }

    /// A coordinator on a simulated TEE serving its DEK on loopback.
    async fn holder() -> (tempfile::TempDir, Arc<Core>, Arc<Claims>, String) {
        let dir = tempfile::tempdir().unwrap();
        let sim = dir.path().join("sim");
        quarry_attestation::simulated::SimPlatform::create(&sim).unwrap();
        let tee = Tee::simulated(&sim, None).unwrap();
        let core = Arc::new(Core::open(&dir.path().join("data"), tee).await.unwrap());
        let own = Arc::new(own_claims(&core.tee).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve_peers(core.clone(), listener, own.clone()));
        (dir, core, own, addr)
    }

    /// One key-sharing request from a client with its own fresh TLS key; `evidence` gets the
    /// client's and the server's SPKI and makes what the client sends.
    async fn raw_request(
        addr: &str,
        evidence: impl FnOnce(&[u8], &[u8]) -> Evidence,
    ) -> DekResponse {
        let (cert, key, spki) = ephemeral_identity().unwrap();
        let config = quarry_trust::tls::client_with_verifier(Arc::new(KeyPossession::new()))
            .unwrap()
            .with_client_auth_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
            )
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("quarry-peer").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let server_spki = peer_spki(tls.get_ref().1).unwrap();
        let req = PeerRequest {
            evidence: evidence(&spki, &server_spki),
            head: None,
        };
        write_msg(&mut tls, &serde_json::to_vec(&req).unwrap())
            .await
            .unwrap();
        serde_json::from_slice(&read_msg(&mut tls).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_key_share_request_replayed_on_another_connection_gets_no_dek() {
        let (_dir, core, own, addr) = holder().await;
        let dek = core.dek().expect("a fresh coordinator holds a DEK");
        // The honest exchange, through the real client: the same key arrives.
        let fetched = fetch_dek(&core.tee, &own, &addr).await.unwrap();
        assert_eq!(fetched.expose(), dek.expose());
        // The raw client gets the key too when its evidence binds its own connection.
        let tee = &core.tee;
        let honest = raw_request(&addr, |mine, server| {
            tee.provider
                .evidence(&report_data("joiner", mine, server))
                .unwrap()
        })
        .await;
        assert!(honest.dek.is_some() && honest.error.is_none());

        // Recorded: what a joiner with another TLS key sent on an earlier connection.
        let (_, _, earlier_key) = ephemeral_identity().unwrap();
        let replayed = raw_request(&addr, |_, server| {
            tee.provider
                .evidence(&report_data("joiner", &earlier_key, server))
                .unwrap()
        })
        .await;
        assert!(replayed.dek.is_none() && replayed.evidence.is_none());
        let e = replayed.error.as_deref().unwrap_or_default();
        assert!(e.contains("does not bind this TLS connection"), "{e}");
        // The holder's own answer evidence turned around as a request (role swapped).
        let swapped = raw_request(&addr, |mine, server| {
            tee.provider
                .evidence(&report_data("holder", server, mine))
                .unwrap()
        })
        .await;
        assert!(swapped.dek.is_none());
        assert!(swapped
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("does not bind this TLS connection"));
        // Evidence made for a log-head request (the split-view check) fetches no key either.
        let head_evidence = raw_request(&addr, |mine, server| {
            tee.provider
                .evidence(&report_data("head-asker", mine, server))
                .unwrap()
        })
        .await;
        assert!(head_evidence.dek.is_none());
        assert!(head_evidence
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("does not bind this TLS connection"));
    }

    #[tokio::test]
    async fn a_recorded_holder_answer_replayed_by_an_impostor_is_refused_by_the_joiner() {
        let (_dir, core, own, _addr) = holder().await;
        // An impostor replica with a TLS key of its own answers with a holder's evidence
        // recorded from another exchange and a key of its choosing.
        let (cert, key, _) = ephemeral_identity().unwrap();
        let config = quarry_trust::tls::server_builder()
            .unwrap()
            .with_client_cert_verifier(Arc::new(AnyClientCert::new(true)))
            .with_single_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
            )
            .unwrap();
        let (_, _, real_holder) = ephemeral_identity().unwrap();
        let (_, _, earlier_joiner) = ephemeral_identity().unwrap();
        let recorded = core
            .tee
            .provider
            .evidence(&report_data("holder", &real_holder, &earlier_joiner))
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let _request = read_msg(&mut tls).await.unwrap();
            let answer = DekResponse {
                evidence: Some(recorded),
                dek: Some(quarry_api::bytes::b64(&[7u8; sealing::DEK_LEN])),
                error: None,
            };
            write_msg(&mut tls, &serde_json::to_vec(&answer).unwrap())
                .await
                .unwrap();
        });
        let e = fetch_dek(&core.tee, &own, &addr)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(e.contains("not a coordinator we trust"), "{e}");
        assert!(e.contains("does not bind this TLS connection"), "{e}");
    }

    #[test]
    fn report_data_binds_role_and_both_keys() {
        let a = report_data("joiner", b"k1", b"k2");
        assert_ne!(a, report_data("holder", b"k1", b"k2"));
        assert_ne!(a, report_data("joiner", b"k2", b"k1"));
        assert_eq!(a[32..], [0u8; 32]);
    }
}

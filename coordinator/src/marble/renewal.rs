//! Marble certificate renewal (contract §3, §6): `POST /api/v2/renew` on the mesh API. The
//! TLS client certificate must be a current marble leaf (signed by the current mesh CA, which
//! chains to the root; within its validity; neither it nor its UUID revoked), and the body
//! carries fresh evidence binding the same key to a nonce from `GET /api/v2/activate/nonce`.
//! The evidence is verified exactly as at activation and against the package the marble's
//! type has *now* (the manifest may have changed); the new leaf is for the same key, UUID,
//! type and names, with a fresh validity. Renewal spends no activation.

use quarry_api::http::{RenewRequest, RenewResponse};
use quarry_api::Claims;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::http::error::{ApiError, Denial};
use crate::marble::refusal::Refusal;
use crate::pki::{pem_cert, LeafRequest};
use crate::state::Core;
use crate::store::{StoreError, Txn};

/// The marble a presented leaf certificate names, once it is known to be current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentLeaf {
    /// Marble type (from the SPIFFE ID).
    pub marble_type: String,
    /// Marble instance.
    pub uuid: uuid::Uuid,
    /// The single URI SAN.
    pub spiffe_id: String,
    /// Serial, lowercase hex of the DER INTEGER content.
    pub serial: String,
    /// SubjectPublicKeyInfo DER of the marble key.
    pub spki: Vec<u8>,
    /// DNS names and IP addresses of the leaf.
    pub names: Vec<String>,
}

/// Checks that `leaf_der` is a marble leaf issued by the mesh CA `mesh_ca_der` in
/// `trust_domain` and valid at `now` (Unix seconds). The mesh CA is the coordinator's own
/// current one, signed by its root, so the chain to the root holds by construction.
pub fn check_leaf(
    leaf_der: &[u8],
    mesh_ca_der: &[u8],
    trust_domain: &str,
    now: i64,
) -> Result<CurrentLeaf, String> {
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| format!("the TLS client certificate does not parse: {e}"))?;
    let (_, mesh) = x509_parser::parse_x509_certificate(mesh_ca_der)
        .map_err(|e| format!("the mesh CA does not parse: {e}"))?;
    if leaf.issuer().as_raw() != mesh.subject().as_raw()
        || leaf.verify_signature(Some(mesh.public_key())).is_err()
    {
        return Err(
            "the TLS client certificate is not a leaf of this deployment's current mesh CA (after a manifest update or for a new marble, activate instead of renewing)"
                .into(),
        );
    }
    let validity = leaf.validity();
    if now > validity.not_after.timestamp() {
        return Err(format!(
            "the certificate expired at {} (Unix {}); an expired leaf cannot be renewed, the marble must activate again",
            validity.not_after,
            validity.not_after.timestamp()
        ));
    }
    if now < validity.not_before.timestamp() {
        return Err(format!(
            "the certificate is not valid before {}",
            validity.not_before
        ));
    }
    let (spiffe_id, names) = sans(&leaf)?;
    let (domain, marble_type, uuid) = quarry_api::spiffe::parse_marble_id(&spiffe_id)
        .ok_or_else(|| format!("{spiffe_id:?} is not a marble SPIFFE ID"))?;
    if domain != trust_domain {
        return Err(format!(
            "trust domain {domain:?} is not this deployment's {trust_domain:?}"
        ));
    }
    Ok(CurrentLeaf {
        marble_type,
        uuid,
        spiffe_id,
        serial: hex::encode(leaf.raw_serial()),
        spki: leaf.public_key().raw.to_vec(),
        names,
    })
}

/// The single URI SAN and the DNS / IP SANs of a leaf.
fn sans(leaf: &X509Certificate<'_>) -> Result<(String, Vec<String>), String> {
    let ext = leaf
        .subject_alternative_name()
        .map_err(|e| format!("subjectAltName: {e}"))?
        .ok_or("the certificate has no subjectAltName")?;
    let mut uris = Vec::new();
    let mut names = Vec::new();
    for n in &ext.value.general_names {
        match n {
            GeneralName::URI(u) => uris.push(u.to_string()),
            GeneralName::DNSName(d) => names.push(d.to_string()),
            GeneralName::IPAddress(b) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                    names.push(std::net::IpAddr::from(v4).to_string());
                } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                    names.push(std::net::IpAddr::from(v6).to_string());
                }
            }
            _ => {}
        }
    }
    match uris.as_slice() {
        [one] => Ok((one.clone(), names)),
        _ => Err(format!(
            "the certificate has {} URI SANs; a marble leaf has exactly one",
            uris.len()
        )),
    }
}

/// Logs a refusal with its code and reason, counts it, and turns it into a 403.
fn refuse(marble_type: &str, uuid: &str, refusal: Refusal) -> ApiError {
    tracing::warn!(marble_type, uuid, code = refusal.code(), reason = %refusal, "renewal refused");
    crate::metrics::renewal(marble_type, refusal.code());
    ApiError::refused(refusal)
}

/// Refuses a renewal when the TCB monitor's last verdict `entry` is out of policy and the
/// manifest's action says so (`refuse-renewal`, and `revoke`, whose revocation may still be
/// on its way).
pub fn refuse_out_of_policy(
    action: quarry_api::manifest::TcbChangeAction,
    entry: Option<&quarry_api::tcb::TcbEntry>,
) -> Result<(), Refusal> {
    use quarry_api::manifest::TcbChangeAction;
    match entry {
        Some(e) if !e.in_policy && action != TcbChangeAction::Warn => {
            Err(Refusal::TcbOutOfPolicy {
                status: e.status,
                advisories: e.advisories.clone(),
                fields: e.policy_fields.clone(),
                checked_at: e.checked_at,
            })
        }
        _ => Ok(()),
    }
}

/// `POST /api/v2/renew`. `peer_cert` is the TLS client certificate of the connection.
pub async fn renew(
    core: &Core,
    req: RenewRequest,
    peer_cert: &[u8],
) -> Result<RenewResponse, ApiError> {
    let view = core.view();
    let (deployment, store) = view.running("the coordinator is not accepting marbles")?;
    let manifest = &deployment.manifest;
    let now = crate::clock::now_unix() as i64;
    let current = check_leaf(
        peer_cert,
        deployment.mesh.cert_der(),
        &manifest.config.trust_domain,
        now,
    )
    .map_err(|e| refuse("?", "?", Refusal::Certificate(e)))?;
    let marble_type = current.marble_type.as_str();
    let uuid_text = current.uuid.hyphenated().to_string();
    let refuse = |refusal: Refusal| refuse(marble_type, &uuid_text, refusal);
    crate::marble::revocation::ensure_not_revoked(
        store.as_ref(),
        &view.log,
        &current.uuid,
        Some(&current.serial),
    )
    .await
    .map_err(|e| match e {
        ApiError::Denied(Denial::Forbidden(m)) => refuse(Refusal::Revoked(m)),
        other => other,
    })?;
    let (marble, package) =
        crate::marble::activation::marble_entry(manifest, marble_type, true).map_err(refuse)?;
    let platform = crate::tcb::record::load(store.as_ref(), &current.uuid).await?;
    refuse_out_of_policy(
        manifest.config.tcb_change_action,
        platform.as_ref().map(|(r, _)| &r.entry),
    )
    .map_err(refuse)?;
    let spki_hash: [u8; 32] = Sha256::digest(&current.spki).into();
    let nonce: [u8; 32] = hex::decode(req.nonce.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ApiError::bad_request("nonce must be 64 hex digits".into()))?;
    core.take_nonce(&nonce, &spki_hash)
        .map_err(|e| refuse(Refusal::Nonce(e)))?;

    // The same checks as activation, with no lock held during verification.
    let verifier = core.tee.verifier.clone();
    let evidence = req.evidence.clone();
    let at = core.tee.now();
    let claims: Claims = tokio::task::spawn_blocking(move || verifier.verify(&evidence, at))
        .await
        .map_err(|e| ApiError::Internal(format!("verification task: {e}")))?
        .map_err(|e| refuse(Refusal::Evidence(e)))?;
    quarry_attestation::binding::check_activation_binding(&claims, &current.spki, Some(&nonce))
        .map_err(|e| refuse(Refusal::KeyBinding(e)))?;
    quarry_attestation::check_package(package, &claims)
        .map_err(|e| refuse(Refusal::policy(&marble.package, &e)))?;

    // Names stay as issued, minus any the manifest no longer allows.
    let names: Vec<String> = current
        .names
        .iter()
        .filter(|n| {
            let allowed = marble.dns_names.iter().any(|a| a.eq_ignore_ascii_case(n));
            if !allowed {
                tracing::warn!(marble_type, uuid = %uuid_text, name = %n, "name no longer allowed by the manifest; dropped from the renewed certificate");
            }
            allowed
        })
        .cloned()
        .collect();
    let claims_digest = claims.digest();
    let leaf = deployment.mesh.issue_marble_leaf(&LeafRequest {
        spki_der: &current.spki,
        uuid: &current.uuid,
        spiffe_id: &current.spiffe_id,
        dns_names: &names,
        valid_for: marble.cert_valid_for,
        marble_type,
        claims_digest: &claims_digest,
        simulation: claims.simulation,
    })?;
    let (serial, not_after) = crate::marble::activation::serial_and_expiry(&leaf)?;
    // The files that hold the certificate, for the sidecar to replace. A file that cannot be
    // rendered any more does not stop the renewal of the mesh certificate.
    let root_der = view.identity.root.cert_der().to_vec();
    let files = crate::marble::activation::render_cert_files(
        manifest,
        marble,
        marble_type,
        &current.uuid,
        &deployment,
        &root_der,
        &leaf,
        &current.spki,
    )
    .unwrap_or_else(|e| {
        tracing::warn!(marble_type, uuid = %uuid_text, error = %e, "files using the marble certificate not re-rendered; the marble keeps the copies written at activation");
        Default::default()
    });
    let event = serde_json::json!({
        "type": "renewal",
        "time": crate::clock::now_unix(),
        "marbleType": marble_type,
        "uuid": uuid_text,
        "oldSerial": current.serial,
        "newSerial": serial,
        "claimsSha256": hex::encode(claims_digest),
        "simulation": claims.simulation,
    });
    // The fresher evidence and the new leaf's expiry replace the TCB monitor's record.
    let record = crate::tcb::record::PlatformRecord::accepted(
        marble_type,
        &current.uuid,
        &req.evidence,
        &claims,
        deployment.mesh.cert_der(),
        not_after,
        crate::clock::now_unix(),
        platform.as_ref().map(|(r, _)| &r.entry),
    );
    // A revocation committed since the check above wins: the renewal is not recorded.
    let txn = Txn::new()
        .require_absent(&crate::marble::revocation::uuid_key(&current.uuid))
        .require_absent(&crate::marble::revocation::serial_key(&current.serial))
        .put(&crate::tcb::record::key(&current.uuid), record.encode()?);
    match view.log.commit_with_events(&store, txn, vec![event]).await {
        Ok(_) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(refuse(Refusal::Revoked(
                "the marble was revoked while its renewal was in progress".into(),
            )))
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(
        marble_type,
        uuid = %uuid_text,
        old_serial = %current.serial,
        new_serial = %serial,
        not_after,
        "marble certificate renewed"
    );
    crate::metrics::renewal(marble_type, "ok");
    Ok(RenewResponse {
        certificate_chain: format!("{}{}", pem_cert(&leaf), deployment.mesh.cert_pem()),
        root_ca: view.identity.root.cert_pem(),
        spiffe_id: current.spiffe_id,
        serial,
        not_after,
        files,
    })
}

#[cfg(test)]
mod tests;

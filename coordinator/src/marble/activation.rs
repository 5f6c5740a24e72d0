//! Marble activation (contract §4.5, §6): verify evidence against the marble's package
//! without any global lock, check the binding to the TLS key, spend one unit of the
//! activation budget with compare-and-swap, issue the leaf and render the parameters.
use std::collections::BTreeMap;
use std::sync::Arc;

use quarry_api::http::{
    ActivateRequest, ActivateResponse, KeyEncoding, Parameters, Segment, Value,
};
use quarry_api::manifest::{Manifest, Marble};
use quarry_api::template::{Reference, Target, TemplateContext};
use quarry_api::Claims;
use sha2::{Digest, Sha256};

use crate::http::error::{ApiError, Denial};
use crate::marble::refusal::Refusal;
use crate::pki::{pem_cert, LeafRequest};
use crate::secrets::{self, ActivationContext, SecretValue};
use crate::state::{keys, Core, Deployment};
use crate::store::{Store, StoreError, Txn};

/// How often a compare-and-swap on the activation counter is retried under contention.
const MAX_CAS_RETRIES: usize = 64;

/// `POST /api/v2/activate`. `peer_cert` is the TLS client certificate of the connection.
pub async fn activate(
    core: &Core,
    req: ActivateRequest,
    peer_cert: &[u8],
) -> Result<ActivateResponse, ApiError> {
    let view = core.view();
    let (deployment, store) = view.running("the coordinator is not accepting marbles")?;
    let manifest = &deployment.manifest;
    let marble_type = req.marble_type.as_str();
    let refuse = |refusal: Refusal| refuse(marble_type, &req.uuid, refusal);
    let (marble, package) = marble_entry(manifest, marble_type, false).map_err(refuse)?;
    let uuid = uuid::Uuid::parse_str(&req.uuid)
        .map_err(|e| ApiError::bad_request(format!("uuid {:?} is not a UUID: {e}", req.uuid)))?;
    crate::marble::revocation::ensure_not_revoked(store.as_ref(), &view.log, &uuid, None)
        .await
        .map_err(|e| match e {
            ApiError::Denied(Denial::Forbidden(m)) => refuse(Refusal::Revoked(m)),
            other => other,
        })?;
    let spki = spki_of(peer_cert)?;
    let spki_hash: [u8; 32] = Sha256::digest(&spki).into();
    let nonce = match &req.nonce {
        None => None,
        Some(text) => {
            let bytes: [u8; 32] = hex::decode(text)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| ApiError::bad_request("nonce must be 64 hex digits".into()))?;
            core.take_nonce(&bytes, &spki_hash)
                .map_err(|e| refuse(Refusal::Nonce(e)))?;
            Some(bytes)
        }
    };
    for name in &req.dns_names {
        if !marble
            .dns_names
            .iter()
            .any(|a| a.eq_ignore_ascii_case(name))
        {
            return Err(refuse(Refusal::DnsName {
                name: name.clone(),
                marble_type: marble_type.to_string(),
            }));
        }
    }

    // Evidence verification is CPU work with no lock held.
    let verifier = core.tee.verifier.clone();
    let evidence = req.evidence.clone();
    let at = core.tee.now();
    let claims: Claims = tokio::task::spawn_blocking(move || {
        crate::metrics::time_verification(evidence.kind, || verifier.verify(&evidence, at))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("verification task: {e}")))?
    .map_err(|e| refuse(Refusal::Evidence(e)))?;
    quarry_attestation::binding::check_activation_binding(&claims, &spki, nonce.as_ref())
        .map_err(|e| refuse(Refusal::KeyBinding(e)))?;
    quarry_attestation::check_package(package, &claims).map_err(|e| {
        for m in &e.0 {
            tracing::warn!(marble_type, uuid = %req.uuid, package = %marble.package, field = m.field, expected = %m.expected, found = %m.found, "package field mismatch");
        }
        refuse(Refusal::policy(&marble.package, &e))
    })?;

    // Everything that can fail for reasons of the deployment's configuration runs before the
    // activation budget is spent (the budget is spent in the same transaction that logs the
    // activation, below).
    let mesh = crate::marble::mesh::config(manifest, marble, &deployment)?;

    let trust_domain = manifest.config.trust_domain.clone();
    let spiffe_id = quarry_api::spiffe::marble_id(&trust_domain, marble_type, &uuid);
    let claims_digest = claims.digest();
    let leaf = deployment.mesh.issue_marble_leaf(&LeafRequest {
        spki_der: &spki,
        uuid: &uuid,
        spiffe_id: &spiffe_id,
        dns_names: &req.dns_names,
        valid_for: marble.cert_valid_for,
        marble_type,
        claims_digest: &claims_digest,
        simulation: claims.simulation,
    })?;
    let (serial, not_after) = serial_and_expiry(&leaf)?;
    // What the TCB monitor re-evaluates later, written with the activation itself.
    let platform = crate::tcb::record::PlatformRecord::accepted(
        marble_type,
        &uuid,
        &req.evidence,
        &claims,
        deployment.mesh.cert_der(),
        not_after,
        crate::clock::now_unix(),
        None,
    );
    let event = serde_json::json!({
        "type": "activation",
        "time": crate::clock::now_unix(),
        "marbleType": marble_type,
        "uuid": uuid.to_string(),
        "claimsSha256": hex::encode(claims_digest),
        "certSerial": serial,
        "simulation": claims.simulation,
    });
    let platform = (crate::tcb::record::key(&uuid), platform.encode()?);
    record_activation(
        &view.log,
        &store,
        marble_type,
        marble,
        &uuid,
        event,
        platform,
    )
    .await
    .map_err(|e| match e {
        ApiError::Denied(Denial::Refused(r)) => refuse(r),
        other => other,
    })?;
    let root_der = view.identity.root.cert_der().to_vec();
    let private = private_secrets(
        manifest,
        marble,
        marble_type,
        &uuid,
        &deployment.root_secret,
        &deployment,
    )?;
    let parameters = render_parameters(
        marble,
        marble_type,
        &deployment,
        &private,
        &root_der,
        &leaf,
        &spki,
    )?;
    tracing::info!(
        marble_type,
        uuid = %uuid,
        simulation = claims.simulation,
        claims_sha256 = %hex::encode(claims_digest),
        "marble activated"
    );
    Ok(ActivateResponse {
        certificate_chain: format!("{}{}", pem_cert(&leaf), deployment.mesh.cert_pem()),
        root_ca: pem_cert(&root_der),
        spiffe_id,
        parameters,
        simulation: claims.simulation,
        mesh,
    })
}

/// Logs a refusal with its code and reason and turns it into a 403.
fn refuse(marble_type: &str, uuid: &str, refusal: Refusal) -> ApiError {
    tracing::warn!(marble_type, uuid, code = refusal.code(), reason = %refusal, "activation refused");
    ApiError::refused(refusal)
}

/// The manifest's entry for `marble_type` and its package; an unknown type is refused
/// (`removed`: a renewal of a type the manifest no longer has).
pub(crate) fn marble_entry<'m>(
    manifest: &'m Manifest,
    marble_type: &str,
    removed: bool,
) -> Result<(&'m Marble, &'m quarry_api::Package), Refusal> {
    let unknown = || Refusal::UnknownMarbleType {
        marble_type: marble_type.to_string(),
        removed,
    };
    let marble = manifest.marbles.get(marble_type).ok_or_else(unknown)?;
    // Validation ties every marble to a package; a stored manifest that breaks it is refused
    // like an unknown type rather than trusted half-way.
    let package = manifest.packages.get(&marble.package).ok_or_else(unknown)?;
    Ok((marble, package))
}

/// SubjectPublicKeyInfo DER of a marble's TLS client certificate (a bad request when it
/// does not parse).
pub fn spki_of(cert_der: &[u8]) -> Result<Vec<u8>, ApiError> {
    crate::pki::spki_of(cert_der).map_err(|e| {
        ApiError::bad_request(format!("the TLS client certificate does not parse: {e}"))
    })
}

/// Spends one activation of `marble_type`'s budget (when it has one) and appends `event` to
/// the transparency log in one transaction with the marble's TCB record `platform` (key,
/// value), refused if the UUID was revoked meanwhile. The
/// counter is a store-evaluated bounded increment, so concurrent activations (and replicas
/// sharing the store) never exceed `MaxActivations` and never retry against each other.
async fn record_activation(
    log: &crate::translog::TransLog,
    store: &Arc<dyn Store>,
    marble_type: &str,
    marble: &Marble,
    uuid: &uuid::Uuid,
    event: serde_json::Value,
    platform: (String, Vec<u8>),
) -> Result<(), ApiError> {
    let key = format!("{}{marble_type}", keys::ACTIVATIONS_PREFIX);
    // The counter decides races; the log, which the rollback evidence covers, keeps an
    // older counter value put back into etcd from granting activations again.
    if marble.max_activations > 0 && log.activations(marble_type) >= marble.max_activations {
        return Err(Refusal::MaxActivations {
            marble_type: marble_type.to_string(),
            max: marble.max_activations,
        }
        .into());
    }
    for _ in 0..MAX_CAS_RETRIES {
        let mut txn = Txn::new()
            .require_absent(&crate::marble::revocation::uuid_key(uuid))
            .put(&platform.0, platform.1.clone());
        if marble.max_activations > 0 {
            txn = txn.increment(&key, marble.max_activations);
        }
        match log
            .commit_with_events(store, txn, vec![event.clone()])
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::LimitReached { max, .. }) => {
                return Err(Refusal::MaxActivations {
                    marble_type: marble_type.to_string(),
                    max,
                }
                .into())
            }
            Err(StoreError::Conflict(k)) if k == crate::marble::revocation::uuid_key(uuid) => {
                return Err(Refusal::Revoked(format!(
                    "marble {uuid} is revoked: it can neither activate nor renew"
                ))
                .into())
            }
            // A store shared with other writers (etcd) may refuse a stale read; retry.
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::unavailable(format!(
        "activation of {marble_type} is under heavy contention; retry"
    )))
}

/// Names of secrets a marble's templates reference.
fn referenced_secrets(marble: &Marble) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for value in marble
        .parameters
        .files
        .values()
        .chain(marble.parameters.env.values())
    {
        if let Some(t) = &value.template {
            for a in t.actions() {
                if let Reference::Secret { name, .. } = &a.reference {
                    out.insert(name.clone());
                }
            }
        }
    }
    out
}

/// This marble's private secrets (only those its templates use).
fn private_secrets(
    manifest: &Manifest,
    marble: &Marble,
    marble_type: &str,
    uuid: &uuid::Uuid,
    root_secret: &quarry_api::Secret,
    deployment: &Arc<Deployment>,
) -> Result<BTreeMap<String, SecretValue>, ApiError> {
    let mut out = BTreeMap::new();
    for name in referenced_secrets(marble) {
        let Some(spec) = manifest.secrets.get(&name) else {
            continue;
        };
        if spec.shared || spec.user_defined {
            continue;
        }
        let value = if secrets::cert_key_kind(spec.kind).is_some() {
            tokio::task::block_in_place(|| secrets::generate(spec, &deployment.mesh))?
        } else {
            secrets::derive_private_symmetric(
                root_secret,
                uuid,
                &name,
                marble_type,
                marble.disable_secret_binding,
                spec.size,
            )
            .map_err(ApiError::Internal)?
        };
        out.insert(name, value);
    }
    Ok(out)
}

/// True when `value`'s template uses the marble's own certificate (`.MarbleRun.MarbleCert.Cert`).
fn uses_marble_cert(value: &quarry_api::manifest::FileValue) -> bool {
    value.template.as_ref().is_some_and(|t| {
        t.actions()
            .any(|a| a.reference == Reference::MarbleCert(quarry_api::template::Part::Cert))
    })
}

/// The marble's `Files` whose templates use `.MarbleRun.MarbleCert.Cert`, rendered exactly as
/// at activation but with the renewed `leaf` (renewal, contract §3), so the sidecar can
/// replace the copies of the certificate it wrote. Private certificate secrets those files
/// use are issued afresh, as at every activation. Empty when no file uses the certificate.
#[allow(clippy::too_many_arguments)]
pub(crate) fn render_cert_files(
    manifest: &Manifest,
    marble: &Marble,
    marble_type: &str,
    uuid: &uuid::Uuid,
    deployment: &Arc<Deployment>,
    root_der: &[u8],
    leaf: &[u8],
    spki: &[u8],
) -> Result<BTreeMap<String, Value>, ApiError> {
    if !marble.parameters.files.values().any(uses_marble_cert) {
        return Ok(BTreeMap::new());
    }
    // Only those files: no secret of the other files or of Env is generated for them.
    let mut only = marble.clone();
    only.parameters.files.retain(|_, v| uses_marble_cert(v));
    only.parameters.env.clear();
    let private = private_secrets(
        manifest,
        &only,
        marble_type,
        uuid,
        &deployment.root_secret,
        deployment,
    )?;
    let rendered = render_parameters(
        &only,
        marble_type,
        deployment,
        &private,
        root_der,
        leaf,
        spki,
    )?;
    Ok(rendered.files)
}

fn render_parameters(
    marble: &Marble,
    marble_type: &str,
    deployment: &Deployment,
    private: &BTreeMap<String, SecretValue>,
    root_der: &[u8],
    leaf: &[u8],
    spki: &[u8],
) -> Result<Parameters, ApiError> {
    let mut all = deployment.secrets.clone();
    all.extend(private.iter().map(|(k, v)| (k.clone(), v.clone())));
    let ctx = ActivationContext {
        secrets: &all,
        previous: &deployment.previous,
        root_ca: root_der,
        mesh_ca: deployment.mesh.cert_der(),
        marble_cert: leaf,
        marble_public: spki,
    };
    let render = |section: &str, name: &str, v: &quarry_api::manifest::FileValue, target| match &v
        .template
    {
        Some(t) => t.render(&ctx as &dyn TemplateContext, target).map_err(|e| {
            ApiError::wrong_state(format!(
                "cannot render Marbles/{marble_type}/Parameters/{section}/{name}: {e}"
            ))
        }),
        None => Ok(Value::data(v.data.clone())),
    };
    let mut params = Parameters::default();
    for (path, v) in &marble.parameters.files {
        params
            .files
            .insert(path.clone(), render("Files", path, v, Target::File)?);
    }
    for (name, v) in &marble.parameters.env {
        params
            .env
            .insert(name.clone(), render("Env", name, v, Target::Env)?);
    }
    let root_pem = pem_cert(root_der);
    let chain = format!("{}{}", pem_cert(leaf), deployment.mesh.cert_pem());
    params.env.insert(
        "MARBLE_PREDEFINED_ROOT_CA".into(),
        Value::data(root_pem.clone().into_bytes()),
    );
    params.env.insert(
        "MARBLE_PREDEFINED_MARBLE_CERTIFICATE_CHAIN".into(),
        Value::data(chain.into_bytes()),
    );
    params.env.insert(
        "MARBLE_PREDEFINED_COORDINATOR_ROOT_CA".into(),
        Value::data(root_pem.into_bytes()),
    );
    params.env.insert(
        "MARBLE_PREDEFINED_PRIVATE_KEY".into(),
        Value(vec![Segment::MarblePrivateKey(KeyEncoding::Pem)]),
    );
    params.argv = marble.parameters.argv.clone();
    Ok(params)
}

/// The serial (lowercase hex) and notAfter (Unix seconds) of a leaf the coordinator issued.
pub(crate) fn serial_and_expiry(leaf: &[u8]) -> Result<(String, i64), ApiError> {
    x509_parser::parse_x509_certificate(leaf)
        .map(|(_, c)| {
            (
                hex::encode(c.raw_serial()),
                c.validity().not_after.timestamp(),
            )
        })
        .map_err(|e| ApiError::Internal(format!("issued leaf does not parse: {e}")))
}

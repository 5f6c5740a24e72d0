//! The coordinator's own evidence and statement (contract §4.5): what relying parties verify.
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::{Phase, View};
use crate::tee::Tee;

/// The evidence last produced without a nonce, keyed by the root CA it binds.
#[derive(Default)]
pub struct QuoteCache(Mutex<Option<(Vec<u8>, quarry_api::Evidence)>>);

impl QuoteCache {
    /// Forgets the cached evidence (the root CA changed).
    pub fn clear(&self) {
        if let Ok(mut c) = self.0.lock() {
            *c = None;
        }
    }

    /// The evidence over SHA-256(root DER ‖ nonce); cached when there is no nonce.
    pub fn quote(
        &self,
        tee: &Tee,
        root_der: &[u8],
        nonce: Option<&[u8]>,
    ) -> Result<quarry_api::Evidence, String> {
        if nonce.is_none() {
            if let Ok(c) = self.0.lock() {
                if let Some((_, q)) = c.as_ref().filter(|(r, _)| r == root_der) {
                    return Ok(q.clone());
                }
            }
        }
        let mut h = Sha256::new();
        h.update(root_der);
        if let Some(n) = nonce {
            h.update(n);
        }
        let mut report_data = [0u8; 64];
        report_data[..32].copy_from_slice(&h.finalize());
        let evidence = tee
            .provider
            .evidence(&report_data)
            .map_err(|e| format!("coordinator evidence: {e}"))?;
        if nonce.is_none() {
            if let Ok(mut c) = self.0.lock() {
                *c = Some((root_der.to_vec(), evidence.clone()));
            }
        }
        Ok(evidence)
    }
}

/// The statement of `view` (contract §4.5), answering `nonce`.
pub fn statement(
    view: &View,
    simulation: bool,
    nonce: Option<&[u8]>,
) -> quarry_api::statement::Statement {
    let (log_size, log_root) = view.log.head();
    let (mesh, manifest) = match view.phase.as_ref() {
        Phase::Running(d) => (
            Some(hex::encode(Sha256::digest(d.mesh.cert_der()))),
            Some(hex::encode(d.fingerprint)),
        ),
        _ => (None, None),
    };
    quarry_api::statement::Statement {
        version: quarry_api::statement::STATEMENT_VERSION,
        root_ca_sha256: hex::encode(Sha256::digest(view.identity.root.cert_der())),
        mesh_ca_sha256: mesh,
        manifest_sha256: manifest,
        log_size,
        log_root: hex::encode(log_root),
        simulation,
        nonce: nonce.map(hex::encode),
        // Version 1; the attestation route raises it to 2 with the key for format=ear.
        ear_key_sha256: None,
    }
}

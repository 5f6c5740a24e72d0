//! The sidecar proxy configuration handed out at activation (contract §5, §9): the marble's
//! `Mesh` section in wire form, with the trust domain and, for external-facing ports, the
//! certificate secret they serve.
use quarry_api::http::{
    ExternalCert, MeshAllow, MeshConfig, MeshInboundConfig, MeshOutboundConfig,
};
use quarry_api::manifest::{AllowFrom, Manifest, Marble};

use crate::http::error::ApiError;
use crate::pki::pem_cert;
use crate::secrets::{self, SecretValue};
use crate::state::Deployment;

/// The mesh configuration of `marble` (`None` when it has no `Mesh` section).
pub fn config(
    manifest: &Manifest,
    marble: &Marble,
    deployment: &Deployment,
) -> Result<Option<MeshConfig>, ApiError> {
    let Some(mesh) = &marble.mesh else {
        return Ok(None);
    };
    let mut inbound = Vec::with_capacity(mesh.inbound.len());
    for entry in &mesh.inbound {
        let allow = match &entry.allow {
            AllowFrom::AnyMarble => MeshAllow::AnyMarble,
            AllowFrom::Marbles(types) => MeshAllow::Marbles {
                types: types.clone(),
            },
            AllowFrom::External { cert } => {
                MeshAllow::External(external_cert(manifest, deployment, cert)?)
            }
        };
        inbound.push(MeshInboundConfig {
            port: entry.port,
            forward: entry.forward,
            allow,
        });
    }
    let outbound = mesh
        .outbound
        .iter()
        .map(|o| MeshOutboundConfig {
            listen: o.listen,
            marble: o.marble.clone(),
            address: o.address.clone(),
        })
        .collect();
    Ok(Some(MeshConfig {
        trust_domain: manifest.config.trust_domain.clone(),
        inbound,
        outbound,
    }))
}

/// The certificate secret `name` (shared or user-set from the deployment, private ones issued
/// now by the mesh CA), with the mesh CA appended to the chain of generated ones.
fn external_cert(
    manifest: &Manifest,
    deployment: &Deployment,
    name: &str,
) -> Result<ExternalCert, ApiError> {
    let spec = manifest
        .secrets
        .get(name)
        .ok_or_else(|| ApiError::Internal(format!("mesh Cert secret {name} is not defined")))?;
    let issued;
    let value: &SecretValue = match deployment.secrets.get(name) {
        Some(v) => v,
        None if spec.user_defined => {
            return Err(ApiError::wrong_state(format!(
            "the user-defined certificate secret {name} used by a mesh port has not been set yet"
        )))
        }
        None => {
            issued = tokio::task::block_in_place(|| secrets::generate(spec, &deployment.mesh))?;
            &issued
        }
    };
    let cert = value.cert.as_deref().ok_or_else(|| {
        ApiError::wrong_state(format!(
            "secret {name} used by a mesh port has no certificate"
        ))
    })?;
    Ok(ExternalCert {
        secret: name.to_string(),
        // Generated certificate secrets are issued by the mesh CA; user-set ones stand alone.
        certificate_chain: if spec.user_defined {
            pem_cert(cert)
        } else {
            format!("{}{}", pem_cert(cert), deployment.mesh.cert_pem())
        },
        private_key: value.private.clone(),
    })
}

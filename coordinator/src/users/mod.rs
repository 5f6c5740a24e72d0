//! Users and roles (MarbleRun semantics, reference §2.7): a user is the exact TLS client
//! certificate named in `Users`; permissions come from its roles and are additive; a request
//! on several resources needs all of them.
pub mod secrets;

use quarry_api::manifest::{Manifest, ResourceType};

use crate::http::error::ApiError;

/// Actions a role can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read user-defined or shared secrets.
    ReadSecret,
    /// Write user-defined secrets.
    WriteSecret,
    /// Raise a package's SecurityVersion.
    UpdateSecurityVersion,
    /// Propose, acknowledge or cancel a full manifest update.
    UpdateManifest,
}

impl Action {
    /// Manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ReadSecret => "ReadSecret",
            Action::WriteSecret => "WriteSecret",
            Action::UpdateSecurityVersion => "UpdateSecurityVersion",
            Action::UpdateManifest => "UpdateManifest",
        }
    }

    fn resource_type(self) -> ResourceType {
        match self {
            Action::ReadSecret | Action::WriteSecret => ResourceType::Secrets,
            Action::UpdateSecurityVersion => ResourceType::Packages,
            Action::UpdateManifest => ResourceType::Manifest,
        }
    }
}

/// The user whose certificate is exactly `peer` (DER); 401 otherwise.
pub fn authenticate(manifest: &Manifest, peer: Option<&[u8]>) -> Result<String, ApiError> {
    let peer = peer.ok_or_else(|| {
        ApiError::unauthorized(
            "this request needs a user's TLS client certificate (quarry -c CERT -k KEY)".into(),
        )
    })?;
    for (name, user) in &manifest.users {
        if pem_der(&user.certificate_pem).is_some_and(|der| der == peer) {
            return Ok(name.clone());
        }
    }
    Err(ApiError::unauthorized(
        "the TLS client certificate belongs to no user of the manifest".into(),
    ))
}

/// Checks that `user` may do `action` on every one of `names` (ignored for Manifest).
pub fn authorize(
    manifest: &Manifest,
    user: &str,
    action: Action,
    names: &[String],
) -> Result<(), ApiError> {
    let Some(u) = manifest.users.get(user) else {
        return Err(ApiError::unauthorized(format!("unknown user {user}")));
    };
    let grants = |name: Option<&str>| {
        u.roles
            .iter()
            .filter_map(|r| manifest.roles.get(r))
            .any(|role| {
                role.resource_type == action.resource_type()
                    && role
                        .actions
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(action.as_str()))
                    && match name {
                        None => true,
                        Some(n) => role.resource_names.iter().any(|r| r == n),
                    }
            })
    };
    if action == Action::UpdateManifest {
        return if grants(None) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "user {user} may not {} (no role grants it)",
                action.as_str()
            )))
        };
    }
    for n in names {
        if !grants(Some(n)) {
            return Err(ApiError::forbidden(format!(
                "user {user} may not {} on {n}",
                action.as_str()
            )));
        }
    }
    Ok(())
}

/// Users holding `UpdateManifest` (those who must acknowledge full updates).
pub fn update_manifest_users(manifest: &Manifest) -> Vec<String> {
    manifest
        .users
        .keys()
        .filter(|u| authorize(manifest, u, Action::UpdateManifest, &[]).is_ok())
        .cloned()
        .collect()
}

fn pem_der(text: &str) -> Option<Vec<u8>> {
    pem::parse(text.trim()).ok().map(|p| p.contents().to_vec())
}

//! Semantic checks of a converted manifest: MarbleRun's checklist (reference §2.10), secret
//! definitions, recovery keys, user certificates and the template dry run.
use std::collections::BTreeMap;

use super::error::{ManifestError, Ptr, Warning};
use super::model::*;
use crate::template::{MaterialKind, Reference, SecretMaterial, Target, TemplateContext};

/// Run every check; the first failure is returned.
pub(super) fn check(m: &Manifest, warnings: &mut Vec<Warning>) -> Result<(), ManifestError> {
    let root = Ptr::root();
    if m.packages.is_empty() {
        return Err(root.join("Packages").err("no packages defined"));
    }
    if m.marbles.is_empty() {
        return Err(root.join("Marbles").err("no marbles defined"));
    }
    for (name, marble) in &m.marbles {
        let ptr = root.join("Marbles").join(name);
        // The name becomes the path segment of the marble's SPIFFE ID.
        if let Some(why) = crate::spiffe::path_segment_error(name) {
            return Err(ptr.err(format!(
                "marble name {name:?} cannot be part of its SPIFFE ID spiffe://<trust domain>/marble/{name}/<uuid>: {why}"
            )));
        }
        if marble.package.is_empty() {
            return Err(ptr.join("Package").err("Package is required"));
        }
        if !m.packages.contains_key(&marble.package) {
            return Err(ptr.join("Package").err(format!(
                "package {:?} is not defined in Packages",
                marble.package
            )));
        }
        check_defined(&marble.tls, &m.tls, &ptr.join("TLS"), "TLS tag", "TLS")?;
        if let Some(mesh) = &marble.mesh {
            super::mesh::check(m, mesh, &ptr.join("Mesh"), warnings)?;
        }
    }
    // Unlike MarbleRun, every package is checked, referenced or not.
    for (name, pkg) in &m.packages {
        super::package::check_identity(pkg, &root.join("Packages").join(name), warnings)?;
    }
    for (name, tag) in &m.tls {
        check_tls(m, tag, &root.join("TLS").join(name))?;
    }
    for (name, spec) in &m.secrets {
        check_secret(spec, &root.join("Secrets").join(name), warnings)?;
    }
    check_users(m)?;
    for (name, role) in &m.roles {
        check_role(m, role, &root.join("Roles").join(name))?;
    }
    check_config(m)?;
    for (name, pem) in &m.recovery_keys {
        check_recovery_key(pem, &root.join("RecoveryKeys").join(name), warnings)?;
    }
    dry_run(m)
}

fn check_tls(m: &Manifest, tag: &TlsTag, ptr: &Ptr) -> Result<(), ManifestError> {
    for (i, e) in tag.incoming.iter().enumerate() {
        let at = ptr.join("Incoming").join(i);
        if e.port.is_empty() {
            return Err(at.join("Port").err("Port is required"));
        }
        match (&e.cert, e.disable_client_auth) {
            (Some(cert), true) => check_cert_secret(m, cert, &at.join("Cert"))?,
            (Some(_), false) => {
                return Err(at
                    .join("DisableClientAuth")
                    .err("Cert may only be set together with DisableClientAuth: true"))
            }
            (None, true) => {
                return Err(at
                    .join("Cert")
                    .err("DisableClientAuth needs a Cert for external clients"))
            }
            (None, false) => {}
        }
    }
    for (i, e) in tag.outgoing.iter().enumerate() {
        let at = ptr.join("Outgoing").join(i);
        if e.addr.is_empty() {
            return Err(at.join("Addr").err("Addr is required"));
        }
        if e.port.is_empty() {
            return Err(at.join("Port").err("Port is required"));
        }
    }
    Ok(())
}

/// Checks that every entry of the list `names` (at `ptr`) is a key of `section`, named
/// `section_name`: the first that is not is refused as "{what} {name:?} is not defined in …".
pub(super) fn check_defined<V>(
    names: &[String],
    section: &BTreeMap<String, V>,
    ptr: &Ptr,
    what: &str,
    section_name: &str,
) -> Result<(), ManifestError> {
    match names
        .iter()
        .enumerate()
        .find(|(_, n)| !section.contains_key(*n))
    {
        Some((i, name)) => Err(ptr
            .join(i)
            .err(format!("{what} {name:?} is not defined in {section_name}"))),
        None => Ok(()),
    }
}

/// Checks that `cert` (named at `ptr`) is a certificate secret defined in `Secrets`.
pub(super) fn check_cert_secret(m: &Manifest, cert: &str, ptr: &Ptr) -> Result<(), ManifestError> {
    match m.secrets.get(cert) {
        Some(s) if s.kind.is_cert() => Ok(()),
        Some(_) => Err(ptr.err(format!("secret {cert:?} is not a certificate"))),
        None => Err(ptr.err(format!("secret {cert:?} is not defined in Secrets"))),
    }
}

fn check_secret(
    spec: &SecretSpec,
    ptr: &Ptr,
    warnings: &mut Vec<Warning>,
) -> Result<(), ManifestError> {
    let size = ptr.join("Size");
    match spec.kind {
        SecretKind::SymmetricKey if spec.size == 0 || !spec.size.is_multiple_of(8) => {
            return Err(size
                .err("a symmetric-key needs a Size in bits, greater than 0 and a multiple of 8"));
        }
        SecretKind::Plain if !spec.user_defined => {
            return Err(ptr
                .join("UserDefined")
                .err("a plain secret must be UserDefined (it cannot be generated)"));
        }
        _ => {}
    }
    // The key-parameter rule of every certificate secret, generated or uploaded, so
    // `quarry manifest check` and the coordinator give one verdict. An uploaded (UserDefined)
    // key may leave Size at 0: the uploaded key then decides.
    if !spec.user_defined || spec.size != 0 {
        check_cert_key_size(spec.kind, spec.size).map_err(|e| size.err(e))?;
    }
    if spec.kind.is_cert() {
        if spec.valid_for_days.is_some()
            && spec.cert.as_ref().is_some_and(|c| c.not_after.is_some())
        {
            return Err(ptr
                .join("ValidFor")
                .err("ValidFor cannot be combined with Cert.NotAfter"));
        }
    } else {
        if spec.cert.is_some() {
            warnings.push(
                ptr.join("Cert")
                    .warn(format!("ignored for a {} secret", spec.kind)),
            );
        }
        if spec.valid_for_days.is_some() {
            warnings.push(
                ptr.join("ValidFor")
                    .warn(format!("ignored for a {} secret", spec.kind)),
            );
        }
    }
    Ok(())
}

/// The key-size rule of certificate secrets: why a key of `kind` and `size` bits is refused.
///
/// `size` 0 means no Size was given. `cert-ecdsa` takes 256 or 384 (the crypto provider has
/// no P-224/P-521), `cert-rsa` 2048 to 8192 in multiples of 8, `cert-ed25519` no Size; other
/// kinds are not certificates and pass.
/// Manifest validation applies it to every generated certificate secret and to uploaded ones
/// that give a Size; the coordinator's key generator applies it too.
pub fn check_cert_key_size(kind: SecretKind, size: u32) -> Result<(), &'static str> {
    match kind {
        SecretKind::CertEcdsa if matches!(size, 256 | 384) => Ok(()),
        SecretKind::CertEcdsa if matches!(size, 224 | 521) => Err(
            "cert-ecdsa Size 224 and 521 (P-224, P-521) are not supported by Quarry's crypto provider; use 256 or 384",
        ),
        SecretKind::CertEcdsa => Err("cert-ecdsa Size must be 256 or 384"),
        SecretKind::CertRsa if (2048..=8192).contains(&size) && size.is_multiple_of(8) => Ok(()),
        SecretKind::CertRsa => {
            Err("cert-rsa Size must be between 2048 and 8192 and a multiple of 8")
        }
        SecretKind::CertEd25519 if size == 0 => Ok(()),
        SecretKind::CertEd25519 => Err("cert-ed25519 takes no Size"),
        SecretKind::SymmetricKey | SecretKind::Plain => Ok(()),
    }
}

fn check_users(m: &Manifest) -> Result<(), ManifestError> {
    let mut seen: BTreeMap<Vec<u8>, &str> = BTreeMap::new();
    for (name, user) in &m.users {
        let ptr = Ptr::root().join("Users").join(name);
        let cert = ptr.join("Certificate");
        if user.certificate_pem.trim().is_empty() {
            return Err(cert.err("Certificate is required"));
        }
        let der = parse_certificate(&user.certificate_pem).map_err(|e| cert.err(e))?;
        if let Some(other) = seen.insert(der, name) {
            return Err(cert.err(format!("same certificate as user {other:?}")));
        }
        check_defined(&user.roles, &m.roles, &ptr.join("Roles"), "role", "Roles")?;
    }
    Ok(())
}

/// Parse the first PEM `CERTIFICATE` block as X.509; returns its DER.
fn parse_certificate(text: &str) -> Result<Vec<u8>, String> {
    let block = pem::parse(text.trim()).map_err(|_| "not a PEM certificate".to_string())?;
    if block.tag() != "CERTIFICATE" {
        return Err(format!(
            "PEM block is {:?}, expected CERTIFICATE",
            block.tag()
        ));
    }
    x509_parser::parse_x509_certificate(block.contents())
        .map_err(|_| "not a valid X.509 certificate".to_string())?;
    Ok(block.contents().to_vec())
}

fn check_role(m: &Manifest, role: &Role, ptr: &Ptr) -> Result<(), ManifestError> {
    let (allowed, names_from): (&[&str], Option<Vec<&String>>) = match role.resource_type {
        ResourceType::Packages => (
            &["UpdateSecurityVersion"],
            Some(m.packages.keys().collect()),
        ),
        ResourceType::Secrets => (
            &["ReadSecret", "WriteSecret"],
            Some(m.secrets.keys().collect()),
        ),
        ResourceType::Manifest => (&["UpdateManifest"], None),
        ResourceType::Marbles => (&["RevokeMarble"], Some(m.marbles.keys().collect())),
    };
    let kind = role.resource_type.as_str();
    for (i, a) in role.actions.iter().enumerate() {
        if !allowed.contains(&a.as_str()) {
            return Err(ptr.join("Actions").join(i).err(format!(
                "action {a} does not apply to {kind} (allowed: {})",
                allowed.join(", ")
            )));
        }
    }
    let names = ptr.join("ResourceNames");
    let Some(existing) = names_from else {
        if !role.resource_names.is_empty() {
            return Err(names.err("a Manifest role takes no ResourceNames"));
        }
        return Ok(());
    };
    for (i, name) in role.resource_names.iter().enumerate() {
        if !existing.contains(&name) {
            return Err(names
                .join(i)
                .err(format!("{name:?} is not defined in {kind}")));
        }
        if let Some(secret) = m.secrets.get(name) {
            let writes = role.actions.iter().any(|a| a == "WriteSecret");
            let reads = role.actions.iter().any(|a| a == "ReadSecret");
            if writes && !secret.user_defined {
                return Err(names.join(i).err(format!(
                    "WriteSecret is allowed only on user-defined secrets, and {name:?} is not"
                )));
            }
            if reads && !secret.shared && !secret.user_defined {
                return Err(names.join(i).err(format!(
                    "ReadSecret is not allowed on {name:?}: it is private to each marble"
                )));
            }
        }
    }
    Ok(())
}

fn check_config(m: &Manifest) -> Result<(), ManifestError> {
    let config = Ptr::root().join("Config");
    let updaters = m
        .users
        .values()
        .filter(|u| {
            u.roles.iter().any(|r| {
                m.roles.get(r).is_some_and(|role| {
                    role.resource_type == ResourceType::Manifest
                        && role.actions.iter().any(|a| a == "UpdateManifest")
                })
            })
        })
        .count() as u64;
    if m.config.update_threshold > updaters {
        return Err(config.join("UpdateThreshold").err(format!(
            "UpdateThreshold {} exceeds the {updaters} users allowed to update the manifest",
            m.config.update_threshold
        )));
    }
    let keys = m.recovery_keys.len() as u64;
    let rt = m.config.recovery_threshold;
    if rt == 1 || rt > keys {
        return Err(config.join("RecoveryThreshold").err(format!(
            "RecoveryThreshold {rt} must be 0 or from 2 to the number of RecoveryKeys ({keys})"
        )));
    }
    Ok(())
}

fn check_recovery_key(
    text: &str,
    ptr: &Ptr,
    warnings: &mut Vec<Warning>,
) -> Result<(), ManifestError> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let bad = || ptr.err("must be an RSA public key in PEM \"PUBLIC KEY\" (PKIX) form");
    let block = pem::parse(text.trim()).map_err(|_| bad())?;
    if block.tag() != "PUBLIC KEY" {
        return Err(bad());
    }
    let (_, spki) =
        x509_parser::x509::SubjectPublicKeyInfo::from_der(block.contents()).map_err(|_| bad())?;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            if rsa.key_size() < 2048 {
                warnings.push(ptr.warn(format!(
                    "RSA key of {} bits; 3072 or more is recommended",
                    rsa.key_size()
                )));
            }
            Ok(())
        }
        _ => Err(bad()),
    }
}

/// Render every template against dummy values: catches undefined secrets and misuse.
fn dry_run(m: &Manifest) -> Result<(), ManifestError> {
    let ctx = DryRun {
        secrets: &m.secrets,
    };
    for (name, marble) in &m.marbles {
        let params = Ptr::root().join("Marbles").join(name).join("Parameters");
        for (target, section) in [
            (Target::File, &marble.parameters.files),
            (Target::Env, &marble.parameters.env),
        ] {
            for (key, value) in section {
                let Some(template) = &value.template else {
                    continue;
                };
                template.render(&ctx, target).map_err(|e| {
                    params
                        .join(target.section())
                        .join(key)
                        .err(format!("template in {} {key:?}: {e}", target.section()))
                })?;
            }
        }
    }
    Ok(())
}

struct DryRun<'m> {
    secrets: &'m BTreeMap<String, SecretSpec>,
}

impl TemplateContext for DryRun<'_> {
    fn lookup(&self, reference: &Reference) -> Result<SecretMaterial, String> {
        let dummy = |n: usize| vec![b'x'; n.max(1)];
        match reference {
            Reference::Secret { name, .. } => {
                let spec = self
                    .secrets
                    .get(name)
                    .ok_or_else(|| format!("secret {name:?} is not defined in Secrets"))?;
                let len = if spec.user_defined {
                    1
                } else {
                    (spec.size / 8) as usize
                };
                Ok(SecretMaterial {
                    kind: MaterialKind::Secret(spec.kind),
                    cert_der: spec.kind.is_cert().then(|| dummy(1)),
                    public: dummy(len),
                    private: crate::Secret::new(dummy(len)),
                })
            }
            Reference::RootCa
            | Reference::CoordinatorRoot
            | Reference::CoordinatorIntermediate
            | Reference::MarbleCert(_) => Ok(SecretMaterial {
                kind: MaterialKind::Reserved,
                cert_der: Some(dummy(1)),
                public: dummy(1),
                private: crate::Secret::default(),
            }),
        }
    }
}

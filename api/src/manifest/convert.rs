//! Normalised JSON → [`Manifest`]: types, encodings, enums and template syntax.
use std::collections::BTreeMap;

use serde_json::Value;

use super::error::{ManifestError, Ptr, Warning};
use super::fields::Obj;
use super::model::*;
use crate::template::{Target, Template};

/// Convert the normalised manifest JSON.
pub(super) fn manifest(
    value: &Value,
    warnings: &mut Vec<Warning>,
) -> Result<Manifest, ManifestError> {
    let top = Obj::new(value, Ptr::root())?;
    let mut m = Manifest {
        packages: BTreeMap::new(),
        marbles: BTreeMap::new(),
        infrastructures: BTreeMap::new(),
        secrets: BTreeMap::new(),
        users: BTreeMap::new(),
        roles: BTreeMap::new(),
        recovery_keys: BTreeMap::new(),
        tls: BTreeMap::new(),
        config: Config::default(),
    };
    for (name, v, ptr) in top.entries("Packages")? {
        m.packages
            .insert(name.clone(), super::package::convert(v, ptr)?);
    }
    for (name, v, ptr) in top.entries("Marbles")? {
        m.marbles.insert(name.clone(), marble(v, ptr)?);
    }
    for (name, v, ptr) in top.entries("Infrastructures")? {
        m.infrastructures
            .insert(name.clone(), infrastructure(v, ptr)?);
    }
    for (name, v, ptr) in top.entries("Secrets")? {
        m.secrets.insert(name.clone(), secret(v, ptr, warnings)?);
    }
    for (name, v, ptr) in top.entries("Users")? {
        let o = Obj::new(v, ptr)?;
        let user = User {
            certificate_pem: o.str("Certificate")?.unwrap_or_default().to_string(),
            roles: o.strings("Roles")?,
        };
        m.users.insert(name.clone(), user);
    }
    for (name, v, ptr) in top.entries("Roles")? {
        m.roles.insert(name.clone(), role(v, ptr)?);
    }
    for (name, v, ptr) in top.entries("RecoveryKeys")? {
        let pem = v.as_str().ok_or_else(|| ptr.err("must be a PEM string"))?;
        m.recovery_keys.insert(name.clone(), pem.to_string());
    }
    for (name, v, ptr) in top.entries("TLS")? {
        let o = Obj::new(v, ptr)?;
        let tag = TlsTag {
            outgoing: tls_entries(&o, "Outgoing")?,
            incoming: tls_entries(&o, "Incoming")?,
        };
        m.tls.insert(name.clone(), tag);
    }
    m.config = config(&top.obj("Config")?)?;
    Ok(m)
}

fn marble(value: &Value, ptr: Ptr) -> Result<Marble, ManifestError> {
    let o = Obj::new(value, ptr)?;
    let params = o.obj("Parameters")?;
    let mut parameters = MarbleParameters {
        argv: params.strings("Argv")?,
        ..MarbleParameters::default()
    };
    for (key, v, ptr) in params.entries("Files")? {
        parameters
            .files
            .insert(key.clone(), file_value(key, v, ptr, Target::File)?);
    }
    for (key, v, ptr) in params.entries("Env")? {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ptr.err("an Env name must be non-empty and contain no '=' or NUL"));
        }
        parameters
            .env
            .insert(key.clone(), file_value(key, v, ptr, Target::Env)?);
    }
    let cert_valid_for = match o.nonempty_str("CertValidFor")? {
        None => DEFAULT_CERT_VALID_FOR,
        Some(text) => {
            let at = o.at("CertValidFor");
            let d = humantime::parse_duration(text.trim())
                .map_err(|_| at.err(format!("{text:?} is not a duration such as \"24h\"")))?;
            if d.is_zero() || d > MAX_CERT_VALID_FOR {
                return Err(at.err("must be greater than 0 and at most one year"));
            }
            d
        }
    };
    let dns_names = o.strings("DNSNames")?;
    for (i, name) in dns_names.iter().enumerate() {
        if !is_dns_name_or_ip(name) {
            return Err(o
                .at("DNSNames")
                .join(i)
                .err(format!("{name:?} is not a DNS name or IP address")));
        }
    }
    let mesh = match o.get("Mesh") {
        None => None,
        Some(v @ Value::Object(_)) => Some(super::mesh::convert(v, o.at("Mesh"))?),
        Some(_) => return Err(o.at("Mesh").err("must be an object")),
    };
    Ok(Marble {
        package: o.str("Package")?.unwrap_or_default().to_string(),
        max_activations: o.u64("MaxActivations")?.unwrap_or(0),
        parameters,
        tls: o.strings("TLS")?,
        disable_secret_binding: o.bool("DisableSecretBinding")?,
        cert_valid_for,
        dns_names,
        mesh,
    })
}

fn file_value(
    key: &str,
    value: &Value,
    ptr: Ptr,
    target: Target,
) -> Result<FileValue, ManifestError> {
    let (data, no_templates) = match value {
        Value::String(s) => (s.as_bytes().to_vec(), false),
        Value::Object(_) => {
            let o = Obj::new(value, ptr.clone())?;
            let text = o.str("Data")?.unwrap_or_default();
            let data = match o.str("Encoding")?.unwrap_or("string") {
                "" | "string" => text.as_bytes().to_vec(),
                "base64" => crate::bytes::unb64(text)
                    .map_err(|_| o.at("Data").err("is not valid base64 (Encoding base64)"))?,
                "hex" => hex::decode(text.trim())
                    .map_err(|_| o.at("Data").err("is not valid hex (Encoding hex)"))?,
                other => {
                    return Err(o.at("Encoding").err(format!(
                        "unknown encoding {other:?} (allowed: string, base64, hex)"
                    )))
                }
            };
            (data, o.bool("NoTemplates")?)
        }
        Value::Null => (Vec::new(), false),
        _ => return Err(ptr.err("must be a string or an object {Data, Encoding, NoTemplates}")),
    };
    let section = target.section();
    if target == Target::Env && data.contains(&0) {
        return Err(ptr.err(format!("Env {key:?} contains a NUL byte")));
    }
    let template = if no_templates {
        None
    } else {
        Some(
            Template::parse_bytes(&data, target)
                .map_err(|e| ptr.err(format!("template in {section} {key:?}: {e}")))?,
        )
    };
    Ok(FileValue {
        data,
        no_templates,
        template,
    })
}

fn infrastructure(value: &Value, ptr: Ptr) -> Result<Infrastructure, ManifestError> {
    let o = Obj::new(value, ptr)?;
    let u16_field = |key| -> Result<Option<u16>, ManifestError> {
        Ok(o.uint_max(key, u64::from(u16::MAX))?
            .and_then(|n| u16::try_from(n).ok()))
    };
    Ok(Infrastructure {
        cpusvn: o.bytes("CPUSVN")?,
        qesvn: u16_field("QESVN")?,
        pcesvn: u16_field("PCESVN")?,
        root_ca: o.bytes("RootCA")?,
    })
}

fn secret(
    value: &Value,
    ptr: Ptr,
    warnings: &mut Vec<Warning>,
) -> Result<SecretSpec, ManifestError> {
    let o = Obj::new(value, ptr)?;
    let kind = match o.str("Type")? {
        None | Some("") => return Err(o.at("Type").err("Type is required")),
        Some(t) => SecretKind::parse(t).ok_or_else(|| {
            o.at("Type").err(format!(
                "unknown secret type {t:?} (allowed: symmetric-key, cert-rsa, cert-ecdsa, \
                 cert-ed25519, plain)"
            ))
        })?,
    };
    let size = o.uint_max("Size", u64::from(u32::MAX))?.unwrap_or(0);
    let valid_for = o.uint_max("ValidFor", u64::from(u32::MAX))?.unwrap_or(0);
    let cert = match o.get("Cert") {
        None => None,
        Some(v) => Some(super::cert::convert(v, o.at("Cert"), warnings)?),
    };
    let user_defined = o.bool("UserDefined")?;
    let mut initial_private = o.bytes("Private")?;
    let mut initial_public = o.bytes("Public")?;
    if !user_defined && (initial_private.is_some() || initial_public.is_some()) {
        let field = if initial_private.is_some() {
            "Private"
        } else {
            "Public"
        };
        warnings.push(o.at(field).warn(
            "only user-defined secrets take an initial value; ignored (the coordinator generates it)",
        ));
        initial_private = None;
        initial_public = None;
    }
    Ok(SecretSpec {
        kind,
        size: u32::try_from(size).unwrap_or(u32::MAX),
        shared: o.bool("Shared")?,
        user_defined,
        cert,
        valid_for_days: u32::try_from(valid_for).ok().filter(|d| *d != 0),
        initial_private,
        initial_public,
    })
}

fn role(value: &Value, ptr: Ptr) -> Result<Role, ManifestError> {
    let o = Obj::new(value, ptr)?;
    let rt = o.str("ResourceType")?.unwrap_or_default();
    let resource_type = ResourceType::parse(rt).ok_or_else(|| {
        o.at("ResourceType").err(format!(
            "unknown resource type {rt:?} (allowed, case-sensitive: Packages, Secrets, Manifest, Marbles)"
        ))
    })?;
    let actions = o.strings("Actions")?;
    for (i, a) in actions.iter().enumerate() {
        if !ACTIONS.contains(&a.as_str()) {
            return Err(o.at("Actions").join(i).err(format!(
                "unknown action {a:?} (allowed: {})",
                ACTIONS.join(", ")
            )));
        }
    }
    Ok(Role {
        resource_type,
        resource_names: o.strings("ResourceNames")?,
        actions,
    })
}

fn tls_entries(tag: &Obj<'_>, key: &str) -> Result<Vec<TlsEntry>, ManifestError> {
    let ptr = tag.at(key);
    let items = match tag.get(key) {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ptr.err("must be an array")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let o = Obj::new(v, ptr.join(i))?;
            Ok(TlsEntry {
                port: o.str("Port")?.unwrap_or_default().to_string(),
                addr: o.str("Addr")?.unwrap_or_default().to_string(),
                cert: o.nonempty_str("Cert")?.map(str::to_string),
                disable_client_auth: o.bool("DisableClientAuth")?,
            })
        })
        .collect()
}

fn config(o: &Obj<'_>) -> Result<Config, ManifestError> {
    let seal_mode = match o.str("SealMode")?.unwrap_or_default() {
        "" | "ProductKey" => SealMode::ProductKey,
        "UniqueKey" => SealMode::UniqueKey,
        "Disabled" => SealMode::Disabled,
        other => {
            return Err(o.at("SealMode").err(format!(
                "unknown seal mode {other:?} (allowed, case-sensitive: ProductKey, UniqueKey, Disabled)"
            )))
        }
    };
    let mut feature_gates = Vec::new();
    for (i, g) in o.strings("FeatureGates")?.iter().enumerate() {
        let at = o.at("FeatureGates").join(i);
        let gate = match g.as_str() {
            "SignQuoteEndpoint" => FeatureGate::SignQuoteEndpoint,
            "MonotonicCounter" => FeatureGate::MonotonicCounter,
            "AzureHSMSealing" => {
                return Err(at.err("feature gate AzureHSMSealing is not supported by Quarry"))
            }
            other => return Err(at.err(format!("unknown feature gate {other:?}"))),
        };
        if !feature_gates.contains(&gate) {
            feature_gates.push(gate);
        }
    }
    let tcb_change_action = match o.nonempty_str("TCBChangeAction")? {
        None => TcbChangeAction::Warn,
        Some(text) => TcbChangeAction::parse(text).ok_or_else(|| {
            o.at("TCBChangeAction").err(format!(
                "unknown TCB change action {text:?} (allowed: {})",
                TcbChangeAction::ALL.join(", ")
            ))
        })?,
    };
    let trust_domain = match o.nonempty_str("TrustDomain")? {
        None => crate::spiffe::DEFAULT_TRUST_DOMAIN.to_string(),
        Some(td) if is_trust_domain(td) => td.to_string(),
        Some(td) => {
            return Err(o.at("TrustDomain").err(format!(
                "{td:?} is not a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')"
            )))
        }
    };
    Ok(Config {
        trust_domain,
        seal_mode,
        feature_gates,
        update_threshold: o.u64("UpdateThreshold")?.unwrap_or(0),
        recovery_threshold: o.u64("RecoveryThreshold")?.unwrap_or(0),
        rotate_root_secret: o.bool("RotateRootSecret")?,
        tcb_change_action,
    })
}

fn is_trust_domain(s: &str) -> bool {
    s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn is_dns_name_or_ip(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = s.strip_prefix("*.").unwrap_or(s);
    !name.is_empty() && s.len() <= 253 && name.split('.').all(super::mesh::is_dns_label)
}

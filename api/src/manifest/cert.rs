//! `Secrets.<name>.Cert`: the supported subset of Go's `x509.Certificate` template.
use serde_json::Value;

use super::error::{ManifestError, Ptr, Warning};
use super::fields::{is_zero, Obj};
use super::model::CertTemplate;

/// Fields the coordinator always sets itself.
const OVERRIDDEN: [&str; 16] = [
    "Raw",
    "RawTBSCertificate",
    "RawSubjectPublicKeyInfo",
    "RawSubject",
    "RawIssuer",
    "Signature",
    "SignatureAlgorithm",
    "PublicKeyAlgorithm",
    "PublicKey",
    "Version",
    "SerialNumber",
    "Issuer",
    "NotBefore",
    "Extensions",
    "BasicConstraintsValid",
    "UnhandledCriticalExtensions",
];

/// Fields Quarry does not put into certificates.
const UNSUPPORTED: [&str; 9] = [
    "ExtraExtensions",
    "UnknownExtKeyUsage",
    "SubjectKeyId",
    "AuthorityKeyId",
    "OCSPServer",
    "IssuingCertificateURL",
    "CRLDistributionPoints",
    "PolicyIdentifiers",
    "Policies",
];

/// Name constraints: ignoring them would issue a broader certificate than asked, so refuse.
const CONSTRAINTS: [&str; 9] = [
    "PermittedDNSDomainsCritical",
    "PermittedDNSDomains",
    "ExcludedDNSDomains",
    "PermittedIPRanges",
    "ExcludedIPRanges",
    "PermittedEmailAddresses",
    "ExcludedEmailAddresses",
    "PermittedURIDomains",
    "ExcludedURIDomains",
];

/// Convert a certificate template object.
pub(super) fn convert(
    value: &Value,
    ptr: Ptr,
    warnings: &mut Vec<Warning>,
) -> Result<CertTemplate, ManifestError> {
    if value.is_string() {
        return Err(ptr.err("must be a certificate template object (a DER string is not accepted)"));
    }
    let o = Obj::new(value, ptr)?;
    for name in OVERRIDDEN {
        if o.get(name).is_some_and(|v| !is_zero(v)) {
            warnings.push(o.at(name).warn("always set by the coordinator; ignored"));
        }
    }
    for name in UNSUPPORTED {
        if o.get(name).is_some_and(|v| !is_zero(v)) {
            warnings.push(o.at(name).warn("not supported by Quarry; ignored"));
        }
    }
    for name in CONSTRAINTS {
        if o.get(name).is_some_and(|v| !is_zero(v)) {
            return Err(o
                .at(name)
                .err("name constraints are not supported by Quarry"));
        }
    }
    let subject = o.obj("Subject")?;
    for name in [
        "StreetAddress",
        "PostalCode",
        "SerialNumber",
        "Names",
        "ExtraNames",
    ] {
        if subject.get(name).is_some_and(|v| !is_zero(v)) {
            warnings.push(subject.at(name).warn("not supported by Quarry; ignored"));
        }
    }
    let mut t = CertTemplate {
        common_name: subject.nonempty_str("CommonName")?.map(str::to_string),
        organization: subject.strings("Organization")?,
        organizational_unit: subject.strings("OrganizationalUnit")?,
        country: subject.strings("Country")?,
        locality: subject.strings("Locality")?,
        province: subject.strings("Province")?,
        dns_names: o.strings("DNSNames")?,
        email_addresses: o.strings("EmailAddresses")?,
        uris: o.strings("URIs")?,
        is_ca: o.bool("IsCA")?,
        ..CertTemplate::default()
    };
    for (i, ip) in o.strings("IPAddresses")?.iter().enumerate() {
        let addr = ip.parse().map_err(|_| {
            o.at("IPAddresses")
                .join(i)
                .err(format!("{ip:?} is not an IP address"))
        })?;
        t.ip_addresses.push(addr);
    }
    if let Some(text) = o.nonempty_str("NotAfter")? {
        let parsed =
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|_| o.at("NotAfter").err("must be an RFC 3339 time"))?;
        // Go's zero time.Time marshals as 0001-01-01T00:00:00Z: treat it as unset.
        if parsed.year() > 1 {
            t.not_after = Some(parsed);
        }
    }
    if let Some(ku) = o.uint_max("KeyUsage", 511)? {
        t.key_usage = u32::try_from(ku).ok().filter(|k| *k != 0);
    }
    let ext = o.at("ExtKeyUsage");
    if let Some(Value::Array(items)) = o.get("ExtKeyUsage") {
        for (i, v) in items.iter().enumerate() {
            match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if n <= 13 => t.ext_key_usage.push(n),
                _ => {
                    return Err(ext
                        .join(i)
                        .err("must be a Go ExtKeyUsage number from 0 to 13"))
                }
            }
        }
    } else if o.has("ExtKeyUsage") {
        return Err(ext.err("must be an array of numbers"));
    }
    let max_path_len = o.i64("MaxPathLen")?.unwrap_or(0);
    let zero = o.bool("MaxPathLenZero")?;
    t.max_path_len = match max_path_len {
        n if n > 0 => Some(n),
        0 if zero => Some(0),
        _ => None,
    };
    Ok(t)
}

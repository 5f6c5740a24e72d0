//! Key normalisation (Go `encoding/json` matches keys case-insensitively), unknown-key
//! warnings, canonical spelling of case-insensitive enum values, and the placeholder scan.
use serde_json::{Map, Value};

use super::error::{ManifestError, Ptr, Warning};

/// The known structure of a manifest, used to normalise keys.
enum Shape {
    /// An object with known keys (canonical spelling → shape).
    Object(&'static [(&'static str, Shape)]),
    /// An object whose keys are user-chosen names (not normalised).
    Map(&'static Shape),
    /// An array of one shape.
    Array(&'static Shape),
    /// A scalar or anything not normalised further.
    Leaf,
    /// A string compared case-insensitively against canonical values.
    Enum(&'static [&'static str]),
    /// A File/Env value: a string or a `{Data, Encoding, NoTemplates}` object.
    File,
}

use Shape::{Array, Enum, Leaf, Map as M, Object};

const TOP: Shape = Object(&[
    ("Packages", M(&PACKAGE)),
    ("Marbles", M(&MARBLE)),
    ("Infrastructures", M(&INFRASTRUCTURE)),
    ("Secrets", M(&SECRET)),
    ("Users", M(&USER)),
    ("Roles", M(&ROLE)),
    ("RecoveryKeys", M(&Leaf)),
    ("TLS", M(&TLS_TAG)),
    ("Config", CONFIG),
]);

const PACKAGE: Shape = Object(&[
    ("TEE", Enum(&["sgx", "tdx", "snp", "simulated"])),
    ("UniqueID", Leaf),
    ("SignerID", Leaf),
    ("ProductID", Leaf),
    ("SecurityVersion", Leaf),
    ("Debug", Leaf),
    (
        "AcceptedTCBStatuses",
        Array(&Enum(&[
            "UpToDate",
            "SWHardeningNeeded",
            "ConfigurationNeeded",
            "ConfigurationAndSWHardeningNeeded",
            "OutOfDate",
            "OutOfDateConfigurationNeeded",
            "Revoked",
        ])),
    ),
    ("AcceptedAdvisories", Array(&Leaf)),
    ("AllowedPlatforms", Array(&Leaf)),
    ("AllowedChipIDs", Array(&Leaf)),
    ("MRTD", Leaf),
    ("RTMR0", Leaf),
    ("RTMR1", Leaf),
    ("RTMR2", Leaf),
    ("RTMR3", Leaf),
    ("MRSEAM", Leaf),
    ("Measurement", Leaf),
    ("HostData", Leaf),
    ("IDKeyDigest", Leaf),
    ("MinimumTCB", Leaf),
    ("MaxVMPL", Leaf),
]);

const MARBLE: Shape = Object(&[
    ("Package", Leaf),
    ("MaxActivations", Leaf),
    (
        "Parameters",
        Object(&[
            ("Files", M(&Shape::File)),
            ("Env", M(&Shape::File)),
            ("Argv", Array(&Leaf)),
        ]),
    ),
    ("TLS", Array(&Leaf)),
    ("DisableSecretBinding", Leaf),
    ("CertValidFor", Leaf),
    ("DNSNames", Array(&Leaf)),
    (
        "Mesh",
        Object(&[
            (
                "Inbound",
                Array(&Object(&[
                    ("Port", Leaf),
                    ("Forward", Leaf),
                    ("AllowFrom", Array(&Leaf)),
                    ("Cert", Leaf),
                ])),
            ),
            (
                "Outbound",
                Array(&Object(&[
                    ("Listen", Leaf),
                    ("Marble", Leaf),
                    ("Address", Leaf),
                ])),
            ),
        ]),
    ),
]);

const FILE: Shape = Object(&[
    ("Data", Leaf),
    ("Encoding", Enum(&["string", "base64", "hex"])),
    ("NoTemplates", Leaf),
]);

const INFRASTRUCTURE: Shape = Object(&[
    ("CPUSVN", Leaf),
    ("QESVN", Leaf),
    ("PCESVN", Leaf),
    ("RootCA", Leaf),
]);

const SECRET: Shape = Object(&[
    ("Type", Leaf),
    ("Size", Leaf),
    ("Shared", Leaf),
    ("UserDefined", Leaf),
    ("Cert", CERT),
    ("ValidFor", Leaf),
    ("Private", Leaf),
    ("Public", Leaf),
]);

/// Fields of Go's `x509.Certificate` (the template type). Those Quarry does not apply are
/// reported by the converter.
const CERT: Shape = Object(&[
    ("Raw", Leaf),
    ("RawTBSCertificate", Leaf),
    ("RawSubjectPublicKeyInfo", Leaf),
    ("RawSubject", Leaf),
    ("RawIssuer", Leaf),
    ("Signature", Leaf),
    ("SignatureAlgorithm", Leaf),
    ("PublicKeyAlgorithm", Leaf),
    ("PublicKey", Leaf),
    ("Version", Leaf),
    ("SerialNumber", Leaf),
    ("Issuer", NAME),
    ("Subject", NAME),
    ("NotBefore", Leaf),
    ("NotAfter", Leaf),
    ("KeyUsage", Leaf),
    ("Extensions", Leaf),
    ("ExtraExtensions", Leaf),
    ("UnhandledCriticalExtensions", Leaf),
    ("ExtKeyUsage", Array(&Leaf)),
    ("UnknownExtKeyUsage", Leaf),
    ("BasicConstraintsValid", Leaf),
    ("IsCA", Leaf),
    ("MaxPathLen", Leaf),
    ("MaxPathLenZero", Leaf),
    ("SubjectKeyId", Leaf),
    ("AuthorityKeyId", Leaf),
    ("OCSPServer", Leaf),
    ("IssuingCertificateURL", Leaf),
    ("DNSNames", Array(&Leaf)),
    ("EmailAddresses", Array(&Leaf)),
    ("IPAddresses", Array(&Leaf)),
    ("URIs", Array(&Leaf)),
    ("PermittedDNSDomainsCritical", Leaf),
    ("PermittedDNSDomains", Leaf),
    ("ExcludedDNSDomains", Leaf),
    ("PermittedIPRanges", Leaf),
    ("ExcludedIPRanges", Leaf),
    ("PermittedEmailAddresses", Leaf),
    ("ExcludedEmailAddresses", Leaf),
    ("PermittedURIDomains", Leaf),
    ("ExcludedURIDomains", Leaf),
    ("CRLDistributionPoints", Leaf),
    ("PolicyIdentifiers", Leaf),
    ("Policies", Leaf),
]);

const NAME: Shape = Object(&[
    ("Country", Array(&Leaf)),
    ("Organization", Array(&Leaf)),
    ("OrganizationalUnit", Array(&Leaf)),
    ("Locality", Array(&Leaf)),
    ("Province", Array(&Leaf)),
    ("StreetAddress", Array(&Leaf)),
    ("PostalCode", Array(&Leaf)),
    ("SerialNumber", Leaf),
    ("CommonName", Leaf),
    ("Names", Leaf),
    ("ExtraNames", Leaf),
]);

const USER: Shape = Object(&[("Certificate", Leaf), ("Roles", Array(&Leaf))]);

const ROLE: Shape = Object(&[
    ("ResourceType", Leaf),
    ("ResourceNames", Array(&Leaf)),
    ("Actions", Array(&Enum(&super::model::ACTIONS))),
]);

const TLS_TAG: Shape = Object(&[
    ("Outgoing", Array(&TLS_ENTRY)),
    ("Incoming", Array(&TLS_ENTRY)),
]);

const TLS_ENTRY: Shape = Object(&[
    ("Port", Leaf),
    ("Addr", Leaf),
    ("Cert", Leaf),
    ("DisableClientAuth", Leaf),
]);

const CONFIG: Shape = Object(&[
    ("SealMode", Leaf),
    (
        "FeatureGates",
        Array(&Enum(&[
            "SignQuoteEndpoint",
            "MonotonicCounter",
            "AzureHSMSealing",
        ])),
    ),
    ("UpdateThreshold", Leaf),
    ("RecoveryThreshold", Leaf),
    ("RotateRootSecret", Leaf),
    ("TrustDomain", Leaf),
    ("TCBChangeAction", Enum(&super::model::TcbChangeAction::ALL)),
]);

/// Rewrite every known key to its canonical spelling, drop unknown keys with a warning, and
/// canonicalise case-insensitive enum values.
pub(super) fn normalise(value: Value, warnings: &mut Vec<Warning>) -> Result<Value, ManifestError> {
    walk(value, &TOP, &Ptr::root(), warnings)
}

fn walk(
    value: Value,
    shape: &Shape,
    ptr: &Ptr,
    warnings: &mut Vec<Warning>,
) -> Result<Value, ManifestError> {
    match (shape, value) {
        (Object(fields), Value::Object(map)) => {
            let mut out = Map::new();
            for (key, v) in map {
                let here = ptr.join(&key);
                let Some((canonical, sub)) = fields
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(&key))
                else {
                    warnings.push(here.warn(format!("unknown key {key:?} is ignored")));
                    continue;
                };
                if out.contains_key(*canonical) {
                    return Err(here.err(format!(
                        "duplicate key: {key:?} and another spelling both mean {canonical:?} \
                         (keys are case-insensitive)"
                    )));
                }
                let v = walk(v, sub, &ptr.join(canonical), warnings)?;
                out.insert((*canonical).to_string(), v);
            }
            Ok(Value::Object(out))
        }
        (M(sub), Value::Object(map)) => {
            let mut out = Map::new();
            for (key, v) in map {
                let v = walk(v, sub, &ptr.join(&key), warnings)?;
                out.insert(key, v);
            }
            Ok(Value::Object(out))
        }
        (Array(sub), Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| walk(v, sub, &ptr.join(i), warnings))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        (Enum(values), Value::String(s)) => Ok(Value::String(
            values
                .iter()
                .find(|c| c.eq_ignore_ascii_case(&s))
                .map_or(s, |c| (*c).to_string()),
        )),
        (Shape::File, v @ Value::Object(_)) => walk(v, &FILE, ptr, warnings),
        (_, v) => Ok(v),
    }
}

/// Refuse placeholder values left over from samples and test fixtures.
pub(super) fn find_placeholder(value: &Value, ptr: &Ptr) -> Result<(), ManifestError> {
    match value {
        Value::String(s) if is_placeholder(s) => {
            let shown: String = s.chars().take(80).collect();
            Err(ptr.err(format!(
                "placeholder {shown:?} must be replaced with a real value"
            )))
        }
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| find_placeholder(v, &ptr.join(k))),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| find_placeholder(v, &ptr.join(i))),
        _ => Ok(()),
    }
}

fn is_placeholder(s: &str) -> bool {
    let t = s.trim_start();
    let starts = |prefix: &str| {
        t.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    starts("<replace") || starts("<GENERATED-AT-TEST-RUNTIME")
}

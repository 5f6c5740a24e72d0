//! Wire types of every HTTP body of the client and mesh APIs (contract §6).
//! Names and shapes follow MarbleRun's API v2 where it has the endpoint.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::evidence::Evidence;

/// Largest request body either API accepts, in bytes.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// JSend envelope used by every response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JSend<T> {
    /// `success`, `fail` (client error) or `error` (server error).
    pub status: String,
    /// Payload on success (and details on fail). A missing field reads as `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    /// Human-readable message on fail/error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl<T> JSend<T> {
    /// A success envelope.
    pub fn success(data: T) -> JSend<T> {
        JSend {
            status: "success".into(),
            data: Some(data),
            message: None,
        }
    }

    /// Unwrap a success envelope, or turn fail/error into its message.
    pub fn into_result(self) -> Result<T, String> {
        match (self.status.as_str(), self.data) {
            ("success", Some(d)) => Ok(d),
            ("success", None) => Err("success response without data".into()),
            (_, _) => Err(self
                .message
                .unwrap_or_else(|| format!("status {}", self.status))),
        }
    }
}

/// The `data` of a JSend `fail` body: why a request was refused, for programs to act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailData {
    /// Stable refusal code (`policy-mismatch`, `nonce`, `bad-request`, ...; docs/OPERATIONS.md).
    pub code: String,
    /// The same text as the envelope's `message`.
    pub message: String,
    /// The compared fields, when the refusal compares values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldMismatch>,
    /// JSON pointer of the offending input (manifest errors), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
}

/// One compared value of a refusal: what the policy requires and what was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldMismatch {
    /// The field (`SecurityVersion`, `UniqueID`, ...).
    pub field: String,
    /// What the policy requires (`>= 3`).
    pub expected: String,
    /// What the evidence shows.
    pub found: String,
}

impl FailData {
    /// One line for operators: `refused [code] field: expected X, found Y; ...`, then the
    /// message where it says more than the fields (why the values had to match); the message
    /// alone when no field was compared.
    pub fn summary(&self) -> String {
        if self.fields.is_empty() {
            return format!("refused [{}] {}", self.code, self.message);
        }
        let fields: Vec<String> = self.fields.iter().map(ToString::to_string).collect();
        let line = format!("refused [{}] {}", self.code, fields.join("; "));
        if fields.iter().all(|f| self.message.contains(f.as_str())) {
            line
        } else {
            format!("{line} ({})", self.message)
        }
    }
}

impl JSend<serde_json::Value> {
    /// The typed details of a `fail` envelope, when the server sent them (older servers and
    /// other error paths send only a message).
    pub fn fail_data(&self) -> Option<FailData> {
        if self.status != "fail" {
            return None;
        }
        serde_json::from_value(self.data.clone()?).ok()
    }
}

impl std::fmt::Display for FieldMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expected {}, found {}",
            self.field, self.expected, self.found
        )
    }
}

/// Coordinator states (MarbleRun codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// 1: sealed state exists but cannot be opened.
    Recovery = 1,
    /// 2: fresh, waiting for a manifest.
    AcceptingManifest = 2,
    /// 3: manifest set, activating marbles.
    AcceptingMarbles = 3,
}

impl State {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The MarbleRun status message.
    pub fn message(self) -> &'static str {
        match self {
            State::Recovery => "Coordinator is in recovery mode. Either upload a key to unseal the saved state, or set a new manifest. For more information on how to proceed, consult the documentation.",
            State::AcceptingManifest => "Coordinator is ready to accept a manifest.",
            State::AcceptingMarbles => "Coordinator is running correctly and ready to accept marbles.",
        }
    }
}

/// `GET /api/v2/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusResponse {
    /// State code 1, 2 or 3.
    pub code: u8,
    /// State message.
    pub message: String,
    /// True when the coordinator runs on a simulated TEE (never for production).
    #[serde(default)]
    pub simulation: bool,
    /// The coordinator's version (absent from coordinators before 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// In Recovery (state 1): why, as a stable code (`unseal`, `rollback`, `key-missing`,
    /// ...; docs/OPERATIONS.md, "Recovery reasons"). The reason's text stays in the
    /// coordinator's log and `/readyz`: it names files and is not for unauthenticated callers.
    #[serde(
        rename = "recoveryReason",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub recovery_reason: Option<String>,
}

/// `POST /api/v2/manifest` and the update endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestSetRequest {
    /// The manifest bytes, base64.
    #[serde(with = "crate::bytes::base64")]
    pub manifest: Vec<u8>,
}

/// Response of `POST /api/v2/manifest`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ManifestSetResponse {
    /// Recovery secrets by key name (RSA-OAEP ciphertexts), null without recovery keys.
    #[serde(rename = "RecoverySecrets")]
    pub recovery_secrets: Option<BTreeMap<String, String>>,
    /// Warnings from validation (unknown keys and the like).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `POST /api/v2/recover` (reference §3.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoverRequest {
    /// The recovery secret or share (32 or 33 bytes), or it RSA-OAEP-SHA256 encrypted to the
    /// ephemeral key of `GET /api/v2/recover/public-key`; base64.
    #[serde(with = "crate::bytes::base64")]
    pub recovery_secret: Vec<u8>,
    /// RSA-PKCS1v15-SHA256 signature over the plaintext secret by the recovery key; base64.
    #[serde(with = "crate::bytes::base64")]
    pub recovery_secret_signature: Vec<u8>,
}

/// Response of `POST /api/v2/recover`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoverResponse {
    /// Secrets still needed (0 = recovered).
    pub remaining: u64,
    /// Human-readable outcome.
    pub message: String,
}

/// Response of `GET /api/v2/recover/public-key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoverPublicKeyResponse {
    /// Always `RSA`.
    pub algorithm: String,
    /// The ephemeral RSA public key, PKIX DER, base64.
    #[serde(with = "crate::bytes::base64")]
    pub ephemeral_public_key: Vec<u8>,
}

/// `GET /api/v2/manifest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestGetResponse {
    /// ECDSA signature (ASN.1 DER, base64) by the root key over SHA-256(manifest).
    #[serde(rename = "manifestSignatureRootECDSA")]
    pub manifest_signature_root_ecdsa: String,
    /// Hex SHA-256 of the exact manifest bytes.
    pub manifest_fingerprint: String,
    /// The manifest bytes as posted, base64.
    pub manifest: String,
}

/// `GET /api/v2/quote`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuoteResponse {
    /// PEM chain: mesh CA, then root CA (last).
    pub cert: String,
    /// The coordinator's quote bytes, base64.
    pub quote: String,
    /// Evidence type of `quote`.
    #[serde(rename = "type")]
    pub kind: crate::evidence::EvidenceType,
    /// True when the quote is simulated evidence.
    pub simulation: bool,
}

/// `GET /api/v2/activate/nonce`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NonceResponse {
    /// 32 random bytes, hex; single use, valid for a short time.
    pub nonce: String,
}

/// `POST /api/v2/activate` (mesh API, mTLS with the marble's self-signed certificate).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivateRequest {
    /// The marble type (a key of `Marbles`).
    pub marble_type: String,
    /// The marble instance UUID.
    pub uuid: String,
    /// Evidence whose report data binds the TLS client key (and the nonce).
    pub evidence: Evidence,
    /// DNS names / IPs the marble asks to have in its certificate.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// Nonce from `GET /api/v2/activate/nonce`, hex, if one was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// One piece of a rendered parameter value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Segment {
    /// Literal bytes, base64.
    Data(#[serde(with = "crate::bytes::base64")] Vec<u8>),
    /// The marble's own private key (which only the sidecar holds), in the given encoding.
    MarblePrivateKey(KeyEncoding),
}

/// How the sidecar renders its private key into a [`Segment::MarblePrivateKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyEncoding {
    /// PKCS#8 PEM.
    Pem,
    /// PKCS#8 DER.
    Raw,
    /// Hex of PKCS#8 DER.
    Hex,
    /// Base64 of PKCS#8 DER.
    Base64,
}

/// A parameter value: concatenation of its segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Value(pub Vec<Segment>);

impl Value {
    /// A value of literal bytes.
    pub fn data(bytes: Vec<u8>) -> Value {
        Value(vec![Segment::Data(bytes)])
    }

    /// Assemble the bytes, given the marble's PKCS#8 private key.
    pub fn assemble(&self, private_key_pkcs8: &[u8]) -> Vec<u8> {
        use base64::Engine as _;
        let mut out = Vec::new();
        for seg in &self.0 {
            match seg {
                Segment::Data(b) => out.extend_from_slice(b),
                Segment::MarblePrivateKey(enc) => match enc {
                    KeyEncoding::Pem => out.extend_from_slice(
                        crate::bytes::encode_pem("PRIVATE KEY", private_key_pkcs8).as_bytes(),
                    ),
                    KeyEncoding::Raw => out.extend_from_slice(private_key_pkcs8),
                    KeyEncoding::Hex => {
                        out.extend_from_slice(hex::encode(private_key_pkcs8).as_bytes())
                    }
                    KeyEncoding::Base64 => out
                        .extend_from_slice(crate::bytes::B64.encode(private_key_pkcs8).as_bytes()),
                },
            }
        }
        out
    }
}

/// Files, environment and argv for a marble (rendered by the coordinator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Parameters {
    /// Path → content.
    #[serde(default)]
    pub files: BTreeMap<String, Value>,
    /// Name → value (never contains NUL).
    #[serde(default)]
    pub env: BTreeMap<String, Value>,
    /// Replacement argv (argv[0] included); empty = keep the command line given to the sidecar.
    #[serde(default)]
    pub argv: Vec<String>,
}

/// Response of `POST /api/v2/activate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivateResponse {
    /// PEM: the marble's leaf certificate, then the mesh CA.
    pub certificate_chain: String,
    /// PEM: the deployment's root CA.
    pub root_ca: String,
    /// The marble's SPIFFE ID (the single URI SAN of its certificate).
    pub spiffe_id: String,
    /// Rendered parameters.
    pub parameters: Parameters,
    /// True when the marble was attested with simulated evidence.
    pub simulation: bool,
    /// The sidecar proxies' configuration (`Marbles.<type>.Mesh`); `None` without one.
    #[serde(default)]
    pub mesh: Option<MeshConfig>,
}

/// The marble's sidecar proxies, as the coordinator hands them out at activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// SPIFFE trust domain every peer's ID must be in.
    pub trust_domain: String,
    /// Mesh ports (mTLS in, plaintext to the service).
    #[serde(default)]
    pub inbound: Vec<MeshInboundConfig>,
    /// Egress ports (plaintext in on loopback, mTLS out).
    #[serde(default)]
    pub outbound: Vec<MeshOutboundConfig>,
}

/// One mesh port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshInboundConfig {
    /// Port to listen on (all interfaces).
    pub port: u16,
    /// Plaintext destination of accepted connections.
    pub forward: std::net::SocketAddr,
    /// Who may connect.
    pub allow: MeshAllow,
}

/// Who may connect to a mesh port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum MeshAllow {
    /// Any marble of the deployment (client certificate required).
    AnyMarble,
    /// Marbles of these types only (client certificate required).
    Marbles {
        /// The allowed marble types.
        types: Vec<String>,
    },
    /// External TLS clients without client certificates, served with a certificate secret.
    External(ExternalCert),
}

/// The certificate secret an external-facing mesh port serves. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalCert {
    /// Name of the secret in the manifest.
    pub secret: String,
    /// PEM: the secret's certificate, then the mesh CA.
    pub certificate_chain: String,
    /// The private key, PKCS#8 DER, base64. Secret.
    #[serde(with = "crate::bytes::base64")]
    pub private_key: Vec<u8>,
}

impl std::fmt::Debug for ExternalCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalCert")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// One egress port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshOutboundConfig {
    /// Loopback address to listen on.
    pub listen: std::net::SocketAddr,
    /// Marble type the server must prove by its SPIFFE ID.
    pub marble: String,
    /// `host:port` of the server's mesh port.
    pub address: String,
}

/// `POST /api/v2/renew` (mesh API, mTLS with the marble's current leaf certificate).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewRequest {
    /// Fresh evidence whose report data binds the leaf's key and `nonce`.
    pub evidence: Evidence,
    /// Nonce from `GET /api/v2/activate/nonce` asked on a leaf-authenticated connection, hex.
    pub nonce: String,
}

/// Response of `POST /api/v2/renew`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewResponse {
    /// PEM: the new leaf certificate (same key, UUID and type), then the mesh CA.
    pub certificate_chain: String,
    /// PEM: the deployment's root CA.
    pub root_ca: String,
    /// The marble's SPIFFE ID (unchanged).
    pub spiffe_id: String,
    /// Serial of the new leaf, hex.
    pub serial: String,
    /// End of the new leaf's validity, Unix seconds.
    pub not_after: i64,
    /// The marble's `Parameters.Files` whose templates use `.MarbleRun.MarbleCert.Cert`,
    /// rendered again with the new leaf (path → value, as at activation). The sidecar replaces
    /// those of them it wrote at activation; absent when there are none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, Value>,
}

/// `POST /api/v2/revoke` (client API, a user allowed `RevokeMarble`): exactly one of the two.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokeRequest {
    /// Revoke a marble instance: every certificate it holds, and it can never renew or activate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Revoke one certificate by its serial (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// Response of `POST /api/v2/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokeResponse {
    /// Marble type of the revoked instance or certificate.
    pub marble_type: String,
    /// The revoked UUID (also for a serial: the instance the certificate belongs to).
    pub uuid: String,
    /// Serials (hex) that the CRL lists because of this revocation.
    pub serials: Vec<String>,
    /// True when it was revoked before; nothing changed.
    pub already_revoked: bool,
}

/// `POST /api/v2/sign-quote` (client API, no authentication; feature gate
/// `SignQuoteEndpoint`): a quote for the coordinator to verify and sign (MarbleRun's shape).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignQuoteRequest {
    /// The SGX DCAP quote, standard base64; an Open Enclave report header before it is
    /// accepted and ignored. Quarry also takes a TDX DCAP quote here.
    #[serde(default)]
    pub sgx_quote: String,
}

/// Response of `POST /api/v2/sign-quote`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignQuoteResponse {
    /// TCB status the coordinator's verifier found (`UpToDate`, `OutOfDate`, ...).
    pub tcb_status: String,
    /// ECDSA P-256 (ASN.1 DER, standard base64) by the coordinator's root CA key over
    /// SHA-256 of [`crate::quote_signature::message`]; check it with
    /// [`crate::quote_signature::verify`].
    pub verification_signature: String,
}

/// `POST /api/v2/monotonic-counter` (a marble's mesh certificate; feature gate
/// `MonotonicCounter`): raise the caller's counter `name` to `value`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CounterRequest {
    /// Counter name, chosen by the marble (one counter per marble type, UUID and name).
    pub name: String,
    /// The new value; kept only when greater than the current one.
    pub value: u64,
}

/// Response of `POST /api/v2/monotonic-counter`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CounterResponse {
    /// The counter's value before this request (0 for a new counter), as in MarbleRun.
    pub value: u64,
    /// True when the counter now holds the requested value; false when the requested value
    /// was not greater and the counter was left as it was (a Quarry addition).
    #[serde(default)]
    pub updated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_leads_with_the_fields_and_keeps_a_message_that_says_more() {
        let field = FieldMismatch {
            field: "SecurityVersion".into(),
            expected: ">= 3".into(),
            found: "2".into(),
        };
        let policy = FailData {
            code: "policy-mismatch".into(),
            message: "package web: evidence does not match the package: SecurityVersion: expected >= 3, found 2".into(),
            fields: vec![field.clone()],
            pointer: None,
        };
        assert_eq!(
            policy.summary(),
            "refused [policy-mismatch] SecurityVersion: expected >= 3, found 2"
        );
        let binding = FailData {
            code: "key-binding".into(),
            message: "binding mismatch: report_data[0..32] is not SHA-256 of the TLS client key"
                .into(),
            fields: vec![FieldMismatch {
                field: "report_data[0..32]".into(),
                expected: "aa".into(),
                found: "bb".into(),
            }],
            pointer: None,
        };
        assert_eq!(
            binding.summary(),
            "refused [key-binding] report_data[0..32]: expected aa, found bb (binding mismatch: report_data[0..32] is not SHA-256 of the TLS client key)"
        );
        let plain = FailData {
            code: "nonce".into(),
            message: "the nonce has expired".into(),
            fields: vec![],
            pointer: None,
        };
        assert_eq!(plain.summary(), "refused [nonce] the nonce has expired");
    }

    #[test]
    fn activation_response_without_mesh_still_parses_and_mesh_round_trips() {
        let old = r#"{"certificateChain":"c","rootCa":"r","spiffeId":"s","parameters":{},"simulation":false}"#;
        let parsed: ActivateResponse = serde_json::from_str(old).expect("older responses parse");
        assert_eq!(parsed.mesh, None);
        let mesh = MeshConfig {
            trust_domain: "quarry.local".into(),
            inbound: vec![MeshInboundConfig {
                port: 18080,
                forward: "127.0.0.1:8080".parse().expect("addr"),
                allow: MeshAllow::Marbles {
                    types: vec!["app".into()],
                },
            }],
            outbound: vec![MeshOutboundConfig {
                listen: "127.0.0.1:7001".parse().expect("addr"),
                marble: "server".into(),
                address: "server:18080".into(),
            }],
        };
        let text = serde_json::to_string(&mesh).expect("serialise");
        assert!(
            text.contains(r#""allow":{"kind":"marbles","types":["app"]}"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<MeshConfig>(&text).expect("parse"),
            mesh
        );
        let ext = ExternalCert {
            secret: "web".into(),
            certificate_chain: String::new(),
            private_key: b"hunter2".to_vec(),
        };
        assert!(!format!("{ext:?}").contains("hunter2"));
    }
}

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
    /// Payload on success (and details on fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
}

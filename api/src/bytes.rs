//! Serde helpers for byte fields: standard base64 on the wire, as Go's `[]byte`.
use ::base64::Engine as _;
use serde::{Deserialize, Deserializer, Serializer};

/// The base64 alphabet used for every byte field on the wire (standard, padded).
pub const B64: ::base64::engine::GeneralPurpose = ::base64::engine::general_purpose::STANDARD;

/// Encode bytes as standard base64.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decode standard base64.
pub fn unb64(text: &str) -> Result<Vec<u8>, ::base64::DecodeError> {
    B64.decode(text.trim())
}

/// `#[serde(with = "quarry_api::bytes::base64")]` for `Vec<u8>`.
pub mod base64 {
    use super::*;

    /// Serialize as base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b64(bytes))
    }

    /// Deserialize from base64.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        unb64(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "quarry_api::bytes::base64_opt")]` for `Option<Vec<u8>>`.
pub mod base64_opt {
    use super::*;

    /// Serialize as base64 or null.
    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_str(&b64(b)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize from base64 or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| unb64(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// PEM with LF line endings (as Go and OpenSSL write it).
pub fn encode_pem(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

//! The deployment statement (contract §4.5): what the coordinator's evidence binds, and the
//! canonical JSON (RFC 8785) it is hashed in.
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::REPORT_DATA_LEN;

/// Version of the statement format without an EAR key (what `/api/v2/attestation` answers
/// unless `format=ear` is asked for, so verifiers that predate EAR keep working).
pub const STATEMENT_VERSION: u32 = 1;
/// Version of the statement that binds the coordinator's EAR signing key (`ear_key_sha256`).
pub const STATEMENT_VERSION_EAR: u32 = 2;

/// Everything one quote of the coordinator vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// Format version (1).
    pub version: u32,
    /// Hex SHA-256 of the root CA certificate (DER).
    pub root_ca_sha256: String,
    /// Hex SHA-256 of the current mesh CA certificate (DER); null before a manifest is set.
    pub mesh_ca_sha256: Option<String>,
    /// Hex SHA-256 of the manifest bytes as posted; null before a manifest is set.
    pub manifest_sha256: Option<String>,
    /// Number of transparency log entries.
    pub log_size: u64,
    /// Hex RFC 6962 root of the transparency log.
    pub log_root: String,
    /// True when the coordinator runs on a simulated TEE.
    pub simulation: bool,
    /// The relying party's nonce (hex), if it sent one.
    pub nonce: Option<String>,
    /// Version 2 only: hex SHA-256 of the DER SubjectPublicKeyInfo of the key that signs the
    /// coordinator's EAR. Absent (not null) in version 1, so version-1 statements hash as
    /// they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ear_key_sha256: Option<String>,
}

impl Statement {
    /// Checks that the version and the fields it requires agree: version 1 has no EAR key,
    /// version 2 must have one; anything else is unknown.
    pub fn check_version(&self) -> Result<(), String> {
        match (self.version, &self.ear_key_sha256) {
            (STATEMENT_VERSION, None) => Ok(()),
            (STATEMENT_VERSION, Some(_)) => {
                Err("statement version 1 must not carry ear_key_sha256".into())
            }
            (STATEMENT_VERSION_EAR, Some(k)) if k.len() == 64 && hex::decode(k).is_ok() => Ok(()),
            (STATEMENT_VERSION_EAR, _) => Err(
                "statement version 2 needs ear_key_sha256 (64 hex digits, SHA-256 of the EAR key)"
                    .into(),
            ),
            (v, _) => Err(format!(
                "statement version {v} is unknown (this verifier knows 1 and 2; upgrade quarry)"
            )),
        }
    }

    /// RFC 8785 canonical JSON of the statement.
    pub fn canonical(&self) -> Vec<u8> {
        // Statement serialises to a JSON value without floats, so canonicalisation cannot fail.
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        canonical_json(&value).unwrap_or_default().into_bytes()
    }

    /// SHA-256 of the canonical statement.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.canonical()).into()
    }

    /// The report data the coordinator's evidence must carry: digest ‖ 32 zero bytes.
    pub fn report_data(&self) -> [u8; REPORT_DATA_LEN] {
        let mut rd = [0u8; REPORT_DATA_LEN];
        rd[..32].copy_from_slice(&self.digest());
        rd
    }
}

/// RFC 8785 (JCS) serialisation for JSON without floating-point numbers: object members sorted
/// by UTF-16 code units, no whitespace, strings escaped as ECMAScript `JSON.stringify` does.
pub fn canonical_json(value: &serde_json::Value) -> Result<String, String> {
    let mut out = String::new();
    write_canonical(value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &serde_json::Value, out: &mut String) -> Result<(), String> {
    use serde_json::Value;
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_f64() {
                return Err(format!("floating-point number {n} is not allowed here"));
            }
            out.push_str(&n.to_string());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(&map[*k], out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_escapes_like_jcs() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"b":[1,{"z":null,"a":true}],"a":"x\n\u0001\"é€","\u20ac":1,"\r":2}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&v).unwrap(),
            "{\"\\r\":2,\"a\":\"x\\n\\u0001\\\"é€\",\"b\":[1,{\"a\":true,\"z\":null}],\"€\":1}"
        );
        assert!(canonical_json(&serde_json::json!({"f": 1.5})).is_err());
    }

    #[test]
    fn statement_digest_binds_every_field() {
        let s = Statement {
            version: 1,
            root_ca_sha256: "aa".into(),
            mesh_ca_sha256: None,
            manifest_sha256: Some("bb".into()),
            log_size: 2,
            log_root: "cc".into(),
            simulation: true,
            nonce: Some("00".into()),
            ear_key_sha256: None,
        };
        assert_eq!(
            String::from_utf8(s.canonical()).unwrap(),
            r#"{"log_root":"cc","log_size":2,"manifest_sha256":"bb","mesh_ca_sha256":null,"nonce":"00","root_ca_sha256":"aa","simulation":true,"version":1}"#
        );
        let mut t = s.clone();
        t.log_size = 3;
        assert_ne!(s.digest(), t.digest());
        assert_eq!(&s.report_data()[32..], &[0u8; 32]);
    }

    #[test]
    fn version_2_binds_the_ear_key_and_version_1_hashes_as_before() {
        let v1: Statement = serde_json::from_str(
            r#"{"version":1,"root_ca_sha256":"aa","mesh_ca_sha256":null,"manifest_sha256":null,"log_size":0,"log_root":"cc","simulation":false,"nonce":null}"#,
        )
        .unwrap();
        v1.check_version().unwrap();
        assert!(!String::from_utf8(v1.canonical())
            .unwrap()
            .contains("ear_key"));
        let mut v2 = v1.clone();
        v2.version = STATEMENT_VERSION_EAR;
        assert!(v2.check_version().unwrap_err().contains("ear_key_sha256"));
        v2.ear_key_sha256 = Some("ab".repeat(32));
        v2.check_version().unwrap();
        assert!(String::from_utf8(v2.canonical())
            .unwrap()
            .contains(&format!("\"ear_key_sha256\":\"{}\"", "ab".repeat(32))));
        assert_ne!(v1.digest(), v2.digest());
        let mut other_key = v2.clone();
        other_key.ear_key_sha256 = Some("cd".repeat(32));
        assert_ne!(v2.digest(), other_key.digest());
        let mut v1_with_key = v1.clone();
        v1_with_key.ear_key_sha256 = Some("ab".repeat(32));
        assert!(v1_with_key.check_version().is_err());
        let mut v3 = v2.clone();
        v3.version = 3;
        assert!(v3.check_version().unwrap_err().contains("unknown"));
    }
}

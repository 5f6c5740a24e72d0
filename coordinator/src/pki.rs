//! The deployment PKI (contract §3): root CA, mesh CA, the coordinator's TLS certificate,
//! marble leaf certificates and certificate secrets. All keys ECDSA P-256 unless a manifest
//! secret asks otherwise.
use std::time::Duration;

use quarry_api::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// OID of the marble extension (non-critical): DER `SEQUENCE { UTF8String marble-type,
/// OCTET STRING claims-sha256, BOOLEAN simulation }`. Provisional private arc; see
/// docs/SECURITY.md.
pub const MARBLE_EXTENSION_OID: [u64; 9] = [1, 3, 6, 1, 4, 1, 999_999, 1, 1];

/// Errors of certificate issuance.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or key.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Key material could not be produced or parsed.
    #[error("{0}")]
    Key(String),
}

/// SubjectPublicKeyInfo DER of a certificate, or the parser's complaint.
pub fn spki_of(
    cert_der: &[u8],
) -> Result<Vec<u8>, x509_parser::nom::Err<x509_parser::error::X509Error>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)?;
    Ok(cert.public_key().raw.to_vec())
}

/// A CA certificate and its private key.
pub struct CaKey {
    cert_der: Vec<u8>,
    key: KeyPair,
}

/// Serialized form of a [`CaKey`] (stored sealed).
#[derive(Serialize, Deserialize)]
struct StoredCa {
    #[serde(with = "quarry_api::bytes::base64")]
    cert: Vec<u8>,
    #[serde(with = "quarry_api::bytes::base64")]
    key: Vec<u8>,
}

impl CaKey {
    /// A new self-signed root CA.
    pub fn new_root() -> Result<CaKey, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = ca_params("Quarry Root CA", None, 20 * 365);
        p.serial_number = Some(random_serial()?);
        let cert = p.self_signed(&key)?;
        Ok(CaKey {
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// A new mesh CA signed by `root`.
    pub fn new_mesh(root: &CaKey) -> Result<CaKey, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = ca_params("Quarry Mesh CA", Some(0), 10 * 365);
        p.serial_number = Some(random_serial()?);
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &root.issuer()?)?;
        Ok(CaKey {
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem_cert(&self.cert_der)
    }

    /// Sign `message` with the CA key (ECDSA P-256 SHA-256, ASN.1 DER).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &self.key.serialize_der(),
            &rng,
        )
        .map_err(|e| PkiError::Key(format!("CA key: {e}")))?;
        pair.sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| PkiError::Key(format!("signing: {e}")))
    }

    /// Signs a certificate revocation list with this CA (DER).
    pub fn sign_crl(
        &self,
        crl: &rcgen::CertificateRevocationListParams,
    ) -> Result<Vec<u8>, PkiError> {
        Ok(crl.signed_by(&self.issuer()?)?.der().to_vec())
    }

    /// Serialize for the sealed store.
    pub fn to_bytes(&self) -> Secret {
        let stored = StoredCa {
            cert: self.cert_der.clone(),
            key: self.key.serialize_der(),
        };
        Secret::new(serde_json::to_vec(&stored).unwrap_or_default())
    }

    /// Parse the output of [`CaKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<CaKey, PkiError> {
        let stored: StoredCa =
            serde_json::from_slice(bytes).map_err(|e| PkiError::Key(format!("stored CA: {e}")))?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(stored.key.as_slice()),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )?;
        Ok(CaKey {
            cert_der: stored.cert,
            key,
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(
            &CertificateDer::from(self.cert_der.as_slice()),
            &self.key,
        )?)
    }

    /// The coordinator's TLS server certificate: signed by this (root) CA, with the given
    /// DNS names and IP addresses, valid one year. Returns (cert DER, PKCS#8 key).
    pub fn issue_server_cert(&self, names: &[String]) -> Result<(Vec<u8>, Secret), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "Quarry Coordinator");
        p.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(365);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.serial_number = Some(random_serial()?);
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok((cert.der().to_vec(), Secret::new(key.serialize_der())))
    }

    /// A marble leaf certificate for a key the marble holds (contract §3).
    pub fn issue_marble_leaf(&self, leaf: &LeafRequest<'_>) -> Result<Vec<u8>, PkiError> {
        let spki = rcgen::SubjectPublicKeyInfo::from_der(leaf.spki_der)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, leaf.uuid.to_string());
        let mut sans = vec![SanType::URI(leaf.spiffe_id.try_into().map_err(|_| {
            PkiError::Key(format!("invalid SPIFFE ID {}", leaf.spiffe_id))
        })?)];
        for n in leaf.dns_names {
            sans.push(san(n)?);
        }
        p.subject_alt_names = sans;
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now
            + time::Duration::try_from(leaf.valid_for)
                .map_err(|_| PkiError::Key("validity out of range".into()))?;
        // X.509-SVID: a leaf says cA=false explicitly and signs only (P-256: no key
        // encipherment, and TLS 1.3's ephemeral key exchange needs no keyAgreement).
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.serial_number = Some(random_serial()?);
        p.use_authority_key_identifier_extension = true;
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            &MARBLE_EXTENSION_OID,
            marble_extension_der(leaf.marble_type, leaf.claims_digest, leaf.simulation),
        )];
        let cert = p.signed_by(&spki, &self.issuer()?)?;
        Ok(cert.der().to_vec())
    }

    /// Issue a certificate for a certificate secret with a fresh key of `kind`/`size`.
    pub fn issue_secret_cert(
        &self,
        kind: CertKeyKind,
        size: u32,
        template: Option<&quarry_api::manifest::CertTemplate>,
        valid_for_days: Option<u32>,
    ) -> Result<CertSecret, PkiError> {
        let (pkcs8, spki) = generate_key(kind, size)?;
        let mut p = CertificateParams::default();
        let dns: Vec<String> = template
            .map(|t| t.dns_names.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| vec!["localhost".into()]);
        let ips: Vec<std::net::IpAddr> = template
            .map(|t| t.ip_addresses.clone())
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| {
                vec![
                    std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::Ipv6Addr::LOCALHOST.into(),
                ]
            });
        let cn = template
            .and_then(|t| t.common_name.clone())
            .unwrap_or_else(|| {
                if dns.len() == 1 {
                    dns[0].clone()
                } else {
                    "Quarry Generated Certificate".into()
                }
            });
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(t) = template {
            for o in &t.organization {
                p.distinguished_name
                    .push(DnType::OrganizationName, o.clone());
            }
            for o in &t.organizational_unit {
                p.distinguished_name
                    .push(DnType::OrganizationalUnitName, o.clone());
            }
            for c in &t.country {
                p.distinguished_name.push(DnType::CountryName, c.clone());
            }
            for l in &t.locality {
                p.distinguished_name.push(DnType::LocalityName, l.clone());
            }
            for s in &t.province {
                p.distinguished_name
                    .push(DnType::StateOrProvinceName, s.clone());
            }
        }
        let mut sans = Vec::new();
        for d in &dns {
            sans.push(SanType::DnsName(d.clone().try_into().map_err(|_| {
                PkiError::Key(format!("invalid DNS name {d:?} in certificate template"))
            })?));
        }
        for ip in ips {
            sans.push(SanType::IpAddress(ip));
        }
        if let Some(t) = template {
            for e in &t.email_addresses {
                sans.push(SanType::Rfc822Name(e.clone().try_into().map_err(|_| {
                    PkiError::Key(format!("invalid e-mail {e:?} in certificate template"))
                })?));
            }
            for u in &t.uris {
                sans.push(SanType::URI(u.clone().try_into().map_err(|_| {
                    PkiError::Key(format!("invalid URI {u:?} in certificate template"))
                })?));
            }
        }
        p.subject_alt_names = sans;
        let now = OffsetDateTime::now_utc();
        p.not_before = now;
        p.not_after = match template.and_then(|t| t.not_after) {
            Some(na) => na,
            None => now + time::Duration::days(i64::from(valid_for_days.unwrap_or(365))),
        };
        p.key_usages = key_usages(template.and_then(|t| t.key_usage).unwrap_or(1 | 32));
        let eku = template
            .map(|t| t.ext_key_usage.clone())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| vec![1, 2]);
        p.extended_key_usages = eku.into_iter().filter_map(ext_key_usage).collect();
        if template.is_some_and(|t| t.is_ca) {
            p.is_ca = IsCa::Ca(match template.and_then(|t| t.max_path_len) {
                Some(n) if n >= 0 => BasicConstraints::Constrained(n.min(255) as u8),
                _ => BasicConstraints::Unconstrained,
            });
        }
        p.serial_number = Some(random_serial()?);
        p.use_authority_key_identifier_extension = true;
        let spki_key = rcgen::SubjectPublicKeyInfo::from_der(&spki)?;
        let cert = p.signed_by(&spki_key, &self.issuer()?)?;
        Ok(CertSecret {
            cert_der: cert.der().to_vec(),
            public: spki,
            private: pkcs8,
        })
    }
}

/// What a marble leaf certificate contains.
pub struct LeafRequest<'a> {
    /// SubjectPublicKeyInfo of the marble's key (from its TLS client certificate).
    pub spki_der: &'a [u8],
    /// Marble UUID (CN).
    pub uuid: &'a uuid::Uuid,
    /// SPIFFE ID (the single URI SAN).
    pub spiffe_id: &'a str,
    /// DNS names / IPs allowed by the manifest.
    pub dns_names: &'a [String],
    /// Validity.
    pub valid_for: Duration,
    /// Marble type (extension).
    pub marble_type: &'a str,
    /// Digest of the accepted claims (extension).
    pub claims_digest: &'a [u8; 32],
    /// Whether the evidence was simulated (extension).
    pub simulation: bool,
}

/// Key algorithms of certificate secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKeyKind {
    /// `cert-ecdsa`.
    Ecdsa,
    /// `cert-rsa`.
    Rsa,
    /// `cert-ed25519`.
    Ed25519,
}

/// A generated certificate secret.
pub struct CertSecret {
    /// Certificate DER.
    pub cert_der: Vec<u8>,
    /// SubjectPublicKeyInfo DER.
    pub public: Vec<u8>,
    /// PKCS#8 DER.
    pub private: Secret,
}

impl CertKeyKind {
    /// The manifest secret type of this key algorithm.
    pub fn secret_kind(self) -> quarry_api::manifest::SecretKind {
        use quarry_api::manifest::SecretKind;
        match self {
            CertKeyKind::Ecdsa => SecretKind::CertEcdsa,
            CertKeyKind::Rsa => SecretKind::CertRsa,
            CertKeyKind::Ed25519 => SecretKind::CertEd25519,
        }
    }
}

fn generate_key(kind: CertKeyKind, size: u32) -> Result<(Secret, Vec<u8>), PkiError> {
    // The manifest's rule (quarry-api validation already refused any other size).
    quarry_api::manifest::check_cert_key_size(kind.secret_kind(), size)
        .map_err(|e| PkiError::Key(e.into()))?;
    match kind {
        CertKeyKind::Ecdsa => {
            let alg = if size == 384 {
                &rcgen::PKCS_ECDSA_P384_SHA384
            } else {
                &rcgen::PKCS_ECDSA_P256_SHA256
            };
            let k = KeyPair::generate_for(alg)?;
            Ok((
                Secret::new(k.serialize_der()),
                rcgen::PublicKeyData::subject_public_key_info(&k),
            ))
        }
        CertKeyKind::Ed25519 => {
            let k = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
            Ok((
                Secret::new(k.serialize_der()),
                rcgen::PublicKeyData::subject_public_key_info(&k),
            ))
        }
        CertKeyKind::Rsa => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
            let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, size as usize)
                .map_err(|e| PkiError::Key(format!("RSA key generation: {e}")))?;
            let pkcs8 = key
                .to_pkcs8_der()
                .map_err(|e| PkiError::Key(format!("RSA PKCS#8: {e}")))?;
            let spki = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| PkiError::Key(format!("RSA SPKI: {e}")))?;
            Ok((
                Secret::new(pkcs8.as_bytes().to_vec()),
                spki.as_bytes().to_vec(),
            ))
        }
    }
}

fn ca_params(cn: &str, path_len: Option<u8>, days: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "Quarry");
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
    p
}

fn san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    Ok(SanType::DnsName(name.to_string().try_into().map_err(
        |_| PkiError::Key(format!("invalid DNS name {name:?}")),
    )?))
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| PkiError::Key("system RNG failed".into()))?;
    b[0] &= 0x7f; // positive INTEGER
    b[0] |= 0x01; // and never a leading zero byte
    Ok(SerialNumber::from_slice(&b))
}

fn key_usages(bits: u32) -> Vec<KeyUsagePurpose> {
    let table = [
        (1, KeyUsagePurpose::DigitalSignature),
        (2, KeyUsagePurpose::ContentCommitment),
        (4, KeyUsagePurpose::KeyEncipherment),
        (8, KeyUsagePurpose::DataEncipherment),
        (16, KeyUsagePurpose::KeyAgreement),
        (32, KeyUsagePurpose::KeyCertSign),
        (64, KeyUsagePurpose::CrlSign),
        (128, KeyUsagePurpose::EncipherOnly),
        (256, KeyUsagePurpose::DecipherOnly),
    ];
    table
        .into_iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, k)| k)
        .collect()
}

fn ext_key_usage(go: u32) -> Option<ExtendedKeyUsagePurpose> {
    Some(match go {
        0 => ExtendedKeyUsagePurpose::Any,
        1 => ExtendedKeyUsagePurpose::ServerAuth,
        2 => ExtendedKeyUsagePurpose::ClientAuth,
        3 => ExtendedKeyUsagePurpose::CodeSigning,
        4 => ExtendedKeyUsagePurpose::EmailProtection,
        8 => ExtendedKeyUsagePurpose::TimeStamping,
        9 => ExtendedKeyUsagePurpose::OcspSigning,
        _ => return None,
    })
}

/// PEM of one certificate.
pub fn pem_cert(der: &[u8]) -> String {
    quarry_api::bytes::encode_pem("CERTIFICATE", der)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// DER of the marble extension value.
pub fn marble_extension_der(
    marble_type: &str,
    claims_digest: &[u8; 32],
    simulation: bool,
) -> Vec<u8> {
    let mut body = der_tlv(0x0c, marble_type.as_bytes());
    body.extend(der_tlv(0x04, claims_digest));
    body.extend(der_tlv(0x01, &[if simulation { 0xff } else { 0x00 }]));
    der_tlv(0x30, &body)
}

#[cfg(test)]
mod tests;

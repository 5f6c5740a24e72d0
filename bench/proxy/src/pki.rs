//! Certificates for the peer proxies: one P-256 CA, a server leaf and a client leaf (both
//! ECDSA P-256, SAN `DNS:<name>.bench.internal` and `IP:127.0.0.1`), written as PEM files.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Host name in the server certificate, checked by the client side of every peer.
pub const SERVER_NAME: &str = "server.bench.internal";

/// PEM files of one leaf.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Certificate.
    pub cert: PathBuf,
    /// PKCS#8 private key.
    pub key: PathBuf,
    /// Certificate followed by the key (HAProxy's `crt`).
    pub combined: PathBuf,
}

/// The generated PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate (the only trust anchor).
    pub ca: PathBuf,
    /// Server leaf (serverAuth).
    pub server: Leaf,
    /// Client leaf (clientAuth).
    pub client: Leaf,
}

/// Generates the CA and both leaves into `dir`.
pub fn generate(dir: &Path) -> anyhow::Result<Pki> {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "proxy bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, ca_cert.pem()).context("writing ca.crt")?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| -> anyhow::Result<Leaf> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![format!("{name}.bench.internal")])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name}.bench.internal"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer)?;
        let paths = Leaf {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            combined: dir.join(format!("{name}.pem")),
        };
        std::fs::write(&paths.cert, cert.pem())?;
        std::fs::write(&paths.key, key.serialize_pem())?;
        std::fs::write(
            &paths.combined,
            format!("{}{}", cert.pem(), key.serialize_pem()),
        )?;
        Ok(paths)
    };
    Ok(Pki {
        ca,
        server: leaf("server", ExtendedKeyUsagePurpose::ServerAuth)?,
        client: leaf("client", ExtendedKeyUsagePurpose::ClientAuth)?,
    })
}

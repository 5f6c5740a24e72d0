use super::*;
use x509_parser::prelude::*;

#[test]
fn mesh_ca_chains_to_root_and_round_trips() {
    let root = CaKey::new_root().unwrap();
    let mesh = CaKey::new_mesh(&root).unwrap();
    let (_, r) = parse_x509_certificate(root.cert_der()).unwrap();
    let (_, m) = parse_x509_certificate(mesh.cert_der()).unwrap();
    assert!(r.is_ca() && m.is_ca());
    m.verify_signature(Some(r.public_key())).unwrap();
    let again = CaKey::from_bytes(root.to_bytes().expose()).unwrap();
    assert_eq!(again.cert_der(), root.cert_der());
}

#[test]
fn marble_leaf_carries_the_spiffe_id_the_key_and_the_extension() {
    let root = CaKey::new_root().unwrap();
    let mesh = CaKey::new_mesh(&root).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let uuid = uuid::Uuid::new_v4();
    let id = quarry_api::spiffe::marble_id("quarry.local", "web", &uuid);
    let der = mesh
        .issue_marble_leaf(&LeafRequest {
            spki_der: &spki,
            uuid: &uuid,
            spiffe_id: &id,
            dns_names: &["web.local".into(), "127.0.0.1".into()],
            valid_for: Duration::from_secs(3600),
            marble_type: "web",
            claims_digest: &[3; 32],
            simulation: true,
        })
        .unwrap();
    let (_, c) = parse_x509_certificate(&der).unwrap();
    let (_, m) = parse_x509_certificate(mesh.cert_der()).unwrap();
    c.verify_signature(Some(m.public_key())).unwrap();
    assert_eq!(c.public_key().raw, spki.as_slice());
    let sans = c.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<_> = sans
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec![id]);
    let life = c.validity().not_after.timestamp() - c.validity().not_before.timestamp();
    assert!((3600..=3600 + 301).contains(&life), "{life}");
    let ext = c
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.4.1.999999.1.1")
        .unwrap();
    assert!(!ext.critical);
    assert_eq!(
        ext.value,
        marble_extension_der("web", &[3; 32], true).as_slice()
    );
}

#[test]
fn certificate_secrets_of_every_kind() {
    let root = CaKey::new_root().unwrap();
    let mesh = CaKey::new_mesh(&root).unwrap();
    for (kind, size) in [
        (CertKeyKind::Ecdsa, 256),
        (CertKeyKind::Ecdsa, 384),
        (CertKeyKind::Ed25519, 0),
        (CertKeyKind::Rsa, 2048),
    ] {
        let s = mesh.issue_secret_cert(kind, size, None, Some(7)).unwrap();
        let (_, c) = parse_x509_certificate(&s.cert_der).unwrap();
        assert_eq!(c.public_key().raw, s.public.as_slice());
        let life = c.validity().not_after.timestamp() - c.validity().not_before.timestamp();
        assert_eq!(life, 7 * 86400);
    }
    assert!(mesh
        .issue_secret_cert(CertKeyKind::Ecdsa, 521, None, None)
        .is_err());
    assert!(mesh
        .issue_secret_cert(CertKeyKind::Ed25519, 256, None, None)
        .is_err());
}

//! X.509-SVID conformance of every certificate the coordinator issues (issue 19, item 1),
//! checked with code that is not Quarry's: x509-parser for the structure and rustls-webpki's
//! path validation, as a TLS client validating a server and as a server validating a client.
//! The rules: leaves carry `basicConstraints` with `cA = false`, `keyUsage` digitalSignature
//! only (keyEncipherment would be allowed for RSA keys; marble keys are P-256), never
//! keyCertSign or cRLSign, and exactly one `spiffe://` URI SAN that follows the SPIFFE ID
//! rules; CA certificates carry critical `basicConstraints` with `cA = true` and keyCertSign.
use std::time::Duration;

use quarry_coordinator::pki::{CaKey, LeafRequest};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::*;

/// A marble key, its SPKI, and a leaf the mesh CA issued for it.
struct Marble {
    key: rcgen::KeyPair,
    leaf: Vec<u8>,
}

fn issue(mesh: &CaKey, dns: &[String]) -> Marble {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let uuid = uuid::Uuid::new_v4();
    let id = quarry_api::spiffe::marble_id("quarry.local", "web", &uuid);
    let leaf = mesh
        .issue_marble_leaf(&LeafRequest {
            spki_der: &spki,
            uuid: &uuid,
            spiffe_id: &id,
            dns_names: dns,
            valid_for: Duration::from_secs(3600),
            marble_type: "web",
            claims_digest: &[7; 32],
            simulation: true,
        })
        .unwrap();
    Marble { key, leaf }
}

/// The SPIFFE ID rules for an X.509-SVID's URI SAN (SPIFFE ID standard §2): scheme
/// `spiffe`, a lowercase trust domain of letters, digits, `.`, `-`, `_`, a non-empty path
/// whose segments are non-empty, not `.` or `..`, of letters, digits, `.`, `-`, `_`; no
/// query, fragment, port or user info; at most 2048 bytes.
fn check_spiffe_id(id: &str) -> Result<(), String> {
    if id.len() > 2048 {
        return Err("longer than 2048 bytes".into());
    }
    let rest = id.strip_prefix("spiffe://").ok_or("scheme is not spiffe")?;
    let (domain, path) = rest.split_once('/').ok_or("no path")?;
    let domain_ok = !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c));
    if !domain_ok {
        return Err(format!("trust domain {domain:?}"));
    }
    for segment in path.split('/') {
        let ok = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
        if !ok {
            return Err(format!("path segment {segment:?}"));
        }
    }
    Ok(())
}

fn check_leaf_structure(der: &[u8]) {
    let (_, c) = parse_x509_certificate(der).unwrap();
    let bc = c
        .basic_constraints()
        .unwrap()
        .expect("a leaf SVID carries basicConstraints");
    assert!(!bc.value.ca, "leaf SVIDs have cA = false");
    let ku = c.key_usage().unwrap().expect("keyUsage present").value;
    assert!(ku.digital_signature());
    assert!(
        !ku.key_cert_sign() && !ku.crl_sign(),
        "a leaf signs no certificates or CRLs"
    );
    assert!(!ku.key_encipherment(), "P-256 keys do not encipher");
    let sans = c.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<&str> = sans
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris.len(), 1, "exactly one URI SAN: {uris:?}");
    check_spiffe_id(uris[0]).unwrap_or_else(|e| panic!("{}: {e}", uris[0]));
}

fn check_ca_structure(der: &[u8]) {
    let (_, c) = parse_x509_certificate(der).unwrap();
    let bc = c
        .basic_constraints()
        .unwrap()
        .expect("a CA carries basicConstraints");
    assert!(bc.critical, "CA basicConstraints are critical");
    assert!(bc.value.ca);
    let ku = c.key_usage().unwrap().expect("keyUsage present").value;
    assert!(ku.key_cert_sign());
}

fn now() -> UnixTime {
    UnixTime::now()
}

/// webpki's verdict on `leaf` (with the mesh CA as intermediate) under the root.
fn webpki_verify(
    root: &CaKey,
    intermediates: &[CertificateDer<'static>],
    leaf: &[u8],
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let root_der = CertificateDer::from(root.cert_der().to_vec());
    let anchors = [webpki::anchor_from_trusted_cert(&root_der).unwrap()];
    let leaf = CertificateDer::from(leaf.to_vec());
    let ee = webpki::EndEntityCert::try_from(&leaf)?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

#[test]
fn marble_leaves_and_renewed_leaves_are_x509_svids_that_webpki_accepts_both_ways() {
    let root = CaKey::new_root().unwrap();
    let mesh = CaKey::new_mesh(&root).unwrap();
    check_ca_structure(root.cert_der());
    check_ca_structure(mesh.cert_der());
    let chain = [CertificateDer::from(mesh.cert_der().to_vec())];
    // The activation leaf and a renewal (the same issuance path, a new key and serial).
    for marble in [
        issue(&mesh, &["web.local".into()]),
        issue(&mesh, &["web.local".into()]),
    ] {
        check_leaf_structure(&marble.leaf);
        webpki_verify(&root, &chain, &marble.leaf, webpki::KeyUsage::server_auth())
            .expect("valid as a TLS server certificate");
        webpki_verify(&root, &chain, &marble.leaf, webpki::KeyUsage::client_auth())
            .expect("valid as a TLS client certificate");
        let leaf = CertificateDer::from(marble.leaf.clone());
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        ee.verify_is_valid_for_subject_name(&ServerName::try_from("web.local").unwrap())
            .expect("the requested DNS name");
        assert!(ee
            .verify_is_valid_for_subject_name(&ServerName::try_from("db.local").unwrap())
            .is_err());
    }
}

#[test]
fn the_coordinator_tls_certificate_is_a_leaf_too() {
    let root = CaKey::new_root().unwrap();
    let (der, _key) = root
        .issue_server_cert(&["coordinator.local".into(), "127.0.0.1".into()])
        .unwrap();
    let (_, c) = parse_x509_certificate(&der).unwrap();
    let bc = c.basic_constraints().unwrap().expect("basicConstraints");
    assert!(!bc.value.ca);
    let ku = c.key_usage().unwrap().expect("keyUsage").value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
    webpki_verify(&root, &[], &der, webpki::KeyUsage::server_auth())
        .expect("valid as a TLS server certificate");
}

#[test]
fn a_marble_leaf_cannot_act_as_a_ca() {
    // A marble holds its leaf's key: a certificate it signs must not chain to the root.
    let root = CaKey::new_root().unwrap();
    let mesh = CaKey::new_mesh(&root).unwrap();
    let marble = issue(&mesh, &[]);
    let issuer =
        rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(marble.leaf.clone()), &marble.key)
            .unwrap();
    let victim_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["db.local".to_string()]).unwrap();
    p.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://quarry.local/marble/db/x".try_into().unwrap(),
    ));
    let forged = p.signed_by(&victim_key, &issuer).unwrap();
    let chain = [
        CertificateDer::from(marble.leaf.clone()),
        CertificateDer::from(mesh.cert_der().to_vec()),
    ];
    let err = webpki_verify(&root, &chain, forged.der(), webpki::KeyUsage::client_auth())
        .expect_err("a leaf with cA = false issues nothing");
    assert!(
        matches!(
            err,
            webpki::Error::CaUsedAsEndEntity
                | webpki::Error::EndEntityUsedAsCa
                | webpki::Error::UnknownIssuer
        ),
        "{err:?}"
    );
}

#[test]
fn the_spiffe_id_checker_refuses_what_the_rules_refuse() {
    assert!(check_spiffe_id("spiffe://quarry.local/marble/web/1b4e28ba").is_ok());
    for bad in [
        "spiffe://Quarry.local/marble/web",
        "spiffe://quarry.local/",
        "spiffe://quarry.local",
        "spiffe://quarry.local/marble//web",
        "spiffe://quarry.local/marble/../web",
        "spiffe://quarry.local/marble/web?x=1",
        "https://quarry.local/marble/web",
    ] {
        assert!(check_spiffe_id(bad).is_err(), "{bad}");
    }
}

use super::*;

fn identity() -> SimIdentity {
    SimIdentity {
        unique_id: [7; 32],
        signer_id: [0; 32],
        product_id: 3,
        security_version: 2,
        debug: false,
    }
}

fn setup() -> (tempfile::TempDir, SimProvider, SimVerifier) {
    let dir = tempfile::tempdir().unwrap();
    SimPlatform::create(dir.path()).unwrap();
    let provider = SimProvider::new(SimPlatform::load(dir.path()).unwrap(), identity()).unwrap();
    let verifier = SimVerifier::from_ca_file(&dir.path().join(CA_FILE)).unwrap();
    (dir, provider, verifier)
}

#[test]
fn evidence_round_trips_into_claims() {
    let (_d, provider, verifier) = setup();
    let rd = [5u8; 64];
    let ev = provider.evidence(&rd).unwrap();
    let claims = verifier.verify(&ev, SystemTime::now()).unwrap();
    assert_eq!(claims.tee, TeeKind::Simulated);
    assert!(claims.simulation);
    assert_eq!(claims.report_data, rd);
    assert_eq!(claims.identity.unique_id, Some(vec![7; 32]));
    assert_eq!(claims.identity.product_id, Some(3));
    assert_eq!(claims.identity.security_version, Some(2));
    assert!(!claims.debug);
}

#[test]
fn evidence_from_another_platform_is_refused() {
    let (_d, provider, _) = setup();
    let other = tempfile::tempdir().unwrap();
    SimPlatform::create(other.path()).unwrap();
    let verifier = SimVerifier::from_ca_file(&other.path().join(CA_FILE)).unwrap();
    let ev = provider.evidence(&[0; 64]).unwrap();
    let err = verifier.verify(&ev, SystemTime::now()).unwrap_err();
    assert!(matches!(err, VerifyError::UntrustedPlatform(_)), "{err}");
}

#[test]
fn a_body_altered_after_signing_is_refused() {
    let (_d, provider, verifier) = setup();
    let ev = provider.evidence(&[0; 64]).unwrap();
    let mut env: Envelope = serde_json::from_slice(&ev.quote).unwrap();
    let body = quarry_api::bytes::unb64(&env.body).unwrap();
    let tampered = String::from_utf8(body)
        .unwrap()
        .replace("\"debug\":false", "\"debug\":true");
    env.body = quarry_api::bytes::b64(tampered.as_bytes());
    let bad = Evidence {
        quote: serde_json::to_vec(&env).unwrap(),
        ..ev
    };
    let err = verifier.verify(&bad, SystemTime::now()).unwrap_err();
    assert!(matches!(err, VerifyError::BadSignature(_)), "{err}");
}

#[test]
fn garbage_and_wrong_types_are_refused_without_panicking() {
    let (_d, _, verifier) = setup();
    for quote in [
        &b""[..],
        b"{",
        b"null",
        b"{\"version\":2,\"body\":\"\",\"signature\":\"\"}",
        b"{\"version\":1,\"body\":\"!!\",\"signature\":\"\"}",
    ] {
        let ev = Evidence {
            kind: EvidenceType::Simulated,
            quote: quote.to_vec(),
            collateral: None,
        };
        assert!(matches!(
            verifier.verify(&ev, SystemTime::now()),
            Err(VerifyError::Malformed(_))
        ));
    }
    let ev = Evidence {
        kind: EvidenceType::SgxDcap,
        quote: vec![],
        collateral: None,
    };
    assert!(matches!(
        verifier.verify(&ev, SystemTime::now()),
        Err(VerifyError::Unsupported(_))
    ));
}

#[test]
fn time_is_an_input_platform_ca_expiry_and_future_evidence() {
    let (_d, provider, verifier) = setup();
    let ev = provider.evidence(&[0; 64]).unwrap();
    let far_future = SystemTime::now() + Duration::from_secs(20 * 365 * 86400);
    match verifier.verify(&ev, far_future) {
        Err(VerifyError::Expired {
            what,
            now,
            not_after: Some(end),
            ..
        }) => {
            assert_eq!(what, "simulated platform CA");
            assert!(now >= end, "the verification time is past the window");
        }
        other => panic!("expected the platform CA to be expired: {other:?}"),
    }
    let later = SystemTime::now() + Duration::from_secs(3600);
    let ev = provider.evidence_at(&[0; 64], later).unwrap();
    match verifier.verify(&ev, SystemTime::now()) {
        Err(VerifyError::Expired {
            now,
            not_before: Some(start),
            ..
        }) => assert!(now < start, "evidence from the future is not valid yet"),
        other => panic!("expected future evidence to be refused: {other:?}"),
    }
}

#[test]
fn platform_files_are_not_overwritten_and_key_is_private() {
    let dir = tempfile::tempdir().unwrap();
    SimPlatform::create(dir.path()).unwrap();
    assert!(SimPlatform::create(dir.path()).is_err());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn seal_keys_depend_on_platform_and_measurement() {
    let (d, provider, _) = setup();
    let p = SimPlatform::load(d.path()).unwrap();
    let a = p.derive_seal_key(&[1; 32]).unwrap();
    assert_eq!(a, provider.platform().derive_seal_key(&[1; 32]).unwrap());
    assert_ne!(a, p.derive_seal_key(&[2; 32]).unwrap());
    let other = tempfile::tempdir().unwrap();
    let q = SimPlatform::create(other.path()).unwrap();
    assert_ne!(a, q.derive_seal_key(&[1; 32]).unwrap());
    let ca_only = SimPlatform::load_ca(&d.path().join(CA_FILE)).unwrap();
    assert!(ca_only.derive_seal_key(&[1; 32]).is_err());
}

#[test]
fn simulated_tcb_info_decides_the_status_from_the_platform_svn_and_is_reread() {
    let (dir, _, _) = setup();
    std::fs::write(dir.path().join(TCB_SVN_FILE), "3\n").unwrap();
    let provider = SimProvider::new(SimPlatform::load(dir.path()).unwrap(), identity()).unwrap();
    assert_eq!(provider.platform().tcb_svn(), Some(3));
    let tcb = dir.path().join(SIM_TCB_FILE);
    let verifier = SimVerifier::from_ca_file(&dir.path().join(CA_FILE))
        .unwrap()
        .with_tcb_file(tcb.clone());
    let ev = provider.evidence(&[1; 64]).unwrap();

    // No file: UpToDate as without a TCB notion, and no standing.
    let c = verifier.verify(&ev, SystemTime::now()).unwrap();
    assert_eq!((c.tcb_status, c.tcb_standing), (TcbStatus::UpToDate, None));

    std::fs::write(&tcb, r#"{"minimumSvn": 3, "advisories": ["SIM-SA-0001"]}"#).unwrap();
    let c = verifier.verify(&ev, SystemTime::now()).unwrap();
    assert_eq!(c.tcb_status, TcbStatus::UpToDate);
    assert!(c.advisory_ids.is_empty());
    assert!(c.tcb_standing.expect("standing").to_raise.is_empty());

    std::fs::write(&tcb, r#"{"minimumSvn": 4, "advisories": ["SIM-SA-0001"]}"#).unwrap();
    let c = verifier.verify(&ev, SystemTime::now()).unwrap();
    assert_eq!(c.tcb_status, TcbStatus::OutOfDate);
    assert_eq!(c.advisory_ids, ["SIM-SA-0001"]);
    assert!(c.simulation);
    let gap = &c.tcb_standing.expect("standing").to_raise;
    assert_eq!(gap.len(), 1);
    assert_eq!(
        (gap[0].component.as_str(), gap[0].found, gap[0].required),
        (SIM_TCB_COMPONENT, 3, 4)
    );
    assert!(gap[0].label.as_deref().unwrap().contains("SIMULATION"));

    std::fs::write(&tcb, r#"{"minimumSvn": "high"}"#).unwrap();
    let e = verifier.verify(&ev, SystemTime::now()).unwrap_err();
    assert!(
        matches!(&e, VerifyError::Collateral(m) if m.contains(SIM_TCB_FILE)),
        "{e}"
    );
    std::fs::write(dir.path().join(TCB_SVN_FILE), "many").unwrap();
    let e = SimPlatform::load(dir.path()).unwrap_err();
    assert!(e.to_string().contains(TCB_SVN_FILE), "{e}");
}

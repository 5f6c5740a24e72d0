//! The mapping of Quarry's facts to AR4SI claims and tiers, and the JWS framing.
use super::*;
use crate::claims::Identity;

fn claims(tee: TeeKind, tcb: TcbStatus, debug: bool) -> Claims {
    Claims {
        tee,
        identity: Identity {
            unique_id: Some(vec![0xab; 32]),
            ..Identity::default()
        },
        debug,
        report_data: [0; 64],
        tcb_status: tcb,
        advisory_ids: vec!["INTEL-SA-00615".into()],
        platform_id: Some("00906ed50000".into()),
        simulation: tee == TeeKind::Simulated,
        reported_tcb: None,
        tcb_standing: None,
    }
}

fn statement(nonce: Option<&[u8]>) -> Statement {
    Statement {
        version: crate::statement::STATEMENT_VERSION_EAR,
        root_ca_sha256: "aa".repeat(32),
        mesh_ca_sha256: Some("bb".repeat(32)),
        manifest_sha256: Some("cc".repeat(32)),
        log_size: 1,
        log_root: "dd".repeat(32),
        simulation: false,
        nonce: nonce.map(hex::encode),
        ear_key_sha256: Some("ee".repeat(32)),
    }
}

fn manifest() -> Manifest {
    let bytes = br#"{
        "Packages": {
            "hw": {"TEE": "sgx", "SignerID": "1111111111111111111111111111111111111111111111111111111111111111", "ProductID": 3, "SecurityVersion": 2},
            "sim": {"TEE": "simulated", "UniqueID": "2222222222222222222222222222222222222222222222222222222222222222"},
            "dbg": {"TEE": "sgx", "UniqueID": "3333333333333333333333333333333333333333333333333333333333333333", "Debug": true}
        },
        "Marbles": {
            "web": {"Package": "hw"},
            "db": {"Package": "hw"},
            "dev": {"Package": "sim"},
            "probe": {"Package": "dbg"}
        }
    }"#;
    crate::manifest::parse(bytes).unwrap().manifest
}

fn status(v: &Value) -> &str {
    v["ear_status"].as_str().unwrap()
}

#[test]
fn an_up_to_date_production_sgx_coordinator_is_affirming_with_the_facts_it_has() {
    let (tier, a) = coordinator_appraisal(&claims(TeeKind::Sgx, TcbStatus::UpToDate, false));
    assert_eq!(tier, Tier::Affirming);
    assert_eq!(status(&a), "affirming");
    let v = &a["ear_trustworthiness_vector"];
    assert_eq!(v["hardware"], 2);
    assert_eq!(v["runtime-opaque"], 2);
    assert_eq!(v["storage-opaque"], 2);
    // Quarry has no fact for these: left out, not guessed.
    for absent in [
        "instance-identity",
        "configuration",
        "executables",
        "file-system",
        "sourced-data",
    ] {
        assert!(v.get(absent).is_none(), "{absent}: {v}");
    }
    assert_eq!(
        a["ear_attester_claims"]["quarry_unique_id"],
        "ab".repeat(32)
    );
    assert_eq!(a["ear_attester_claims"]["quarry_tcb_status"], "UpToDate");
    assert_eq!(
        a["ear_verifier_claims"]["quarry_tcb_status_accepted_by_default"],
        true
    );
    assert!(a["ear_verifier_claims"].get("quarry_simulation").is_none());
}

#[test]
fn tcb_status_maps_to_hardware_and_configuration_and_the_default_policy_decides_contraindicated() {
    let cases = [
        (TcbStatus::SWHardeningNeeded, 32, None, Tier::Warning),
        (
            TcbStatus::ConfigurationNeeded,
            32,
            Some(32),
            Tier::Contraindicated,
        ),
        (
            TcbStatus::ConfigurationAndSWHardeningNeeded,
            32,
            Some(32),
            Tier::Contraindicated,
        ),
        (TcbStatus::OutOfDate, 32, None, Tier::Contraindicated),
        (
            TcbStatus::OutOfDateConfigurationNeeded,
            32,
            Some(32),
            Tier::Contraindicated,
        ),
        (TcbStatus::Revoked, 96, None, Tier::Contraindicated),
    ];
    for (tcb, hardware, configuration, tier) in cases {
        let (t, a) = coordinator_appraisal(&claims(TeeKind::Tdx, tcb, false));
        let v = &a["ear_trustworthiness_vector"];
        assert_eq!(v["hardware"], hardware, "{tcb:?}");
        assert_eq!(
            v.get("configuration").and_then(Value::as_i64),
            configuration,
            "{tcb:?}"
        );
        assert_eq!(t, tier, "{tcb:?}");
        assert_eq!(status(&a), tier.as_str(), "{tcb:?}");
        // TDX: Quarry does not bind its state key to hardware keys, so no storage claim.
        assert!(v.get("storage-opaque").is_none());
    }
}

#[test]
fn a_debug_coordinator_has_visible_memory_and_is_contraindicated() {
    let (tier, a) = coordinator_appraisal(&claims(TeeKind::Sgx, TcbStatus::UpToDate, true));
    assert_eq!(a["ear_trustworthiness_vector"]["runtime-opaque"], 96);
    assert_eq!(tier, Tier::Contraindicated);
}

#[test]
fn simulation_is_never_affirming_and_says_so() {
    let (tier, a) = coordinator_appraisal(&claims(TeeKind::Simulated, TcbStatus::UpToDate, false));
    assert_eq!(tier, Tier::Contraindicated);
    assert_eq!(a["ear_trustworthiness_vector"]["hardware"], 97);
    assert_eq!(a["ear_trustworthiness_vector"]["runtime-opaque"], 96);
    assert_eq!(
        a["ear_verifier_claims"]["quarry_simulation"],
        SIMULATION_WARNING
    );
    assert_eq!(a["ear_attester_claims"]["quarry_simulation"], true);
    // A simulated claim set that somehow says sgx is still judged by its simulation flag.
    let mut odd = claims(TeeKind::Sgx, TcbStatus::UpToDate, false);
    odd.simulation = true;
    assert_eq!(coordinator_appraisal(&odd).0, Tier::Contraindicated);
}

#[test]
fn the_claims_set_has_one_submod_per_marble_type_with_its_enforced_package() {
    let m = manifest();
    let st = statement(Some(&[9; 32]));
    let c = claims(TeeKind::Sgx, TcbStatus::UpToDate, false);
    let set = claims_set(&EarInput {
        claims: &c,
        statement: &st,
        manifest: Some(&m),
        build: "quarry-coordinator 0.1.0",
        iat: 1_800_000_000,
    });
    assert_eq!(set["eat_profile"], EAR_PROFILE);
    assert_eq!(set["iat"], 1_800_000_000u64);
    assert_eq!(set["ear_verifier_id"]["developer"], "Quarry");
    assert_eq!(set[STATEMENT_CLAIM], hex::encode(st.digest()));
    assert_eq!(set["eat_nonce"], b64url(&[9; 32]));
    let submods = set["submods"].as_object().unwrap();
    let names: Vec<&str> = submods.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "coordinator",
            "marble/db",
            "marble/dev",
            "marble/probe",
            "marble/web"
        ]
    );
    let web = &submods["marble/web"];
    assert_eq!(status(web), "none");
    assert!(web.get("ear_trustworthiness_vector").is_none());
    assert_eq!(
        web["ear_appraisal_policy_ids"][0],
        format!("quarry:manifest:{}#/Packages/hw", "cc".repeat(32))
    );
    let rv = &web["ear_verifier_claims"]["quarry_reference_values"];
    assert_eq!(rv["SignerID"], "11".repeat(32));
    assert_eq!(rv["ProductID"], 3);
    assert_eq!(rv["SecurityVersion"], 2);
    assert_eq!(
        rv["AcceptedTCBStatuses"],
        json!(["UpToDate", "SWHardeningNeeded"])
    );
    let dev = &submods["marble/dev"];
    assert_eq!(status(dev), "contraindicated");
    assert_eq!(dev["ear_trustworthiness_vector"]["hardware"], 97);
    assert_eq!(
        dev["ear_verifier_claims"]["quarry_simulation"],
        SIMULATION_WARNING
    );
    assert_eq!(status(&submods["marble/probe"]), "contraindicated");
    // The overall status is the worst submod's.
    assert_eq!(set["ear_status"], "contraindicated");
}

#[test]
fn the_overall_status_is_affirming_only_when_every_submod_is_at_most_affirming() {
    let st = statement(None);
    let c = claims(TeeKind::Sgx, TcbStatus::UpToDate, false);
    let set = claims_set(&EarInput {
        claims: &c,
        statement: &st,
        manifest: None,
        build: "b",
        iat: 1,
    });
    assert_eq!(set["ear_status"], "affirming");
    assert!(set.get("eat_nonce").is_none());
    assert_eq!(set["submods"].as_object().unwrap().len(), 1);
}

#[test]
fn parse_and_binding_name_what_does_not_match() {
    let st = statement(Some(&[9; 32]));
    let c = claims(TeeKind::Sgx, TcbStatus::UpToDate, false);
    let set = claims_set(&EarInput {
        claims: &c,
        statement: &st,
        manifest: None,
        build: "b",
        iat: 1,
    });
    let token = compact(&signing_input(&set), &[1; 64]);
    let parts = parse(&token).unwrap();
    assert_eq!(parts.payload, set);
    assert_eq!(parts.signature, vec![1; 64]);
    assert_eq!(parts.header["alg"], "ES256");
    check_binding(&parts.payload, &st).unwrap();

    let mut other = st.clone();
    other.log_size = 2;
    assert!(matches!(
        check_binding(&parts.payload, &other),
        Err(EarError::Statement { .. })
    ));
    let mut wrong_profile = set.clone();
    wrong_profile["eat_profile"] = "tag:github.com,2023:veraison/ear".into();
    let err = check_binding(&wrong_profile, &st).unwrap_err();
    assert!(err.to_string().contains("eat_profile"), "{err}");

    assert!(matches!(parse("a.b"), Err(EarError::Malformed(_))));
    let none_alg = format!("{}.{}.", b64url(br#"{"alg":"none"}"#), b64url(b"{}"));
    assert_eq!(
        parse(&none_alg).err(),
        Some(EarError::Algorithm("none".into()))
    );
    let not_json = format!("{}.{}.AA", b64url(JWS_HEADER.as_bytes()), b64url(b"[1"));
    let err = parse(&not_json).err().unwrap();
    assert!(err.to_string().contains("payload"), "{err}");
}

#[test]
fn key_digest_is_sha256_of_the_spki() {
    let spki = [&P256_SPKI_PREFIX[..], &[4u8; 65][..]].concat();
    assert_eq!(key_digest(&spki), hex::encode(Sha256::digest(&spki)));
    assert_eq!(spki.len(), 91);
}

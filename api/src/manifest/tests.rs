use serde_json::{json, Value};

use super::*;
use crate::claims::{TcbStatus, TeeKind};

const UID: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// A minimal valid manifest.
fn base() -> Value {
    json!({
        "Packages": {"backend": {"UniqueID": UID}},
        "Marbles": {"web": {"Package": "backend"}}
    })
}

fn parse_json(v: &Value) -> Result<CheckedManifest, ManifestError> {
    parse(&serde_json::to_vec(v).expect("serialise"))
}

fn refused(v: &Value) -> ManifestError {
    parse_json(v).expect_err("must be refused")
}

/// Assert a refusal at `path` whose message contains `needle`.
fn assert_refused(v: &Value, path: &str, needle: &str) {
    let err = refused(v);
    assert_eq!(err.path, path, "{err}");
    assert!(
        err.message.contains(needle),
        "{err:?} must mention {needle:?}"
    );
}

#[test]
fn schema_is_draft_2020_12_and_compiles() {
    let schema: Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(schema["$id"]
        .as_str()
        .is_some_and(|id| id.starts_with("https://")));
    parse_json(&base()).expect("minimal manifest loads");
}

#[test]
fn keys_match_case_insensitively_and_names_keep_their_case() {
    let v = json!({
        "packages": {"Backend": {"uniqueid": UID, "DEBUG": false, "tee": "SGX"}},
        "MARBLES": {"Web": {"package": "Backend", "parameters": {
            "files": {"/Etc/Conf": {"data": "{{ hex .Secrets.Key }}", "encoding": "STRING"}},
            "ENV": {"Mixed_Case": "x"}
        }}},
        "secrets": {"Key": {"type": "symmetric-key", "size": 128}}
    });
    let m = parse_json(&v).expect("loads").manifest;
    assert_eq!(m.packages["Backend"].tee, TeeKind::Sgx);
    let params = &m.marbles["Web"].parameters;
    assert!(params.files.contains_key("/Etc/Conf"));
    assert!(params.env.contains_key("Mixed_Case"));
    assert_eq!(m.secrets["Key"].size, 128);
}

#[test]
fn unknown_keys_are_warnings_with_their_pointer() {
    let mut v = base();
    v["Clients"] = json!({"x": 1});
    v["Marbles"]["web"]["Parmeters"] = json!({});
    v["Marbles"]["web"]["Parameters"] = json!({"Files": {"/a": {"Data": "", "Extra~": true}}});
    let checked = parse_json(&v).expect("loads");
    let shown: Vec<String> = checked.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "/Clients: unknown key \"Clients\" is ignored",
            "/Marbles/web/Parameters/Files/~1a/Extra~0: unknown key \"Extra~\" is ignored",
            "/Marbles/web/Parmeters: unknown key \"Parmeters\" is ignored",
        ]
    );
}

#[test]
fn two_spellings_of_one_key_are_refused() {
    let v = json!({"Packages": {}, "packages": {}, "Marbles": {}});
    let err = refused(&v);
    assert!(err.message.contains("duplicate key"), "{err}");
}

#[test]
fn marble_names_must_be_spiffe_path_segments() {
    for (name, pointer, says) in [
        ("web/a", "/Marbles/web~1a", "'/' at byte 3"),
        ("<MarbleName>", "/Marbles/<MarbleName>", "'<' at byte 0"),
        ("..", "/Marbles/..", "not allowed"),
    ] {
        let mut v = base();
        v["Marbles"][name] = json!({"Package": "backend"});
        assert_refused(&v, pointer, says);
        assert_refused(&v, pointer, "SPIFFE ID");
    }
}

#[test]
fn marble_with_unknown_package_names_the_field() {
    let mut v = base();
    v["Marbles"]["web"]["Package"] = "frontend".into();
    assert_refused(&v, "/Marbles/web/Package", "\"frontend\" is not defined");
}

#[test]
fn package_identity_follows_marblerun() {
    let mut v = base();
    v["Packages"]["backend"]["SignerID"] = UID.into();
    assert_refused(&v, "/Packages/backend/UniqueID", "cannot be combined");
    v["Packages"]["backend"]["Debug"] = true.into();
    let checked = parse_json(&v).expect("Debug only warns");
    assert_eq!(checked.warnings[0].path, "/Packages/backend/UniqueID");

    let mut v = base();
    v["Packages"]["backend"] = json!({"SignerID": UID, "ProductID": 1});
    assert_refused(
        &v,
        "/Packages/backend/SecurityVersion",
        "SignerID, ProductID and SecurityVersion",
    );
    v["Packages"]["backend"]["SecurityVersion"] = 2.into();
    let p = &parse_json(&v).expect("signer identity").manifest.packages["backend"];
    assert_eq!((p.product_id, p.security_version), (Some(1), Some(2)));

    let mut v = base();
    v["Packages"]["backend"]["UniqueID"] = "abcd".into();
    assert_refused(&v, "/Packages/backend/UniqueID", "64 hex digits");
    // Unreferenced packages are checked too (MarbleRun checks only referenced ones).
    let mut v = base();
    v["Packages"]["spare"] = json!({});
    assert_refused(&v, "/Packages/spare/SignerID", "set UniqueID");
}

#[test]
fn placeholders_are_refused_naming_the_field() {
    let mut v = base();
    v["Users"] = json!({"admin": {"Certificate": "<GENERATED-AT-TEST-RUNTIME: x>"}});
    assert_refused(&v, "/Users/admin/Certificate", "placeholder");
    let mut v = base();
    v["Packages"]["backend"]["UniqueID"] = "<replace with mrenclave>".into();
    assert_refused(&v, "/Packages/backend/UniqueID", "must be replaced");
}

#[test]
fn tcb_statuses_parse_case_insensitively_and_revoked_is_refused() {
    let mut v = base();
    v["Packages"]["backend"]["AcceptedTCBStatuses"] = json!(["uptodate", "SWHARDENINGNEEDED"]);
    let p = &parse_json(&v).expect("loads").manifest.packages["backend"];
    assert_eq!(
        p.accepted_tcb_statuses,
        [TcbStatus::UpToDate, TcbStatus::SWHardeningNeeded]
    );
    v["Packages"]["backend"]["AcceptedTCBStatuses"] = json!(["Revoked"]);
    assert_refused(
        &v,
        "/Packages/backend/AcceptedTCBStatuses/0",
        "never accepted",
    );
    v["Packages"]["backend"]["AcceptedTCBStatuses"] = json!(["Bogus"]);
    assert_refused(&v, "/Packages/backend/AcceptedTCBStatuses/0", "schema");
}

#[test]
fn tdx_and_snp_reference_values_are_stored_as_lowercase_hex() {
    let mrtd = "AB".repeat(48);
    let v = json!({
        "Packages": {
            "td": {"TEE": "TDX", "MRTD": mrtd, "RTMR0": "cd".repeat(48), "AllowedPlatforms": ["00906ED50000"]},
            "vm": {"TEE": "snp", "Measurement": "01".repeat(48), "HostData": "02".repeat(32),
                   "IDKeyDigest": "03".repeat(48), "AllowedChipIDs": ["04".repeat(64)]}
        },
        "Marbles": {"a": {"Package": "td"}, "b": {"Package": "vm"}}
    });
    let m = parse_json(&v).expect("loads").manifest;
    let td = &m.packages["td"];
    assert_eq!(td.tee, TeeKind::Tdx);
    assert_eq!(td.fields["MRTD"], "ab".repeat(48));
    assert_eq!(td.allowed_platforms, ["00906ed50000"]);
    let vm = &m.packages["vm"];
    assert_eq!(
        vm.fields.keys().collect::<Vec<_>>(),
        ["HostData", "IDKeyDigest", "Measurement"]
    );
    assert_eq!(vm.allowed_platforms, ["04".repeat(64)]);

    let mut bad = v.clone();
    bad["Packages"]["td"]["Measurement"] = "01".repeat(48).into();
    assert_refused(&bad, "/Packages/td/Measurement", "needs TEE snp");
    let mut bad = v.clone();
    bad["Packages"]["vm"]["HostData"] = "02".repeat(48).into();
    assert_refused(&bad, "/Packages/vm/HostData", "64 hex digits (32 bytes)");
    let mut bad = v.clone();
    bad["Packages"]["td"] = json!({"TEE": "tdx", "MRSEAM": "ab".repeat(48)});
    assert_refused(&bad, "/Packages/td/MRTD", "MRTD or RTMR0");
    let mut bad = v.clone();
    bad["Packages"]["td"]["UniqueID"] = UID.into();
    assert_refused(&bad, "/Packages/td/UniqueID", "TEE tdx");
    let mut bad = v;
    bad["Packages"]["vm"]["TEE"] = "sev".into();
    assert_refused(&bad, "/Packages/vm/TEE", "schema");
}

#[test]
fn simulated_packages_use_the_sgx_identity_rule() {
    let mut v = base();
    v["Packages"]["backend"]["TEE"] = "Simulated".into();
    let m = parse_json(&v).expect("loads").manifest;
    assert_eq!(m.packages["backend"].tee, TeeKind::Simulated);
}

#[test]
fn marble_extensions_have_defaults_and_limits() {
    let m = parse_json(&base()).expect("loads").manifest;
    let web = &m.marbles["web"];
    assert_eq!(web.cert_valid_for, std::time::Duration::from_secs(86_400));
    assert!(web.dns_names.is_empty() && web.mesh.is_none());
    assert_eq!(m.config.trust_domain, "quarry.local");

    let mut v = base();
    v["Marbles"]["web"]["CertValidFor"] = "1h30m".into();
    v["Marbles"]["web"]["DNSNames"] = json!(["web.svc", "10.0.0.1", "*.example.com"]);
    v["Marbles"]["web"]["Mesh"] =
        json!({"Inbound": [{"Port": 8443, "Forward": "127.0.0.1:8080", "AllowFrom": ["web"]}]});
    v["Config"] = json!({"TrustDomain": "prod.example"});
    let m = parse_json(&v).expect("loads").manifest;
    let web = &m.marbles["web"];
    assert_eq!(web.cert_valid_for, std::time::Duration::from_secs(5400));
    assert_eq!(web.dns_names.len(), 3);
    assert!(web.mesh.is_some());
    assert_eq!(m.config.trust_domain, "prod.example");

    for (bad, needle) in [
        ("0s", "greater than 0"),
        ("400days", "at most one year"),
        ("soon", "duration"),
    ] {
        let mut v = base();
        v["Marbles"]["web"]["CertValidFor"] = bad.into();
        assert_refused(&v, "/Marbles/web/CertValidFor", needle);
    }
    let mut v = base();
    v["Marbles"]["web"]["DNSNames"] = json!(["bad name"]);
    assert_refused(&v, "/Marbles/web/DNSNames/0", "not a DNS name");
    let mut v = base();
    v["Config"] = json!({"TrustDomain": "Prod/Example"});
    assert_refused(&v, "/Config/TrustDomain", "trust domain");
}

#[test]
fn file_values_decode_per_encoding() {
    let mut v = base();
    v["Marbles"]["web"]["Parameters"] = json!({
        "Files": {
            "a": {"Data": "aGk=", "Encoding": "Base64"},
            "b": {"Data": "6869", "Encoding": "hex", "NoTemplates": true},
            "c": "{{ raw .MarbleRun.MarbleCert.Private }}"
        },
        "Argv": ["./web", "--x"]
    });
    let params = parse_json(&v).expect("loads").manifest.marbles["web"]
        .parameters
        .clone();
    assert_eq!(params.files["a"].data, b"hi");
    assert!(params.files["a"]
        .template
        .as_ref()
        .is_some_and(|t| t.is_literal()));
    assert!(params.files["b"].no_templates && params.files["b"].template.is_none());
    assert_eq!(params.argv, ["./web", "--x"]);

    let mut v = base();
    v["Marbles"]["web"]["Parameters"] = json!({"Env": {"X": {"Data": "00", "Encoding": "hex"}}});
    assert_refused(&v, "/Marbles/web/Parameters/Env/X", "NUL");
    let mut v = base();
    v["Marbles"]["web"]["Parameters"] =
        json!({"Files": {"/x": {"Data": "!", "Encoding": "base64"}}});
    assert_refused(&v, "/Marbles/web/Parameters/Files/~1x/Data", "base64");
    let mut v = base();
    v["Marbles"]["web"]["Parameters"] = json!({"Env": {"A=B": "x"}});
    assert_refused(&v, "/Marbles/web/Parameters/Env/A=B", "'='");
}

#[test]
fn secret_definitions_are_checked() {
    let cases = [
        (
            json!({"Type": "symmetric-key"}),
            "/Secrets/s/Size",
            "multiple of 8",
        ),
        (
            json!({"Type": "symmetric-key", "Size": 12}),
            "/Secrets/s/Size",
            "multiple of 8",
        ),
        (
            json!({"Type": "cert-ecdsa", "Size": 200}),
            "/Secrets/s/Size",
            "256 or 384",
        ),
        (
            json!({"Type": "cert-ecdsa", "Size": 521}),
            "/Secrets/s/Size",
            "P-521",
        ),
        (
            json!({"Type": "cert-rsa", "Size": 1024}),
            "/Secrets/s/Size",
            "between 2048 and 8192",
        ),
        (
            json!({"Type": "cert-ed25519", "Size": 256}),
            "/Secrets/s/Size",
            "no Size",
        ),
        (
            json!({"Type": "plain"}),
            "/Secrets/s/UserDefined",
            "must be UserDefined",
        ),
        (
            json!({"Type": "cert-ed25519", "ValidFor": 7, "Cert": {"NotAfter": "2030-01-01T00:00:00Z"}}),
            "/Secrets/s/ValidFor",
            "NotAfter",
        ),
        (
            json!({"Type": "Plain", "UserDefined": true}),
            "/Secrets/s/Type",
            "schema",
        ),
        (json!({"Size": 8}), "/Secrets/s/Type", "required"),
        (
            json!({"Type": "cert-rsa", "Size": 2048, "Cert": {"PermittedDNSDomains": ["a"]}}),
            "/Secrets/s/Cert/PermittedDNSDomains",
            "not supported",
        ),
    ];
    for (secret, path, needle) in cases {
        let mut v = base();
        v["Secrets"] = json!({ "s": secret });
        assert_refused(&v, path, needle);
    }
}

#[test]
fn certificate_templates_are_converted() {
    let mut v = base();
    v["Secrets"] = json!({"s": {"Type": "cert-ecdsa", "Size": 256, "Shared": true, "Cert": {
        "Subject": {"CommonName": "db", "Organization": ["Acme"]},
        "DNSNames": ["db.local"], "IPAddresses": ["127.0.0.1", "::1"],
        "NotAfter": "2030-01-02T03:04:05Z", "KeyUsage": 33, "ExtKeyUsage": [1, 2],
        "IsCA": true, "MaxPathLen": 0, "MaxPathLenZero": true, "SerialNumber": 7
    }}});
    let checked = parse_json(&v).expect("loads");
    let cert = checked.manifest.secrets["s"]
        .cert
        .clone()
        .expect("template");
    assert_eq!(cert.common_name.as_deref(), Some("db"));
    assert_eq!(cert.ip_addresses.len(), 2);
    assert_eq!(cert.not_after.map(|t| t.year()), Some(2030));
    assert_eq!(
        (cert.key_usage, cert.ext_key_usage.clone()),
        (Some(33), vec![1, 2])
    );
    assert_eq!((cert.is_ca, cert.max_path_len), (true, Some(0)));
    assert_eq!(checked.warnings[0].path, "/Secrets/s/Cert/SerialNumber");
}

#[test]
fn user_defined_initial_values_never_show_in_debug() {
    let mut v = base();
    v["Secrets"] = json!({"s": {"Type": "symmetric-key", "Size": 32, "UserDefined": true,
        "Private": "c2VjcmV0", "Public": [115, 101, 99, 114, 101, 116]}});
    let m = parse_json(&v).expect("loads").manifest;
    let s = &m.secrets["s"];
    assert_eq!(s.initial_private.as_deref(), Some(&b"secret"[..]));
    assert_eq!(s.initial_private, s.initial_public);
    let shown = format!("{m:?}");
    assert!(
        !shown.contains("secret\"") && !shown.contains("115, 101"),
        "{shown}"
    );
    assert!(shown.contains("REDACTED"));
}

#[test]
fn roles_and_tls_are_checked() {
    let mut v = base();
    v["Secrets"] = json!({"priv": {"Type": "symmetric-key", "Size": 128}});
    v["Roles"] = json!({"r": {"ResourceType": "Secrets", "ResourceNames": ["priv"], "Actions": ["readsecret"]}});
    assert_refused(&v, "/Roles/r/ResourceNames/0", "private to each marble");
    v["Roles"] = json!({"r": {"ResourceType": "Manifest", "ResourceNames": ["x"], "Actions": ["UpdateManifest"]}});
    assert_refused(&v, "/Roles/r/ResourceNames", "no ResourceNames");
    v["Roles"] = json!({"r": {"ResourceType": "Packages", "ResourceNames": ["backend"], "Actions": ["ReadSecret"]}});
    assert_refused(&v, "/Roles/r/Actions/0", "does not apply to Packages");
    v["Roles"] = json!({"r": {"ResourceType": "packages"}});
    assert_refused(&v, "/Roles/r/ResourceType", "schema");
    v["Roles"] = json!({});

    v["TLS"] = json!({"t": {"Incoming": [{"Port": "443", "Cert": "priv"}]}});
    assert_refused(
        &v,
        "/TLS/t/Incoming/0/DisableClientAuth",
        "DisableClientAuth: true",
    );
    v["TLS"] = json!({"t": {"Outgoing": [{"Port": "443"}]}});
    assert_refused(&v, "/TLS/t/Outgoing/0/Addr", "required");
    v["Marbles"]["web"]["TLS"] = json!(["missing"]);
    assert_refused(&v, "/Marbles/web/TLS/0", "\"missing\"");
}

#[test]
fn config_is_checked() {
    let mut v = base();
    v["Config"] = json!({"SealMode": "uniquekey"});
    assert_refused(&v, "/Config/SealMode", "schema");
    v["Config"] = json!({"FeatureGates": ["azurehsmsealing"]});
    assert_refused(&v, "/Config/FeatureGates/0", "not supported");
    v["Config"] = json!({"UpdateThreshold": 1});
    assert_refused(&v, "/Config/UpdateThreshold", "exceeds");
    v["Config"] = json!({"RecoveryThreshold": 1});
    assert_refused(&v, "/Config/RecoveryThreshold", "0 or from 2");
    v["Config"] = json!({"FeatureGates": ["signquoteendpoint"], "SealMode": "UniqueKey", "RotateRootSecret": true});
    let c = parse_json(&v).expect("loads").manifest.config;
    assert!(c.feature_enabled(FeatureGate::SignQuoteEndpoint));
    assert_eq!(
        (c.seal_mode, c.rotate_root_secret),
        (SealMode::UniqueKey, true)
    );
}

#[test]
fn tcb_change_action_defaults_to_warn_parses_case_insensitively_and_names_its_pointer() {
    let mut v = base();
    assert_eq!(
        parse_json(&v)
            .expect("loads")
            .manifest
            .config
            .tcb_change_action,
        TcbChangeAction::Warn,
        "a manifest without the key (every MarbleRun manifest) warns"
    );
    for (text, want) in [
        ("warn", TcbChangeAction::Warn),
        ("Refuse-Renewal", TcbChangeAction::RefuseRenewal),
        ("REVOKE", TcbChangeAction::Revoke),
        ("", TcbChangeAction::Warn),
    ] {
        v["Config"] = json!({ "TCBChangeAction": text });
        let c = parse_json(&v).expect("loads").manifest.config;
        assert_eq!(c.tcb_change_action, want, "{text:?}");
    }
    v["Config"] = json!({ "tcbchangeaction": "refuse-renewal" });
    assert_eq!(
        parse_json(&v)
            .expect("loads")
            .manifest
            .config
            .tcb_change_action,
        TcbChangeAction::RefuseRenewal,
        "the key is case-insensitive like every manifest key"
    );
    v["Config"] = json!({ "TCBChangeAction": "shutdown" });
    assert_refused(&v, "/Config/TCBChangeAction", "schema");
    v["Config"] = json!({ "TCBChangeAction": 1 });
    assert_refused(&v, "/Config/TCBChangeAction", "schema");
}

#[test]
fn schema_type_errors_name_the_field_without_echoing_values() {
    let mut v = base();
    v["Marbles"]["web"]["MaxActivations"] = "topsecretvalue".into();
    let err = refused(&v);
    assert_eq!(err.path, "/Marbles/web/MaxActivations");
    assert!(!err.to_string().contains("topsecretvalue"), "{err}");
    let mut v = base();
    v["Infrastructures"] = json!({"i": {"CPUSVN": [256]}});
    assert_refused(&v, "/Infrastructures/i/CPUSVN", "schema");
}

#[test]
fn null_means_unset_as_in_go() {
    let mut v = base();
    v["Marbles"]["web"]["MaxActivations"] = Value::Null;
    v["Marbles"]["web"]["Parameters"] = Value::Null;
    v["Packages"]["backend"]["TEE"] = Value::Null;
    v["Config"] = Value::Null;
    v["Secrets"] = Value::Null;
    let m = parse_json(&v).expect("loads").manifest;
    assert_eq!(m.marbles["web"].max_activations, 0);
    assert_eq!(m.config, Config::default());
}

#[test]
fn invalid_documents_are_refused_at_the_root() {
    assert_eq!(parse(b"[]").expect_err("array").path, "");
    assert!(parse(b"{")
        .expect_err("truncated")
        .message
        .starts_with("invalid JSON"));
    let err = refused(&json!({"Packages": {"p": {"UniqueID": UID}}, "Marbles": {}}));
    assert_eq!(
        err.to_string(),
        "/Marbles: schema: value has less than 1 property"
    );
}

#[test]
fn package_updates_are_recognised_and_checked() {
    let update = br#"{"packages": {"backend": {"securityversion": 4}}}"#;
    assert!(is_package_update(update));
    assert!(!is_package_update(
        &serde_json::to_vec(&base()).expect("json")
    ));
    let parsed = parse_package_update(update).expect("update");
    assert_eq!(parsed.security_versions["backend"], 4);
    let err =
        parse_package_update(br#"{"Packages": {"b": {"SecurityVersion": 4, "UniqueID": "aa"}}}"#)
            .expect_err("UniqueID cannot change");
    assert_eq!(err.path, "/Packages/b/UniqueID");
    let err = parse_package_update(br#"{"Packages": {"b": {}}}"#).expect_err("no SVN");
    assert_eq!(err.path, "/Packages/b/SecurityVersion");
}

#[test]
fn yaml_converts_to_equivalent_json() {
    let json_bytes =
        yaml_to_json("Packages:\n  p:\n    UniqueID: \"00\"\nMarbles: {}\n").expect("yaml");
    let v: Value = serde_json::from_slice(&json_bytes).expect("json");
    assert_eq!(
        v,
        json!({"Packages": {"p": {"UniqueID": "00"}}, "Marbles": {}})
    );
    assert!(yaml_to_json("a: [").is_err());
}

#[test]
fn snp_minimum_tcb_is_parsed_per_component_and_needs_tee_snp() {
    let v = json!({
        "Packages": {
            "vm": {"TEE": "snp", "Measurement": "01".repeat(48),
                   "MinimumTCB": {"BootLoader": 3, "tee": 0, "SNP": 8, "Microcode": 115}}
        },
        "Marbles": {"b": {"Package": "vm"}}
    });
    let m = parse_json(&v).expect("loads").manifest;
    let min = m.packages["vm"].minimum_tcb.expect("MinimumTCB");
    assert_eq!(
        (min.bootloader, min.tee, min.snp, min.microcode, min.fmc),
        (3, 0, 8, 115, None)
    );
    let mut bad = v.clone();
    bad["Packages"]["vm"]["MinimumTCB"]["SNP"] = json!(300);
    assert_refused(&bad, "/Packages/vm/MinimumTCB/SNP", "maximum of 255");
    let mut bad = v.clone();
    bad["Packages"]["vm"]["TEE"] = "tdx".into();
    bad["Packages"]["vm"]["MRTD"] = "ab".repeat(48).into();
    bad["Packages"]["vm"]
        .as_object_mut()
        .unwrap()
        .remove("Measurement");
    assert_refused(&bad, "/Packages/vm/MinimumTCB", "needs TEE snp");
}

#[test]
fn snp_max_vmpl_is_a_vmpl_and_needs_tee_snp() {
    let v = json!({
        "Packages": {"vm": {"TEE": "snp", "Measurement": "01".repeat(48), "MaxVMPL": 1}},
        "Marbles": {"b": {"Package": "vm"}}
    });
    let m = parse_json(&v).expect("loads").manifest;
    assert_eq!(m.packages["vm"].max_vmpl, 1);
    let mut default = v.clone();
    default["Packages"]["vm"]
        .as_object_mut()
        .unwrap()
        .remove("MaxVMPL");
    assert_eq!(
        parse_json(&default).expect("loads").manifest.packages["vm"].max_vmpl,
        0
    );
    let mut bad = v.clone();
    bad["Packages"]["vm"]["MaxVMPL"] = json!(4);
    assert_refused(&bad, "/Packages/vm/MaxVMPL", "3");
    let mut bad = v.clone();
    bad["Packages"]["vm"] = json!({"TEE": "tdx", "MRTD": "ab".repeat(48), "MaxVMPL": 0});
    assert_refused(&bad, "/Packages/vm/MaxVMPL", "needs TEE snp");
}

#[test]
fn marbles_roles_grant_revoke_marble_on_existing_types_only() {
    let mut v = base();
    v["Roles"] = json!({"r": {"ResourceType": "Marbles", "ResourceNames": ["web"], "Actions": ["RevokeMarble"]}});
    let m = parse_json(&v).expect("a RevokeMarble role loads").manifest;
    assert_eq!(m.roles["r"].resource_type, ResourceType::Marbles);
    assert_eq!(m.roles["r"].actions, vec!["RevokeMarble"]);
    v["Roles"] = json!({"r": {"ResourceType": "Marbles", "ResourceNames": ["db"], "Actions": ["RevokeMarble"]}});
    assert_refused(&v, "/Roles/r/ResourceNames/0", "not defined in Marbles");
    v["Roles"] = json!({"r": {"ResourceType": "Marbles", "ResourceNames": ["web"], "Actions": ["ReadSecret"]}});
    assert_refused(&v, "/Roles/r/Actions/0", "does not apply to Marbles");
    v["Roles"] =
        json!({"r": {"ResourceType": "Secrets", "ResourceNames": [], "Actions": ["RevokeMarble"]}});
    assert_refused(&v, "/Roles/r/Actions/0", "does not apply to Secrets");
}

#[test]
fn cert_key_sizes_follow_one_rule_at_the_size_pointer() {
    // (Type, Size, UserDefined, accepted)
    let cases = [
        ("cert-ecdsa", 256, false, true),
        ("cert-ecdsa", 384, false, true),
        ("cert-ecdsa", 384, true, true),
        ("cert-ecdsa", 0, true, true),
        ("cert-ecdsa", 0, false, false),
        ("cert-ecdsa", 224, false, false),
        ("cert-ecdsa", 521, false, false),
        ("cert-ecdsa", 521, true, false),
        ("cert-ecdsa", 512, false, false),
        ("cert-rsa", 2048, false, true),
        ("cert-rsa", 3072, false, true),
        ("cert-rsa", 8192, false, true),
        ("cert-rsa", 0, true, true),
        ("cert-rsa", 4096, true, true),
        ("cert-rsa", 0, false, false),
        ("cert-rsa", 1000, false, false),
        ("cert-rsa", 1000, true, false),
        ("cert-rsa", 2049, false, false),
        ("cert-rsa", 8200, false, false),
        ("cert-ed25519", 0, false, true),
        ("cert-ed25519", 0, true, true),
        ("cert-ed25519", 256, false, false),
        ("cert-ed25519", 256, true, false),
    ];
    for (kind, size, user_defined, accepted) in cases {
        let name = format!("{kind} Size {size} UserDefined {user_defined}");
        let mut v = base();
        v["Secrets"] = json!({"my/key": {"Type": kind, "Size": size, "UserDefined": user_defined}});
        let rule = check_cert_key_size(SecretKind::parse(kind).expect("kind"), size);
        match parse_json(&v) {
            Ok(_) => {
                assert!(accepted, "{name}: accepted");
                assert!(
                    rule.is_ok() || (user_defined && size == 0),
                    "{name}: {rule:?}"
                );
            }
            Err(err) => {
                assert!(!accepted, "{name}: refused with {err}");
                assert_eq!(err.path, "/Secrets/my~1key/Size", "{name}");
                assert_eq!(Err(err.message.as_str()), rule, "{name}");
            }
        }
    }
    assert_eq!(check_cert_key_size(SecretKind::SymmetricKey, 12), Ok(()));
    assert_eq!(check_cert_key_size(SecretKind::Plain, 0), Ok(()));
}

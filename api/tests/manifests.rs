//! Every file of the shared MarbleRun fixtures (`shared/testdata/marblerun-manifests`) meets
//! a written-down expectation; broken copies name the field.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quarry_api::manifest::{self, CheckedManifest, FeatureGate, ManifestError};
use serde_json::Value;

const FIXTURES: &str = "shared/testdata/marblerun-manifests";
const RECOVERY_KEY_1: &str = include_str!("data/recovery-key-1.pub.pem");
const RECOVERY_KEY_2: &str = include_str!("data/recovery-key-2.pub.pem");
const EC_KEY: &str = include_str!("data/ec-key.pub.pem");
const UNIQUE_ID: &str = "8ac1a3f2b6b0a8a1b9f44e4b0b0fa2b1c06ecbd7ccda4c2f0e2b7a1c4d5e6f70";

/// The fixture directory: `$QUARRY_SHARED_DIR/testdata/marblerun-manifests`, or found by
/// walking up from this crate. Missing fixtures fail the test rather than skipping it.
fn fixtures_dir() -> PathBuf {
    if let Ok(shared) = std::env::var("QUARRY_SHARED_DIR") {
        let dir = Path::new(&shared).join("testdata/marblerun-manifests");
        assert!(
            dir.is_dir(),
            "QUARRY_SHARED_DIR is set but {dir:?} is not a directory"
        );
        return dir;
    }
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    start
        .ancestors()
        .map(|a| a.join(FIXTURES))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "fixtures not found: no {FIXTURES} above {start:?}; set QUARRY_SHARED_DIR to the \
                 shared/ directory"
            )
        })
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

fn json(name: &str) -> Value {
    serde_json::from_slice(&read(name)).expect("fixture is JSON")
}

fn parse_value(v: &Value) -> Result<CheckedManifest, ManifestError> {
    manifest::parse(&serde_json::to_vec(v).expect("serialise"))
}

/// A fresh self-signed X.509 certificate in PEM, as MarbleRun's tests generate at runtime.
fn user_cert(name: &str) -> String {
    rcgen::generate_simple_self_signed(vec![format!("{name}.example")])
        .expect("rcgen")
        .cert
        .pem()
}

/// Replace every placeholder string with a valid value of the kind it stands for.
fn fill_placeholders(v: &mut Value) {
    match v {
        Value::String(s) if s.starts_with("<replace with mrenclave") => *s = UNIQUE_ID.into(),
        Value::String(s) if s.starts_with("<GENERATED-AT-TEST-RUNTIME") => {
            *s = if s.contains("RecoveryPublicKeyOne") {
                RECOVERY_KEY_1.into()
            } else if s.contains("RecoveryPublicKeyTwo") {
                RECOVERY_KEY_2.into()
            } else if s.contains("Cert") {
                user_cert(&s.replace(|c: char| !c.is_ascii_alphanumeric(), ""))
            } else {
                panic!("unknown placeholder {s}")
            }
        }
        Value::Object(m) => m.values_mut().for_each(fill_placeholders),
        Value::Array(a) => a.iter_mut().for_each(fill_placeholders),
        _ => {}
    }
}

/// What each fixture is expected to do.
enum Expect {
    /// A valid manifest: loads as it is.
    Accept,
    /// Refused; the error's pointer is `path` and its message mentions each of `mentions`.
    Reject {
        path: &'static str,
        mentions: &'static [&'static str],
    },
    /// Refused for the placeholder at `path`; loads once the placeholders are filled in.
    PlaceholderThenAccept { path: &'static str },
    /// A package-only update (MarbleRun §5.1), not a full manifest.
    PackageUpdate { package: &'static str, svn: u64 },
}

fn expectation(name: &str) -> Option<Expect> {
    use Expect::*;
    const DRY_RUN: &str = "coordinator__manifest__manifest_test.go__TestTemplateDryRun__";
    const ROOT_CA_FILE: &str = "/Marbles/backend_first/Parameters/Files/root_ca";
    let e = match name.strip_prefix(DRY_RUN).unwrap_or(name) {
        // Not JSON at all: the provenance notes of the folder.
        "PROVENANCE.md" => Reject {
            path: "",
            mentions: &["invalid JSON"],
        },
        "missingSecret__expect-reject.json" => Reject {
            path: "/Marbles/backend_first/Parameters/Files/~1tmp~1defg.txt",
            mentions: &["\"foo\"", "not defined in Secrets", "/tmp/defg.txt"],
        },
        // Both Env values use raw; API_KEY sorts first.
        "rawInEnv__expect-reject.json" => Reject {
            path: "/Marbles/backend_first/Parameters/Env/API_KEY",
            mentions: &["raw", "Env"],
        },
        "reserved-coordinator-intermediate-does-not-support-private__expect-reject.json" => {
            Reject {
                path: ROOT_CA_FILE,
                mentions: &["CoordinatorIntermediate", "Private"],
            }
        }
        "reserved-coordinator-intermediate-does-not-support-public__expect-reject.json" => Reject {
            path: ROOT_CA_FILE,
            mentions: &["CoordinatorIntermediate", "Public"],
        },
        "reserved-coordinator-root-does-not-support-private__expect-reject.json" => Reject {
            path: ROOT_CA_FILE,
            mentions: &["CoordinatorRoot", "Private"],
        },
        "reserved-coordinator-root-does-not-support-public__expect-reject.json" => Reject {
            path: ROOT_CA_FILE,
            mentions: &["CoordinatorRoot", "Public"],
        },
        "reserved-root-ca-does-not-support-private__expect-reject.json" => Reject {
            path: ROOT_CA_FILE,
            mentions: &["RootCA", "Private"],
        },
        "reserved-root-ca-does-not-support-public__expect-reject.json" => Reject {
            path: ROOT_CA_FILE,
            mentions: &["RootCA", "Public"],
        },
        "reserved-secrets__expect-accept.json" | "valid__expect-accept.json" => Accept,
        // A documentation skeleton: marbles without Package (and truncated recovery keys).
        "docs__docs__reference__coordinator.md__codeblock-line1103.json" => Reject {
            path: "/Marbles/marble1/Package",
            mentions: &["Package", "required"],
        },
        "docs__docs__workflows__update-manifest.md__codeblock-line38.json" => PackageUpdate {
            package: "frontend",
            svn: 5,
        },
        "test__manifests.go__UpdateManifest.json" => PackageUpdate {
            package: "frontend",
            svn: 5,
        },
        // The stale OpenAPI document of the client API: not a manifest. Every top-level key
        // is unknown (a warning), so it fails for want of Packages.
        "docs__openapi__coordinator__swagger.json" => Reject {
            path: "/Packages",
            mentions: &["Packages", "required"],
        },
        // A POST /secrets body (name -> {Key|Cert|Private}), not a manifest.
        "test__manifests.go__UserSecrets.json" => Reject {
            path: "/Packages",
            mentions: &["Packages", "required"],
        },
        "samples__estore__manifest.json" => PlaceholderThenAccept {
            path: "/Packages/estore-package/UniqueID",
        },
        "samples__gramine-hello__manifest.json"
        | "samples__helloc++__manifest.json"
        | "samples__helloworld__manifest.json"
        | "samples__occlum-hello__manifest.json" => PlaceholderThenAccept {
            path: "/Packages/world/UniqueID",
        },
        "samples__gramine-nginx__manifest.json" => PlaceholderThenAccept {
            path: "/Packages/nginx/UniqueID",
        },
        // The empty skeleton: ResourceNames is "" where MarbleRun (Go) needs []string too.
        "samples__manifest-template.json" => Reject {
            path: "/Roles/<RoleName>/ResourceNames",
            mentions: &["schema", "array"],
        },
        // Converted by yaml_to_json first; ResourceType "" is not a resource type.
        "samples__manifest-template.yaml" => Reject {
            path: "/Roles/<RoleName>/ResourceType",
            mentions: &["Packages", "Secrets"],
        },
        // MarbleRun's own dry run refuses raw in Env (the rawInEnv fixture has this very line,
        // `"API_KEY": "{{ raw .Secrets.apiKey }}"`), so the sample cannot be set as it is.
        // See `sample_manifest_is_refused_for_each_of_its_mistakes` for the rest.
        "samples__sample-manifest.json" => Reject {
            path: "/Marbles/backendFirst/Parameters/Env/API_KEY",
            mentions: &["raw", "Env"],
        },
        // Placeholders are visited in key order: RecoveryKeys sorts before Users.
        "test__manifests.go__IntegrationManifestJSON.json"
        | "test__manifests.go__IntegrationMultiPartyUpdateJSON.json"
        | "test__manifests.go__ManifestJSONWithRecoveryKey.json"
        | "test__manifests.go__ManifestJSONWithRecoveryKeys.json" => PlaceholderThenAccept {
            path: "/RecoveryKeys/testRecKey1",
        },
        "test__manifests.go__ManifestJSON.json"
        | "test__manifests.go__ManifestJSONMissingParameters.json" => Accept,
        _ => return None,
    };
    Some(e)
}

fn load(name: &str) -> Result<CheckedManifest, ManifestError> {
    let bytes = read(name);
    if name.ends_with(".yaml") {
        let text = std::str::from_utf8(&bytes).expect("YAML is UTF-8");
        manifest::parse(&manifest::yaml_to_json(text).expect("YAML converts to JSON"))
    } else {
        manifest::parse(&bytes)
    }
}

#[test]
fn every_fixture_meets_its_written_expectation() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("list fixtures")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.len() >= 30,
        "expected the full fixture set, found {}",
        names.len()
    );
    for name in &names {
        let expect = expectation(name)
            .unwrap_or_else(|| panic!("fixture {name} has no expectation; add one"));
        match expect {
            Expect::Accept => {
                load(name).unwrap_or_else(|e| panic!("{name} must load: {e}"));
            }
            Expect::Reject { path, mentions } => {
                let err = load(name).expect_err(&format!("{name} must be refused"));
                assert_eq!(err.path, path, "{name}: {err}");
                for m in mentions {
                    assert!(
                        err.message.contains(m),
                        "{name}: {err:?} must mention {m:?}"
                    );
                }
                assert!(!manifest::is_package_update(&read(name)), "{name}");
            }
            Expect::PlaceholderThenAccept { path } => {
                let err = load(name).expect_err(&format!("{name} has placeholders"));
                assert_eq!(err.path, path, "{name}: {err}");
                assert!(err.message.contains("placeholder"), "{name}: {err}");
                let mut v = json(name);
                fill_placeholders(&mut v);
                parse_value(&v).unwrap_or_else(|e| panic!("{name} filled in must load: {e}"));
            }
            Expect::PackageUpdate { package, svn } => {
                let err = load(name).expect_err("a package update is not a full manifest");
                assert_eq!(err.path, "/Marbles", "{name}: {err}");
                assert!(manifest::is_package_update(&read(name)), "{name}");
                let update = manifest::parse_package_update(&read(name)).expect("update");
                assert_eq!(
                    update.security_versions,
                    BTreeMap::from([(package.to_string(), svn)])
                );
            }
        }
    }
}

#[test]
fn sample_manifest_is_refused_for_each_of_its_mistakes() {
    // The shipped sample has three problems MarbleRun would also refuse, found in this order.
    let mut v = json("samples__sample-manifest.json");
    let env = &mut v["Marbles"]["backendFirst"]["Parameters"]["Env"];
    env["API_KEY"] = "{{ string .Secrets.apiKey }}".into();
    // 1. (above) raw in Env. 2. Users' certificates are not PEM ("cert-admin").
    let err = parse_value(&v).expect_err("user certificate is not PEM");
    assert_eq!(err.path, "/Users/Admin/Certificate");
    assert!(err.message.contains("PEM"), "{err}");
    for user in ["Admin", "Alice", "Bob"] {
        v["Users"][user]["Certificate"] = user_cert(user).into();
    }
    // 3. WriteSecret on secrets that are generated, not user-defined.
    let err = parse_value(&v).expect_err("WriteSecret on generated secret");
    assert_eq!(err.path, "/Roles/secrets-admin/ResourceNames/0");
    assert!(err.message.contains("WriteSecret"), "{err}");
    v["Roles"]["secrets-admin"]["Actions"] = serde_json::json!(["ReadSecret"]);
    let checked = parse_value(&v).expect("fixed sample loads");
    let m = &checked.manifest;
    assert_eq!(m.marbles.len(), 3);
    assert_eq!(m.packages["backend"].product_id, Some(45));
    assert_eq!(m.secrets["certPrivate"].valid_for_days, Some(7));
    let jkl = &m.marbles["backendFirst"].parameters.files["/tmp/jkl.mno"];
    assert_eq!((jkl.data.as_slice(), jkl.no_templates), (&b"bar"[..], true));
    assert!(jkl.template.is_none());
}

#[test]
fn integration_manifest_loads_with_debug_identity_warnings() {
    let mut v = json("test__manifests.go__IntegrationManifestJSON.json");
    fill_placeholders(&mut v);
    let checked = parse_value(&v).expect("loads");
    // Packages without SignerID load only because Debug is true (MarbleRun warns).
    let paths: Vec<&str> = checked.warnings.iter().map(|w| w.path.as_str()).collect();
    assert!(paths.contains(&"/Packages/backend/SignerID"), "{paths:?}");
    assert!(paths.contains(&"/Packages/frontend/SignerID"), "{paths:?}");
    let infra = &checked.manifest.infrastructures["Azure"];
    assert_eq!(
        infra.cpusvn.as_deref(),
        Some(&(0u8..16).collect::<Vec<_>>()[..])
    );
    assert_eq!(infra.qesvn, Some(2));
    // Without Debug the same package is refused, naming the missing field.
    v["Packages"]["backend"]["Debug"] = false.into();
    let err = parse_value(&v).expect_err("no identity without Debug");
    assert_eq!(err.path, "/Packages/backend/SignerID");
}

#[test]
fn filled_in_estore_sample_keeps_its_meaning() {
    let mut v = json("samples__estore__manifest.json");
    fill_placeholders(&mut v);
    let m = parse_value(&v).expect("loads").manifest;
    let pkg = &m.packages["estore-package"];
    assert_eq!(
        pkg.unique_id.as_deref(),
        Some(&hex::decode(UNIQUE_ID).expect("hex")[..])
    );
    assert!(pkg.debug);
    assert!(m.config.feature_enabled(FeatureGate::MonotonicCounter));
    assert_eq!(
        m.config.trust_domain,
        quarry_api::spiffe::DEFAULT_TRUST_DOMAIN
    );
}

#[test]
fn gramine_nginx_warns_about_dns_names_inside_subject() {
    let mut v = json("samples__gramine-nginx__manifest.json");
    fill_placeholders(&mut v);
    let checked = parse_value(&v).expect("loads");
    assert_eq!(
        checked
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>(),
        vec!["/Secrets/ServerCert/Cert/Subject/DNSNames: unknown key \"DNSNames\" is ignored"]
    );
    let cert = checked.manifest.secrets["ServerCert"]
        .cert
        .clone()
        .expect("cert");
    assert_eq!(cert.common_name.as_deref(), Some("localhost"));
}

#[test]
fn manifest_template_yaml_converts_and_loads_once_filled_in() {
    let text = String::from_utf8(read("samples__manifest-template.yaml")).expect("utf8");
    let mut v: Value =
        serde_json::from_slice(&manifest::yaml_to_json(&text).expect("converts")).expect("JSON");
    assert_eq!(v["Marbles"]["<MarbleName>"]["Package"], "<PackageName>");
    v["Packages"]["<PackageName>"]["SignerID"] = UNIQUE_ID.into();
    v["Users"]["<UserName>"]["Certificate"] = user_cert("user").into();
    v["Users"]["<UserName>"]["Roles"] = serde_json::json!(["<RoleName>"]);
    v["Roles"]["<RoleName>"]["ResourceType"] = "Manifest".into();
    v["Roles"]["<RoleName>"]["Actions"] = serde_json::json!(["updatemanifest"]);
    v["Secrets"]["<SecretName>"]["Size"] = 256.into();
    v["RecoveryKeys"]["<KeyName>"] = RECOVERY_KEY_1.into();
    v["TLS"]["<TLSConfigName>"] = serde_json::json!({
        "Outgoing": [{"Port": "443", "Addr": "db"}], "Incoming": [{"Port": "8443"}]
    });
    // The marble name becomes the path of its SPIFFE ID, where '<' and '>' are not allowed.
    let err = parse_value(&v).expect_err("<MarbleName> is not a SPIFFE path segment");
    assert_eq!(err.path, "/Marbles/<MarbleName>");
    assert!(err.message.contains("SPIFFE ID"), "{err}");
    let marbles = v["Marbles"].as_object_mut().expect("Marbles");
    let marble = marbles
        .remove("<MarbleName>")
        .expect("the template's marble");
    marbles.insert("frontend".into(), marble);
    let m = parse_value(&v).expect("filled-in template loads").manifest;
    assert_eq!(m.roles["<RoleName>"].actions, vec!["UpdateManifest"]);
    assert!(m.marbles.contains_key("frontend"));
}

#[test]
fn recovery_keys_must_be_rsa_public_keys() {
    let mut v = json("test__manifests.go__ManifestJSONWithRecoveryKeys.json");
    fill_placeholders(&mut v);
    v["RecoveryKeys"]["testRecKey2"] = EC_KEY.into();
    let err = parse_value(&v).expect_err("EC key");
    assert_eq!(err.path, "/RecoveryKeys/testRecKey2");
    assert!(err.message.contains("RSA"), "{err}");
    v["RecoveryKeys"]["testRecKey2"] = RECOVERY_KEY_2.into();
    v["Config"] = serde_json::json!({"RecoveryThreshold": 3});
    let err = parse_value(&v).expect_err("threshold above key count");
    assert_eq!(err.path, "/Config/RecoveryThreshold");
    v["Config"] = serde_json::json!({"RecoveryThreshold": 2});
    assert_eq!(
        parse_value(&v)
            .expect("2 of 2")
            .manifest
            .config
            .recovery_threshold,
        2
    );
}

#[test]
fn duplicate_user_certificates_are_refused() {
    let mut v = json("test__manifests.go__IntegrationMultiPartyUpdateJSON.json");
    fill_placeholders(&mut v);
    let first = v["Users"]["admin-1"]["Certificate"].clone();
    v["Users"]["admin-2"]["Certificate"] = first;
    let err = parse_value(&v).expect_err("same certificate twice");
    assert_eq!(err.path, "/Users/admin-2/Certificate");
    assert!(err.message.contains("admin-1"), "{err}");
}

#[test]
fn user_placeholder_is_named_when_it_is_the_only_one_left() {
    let mut v = json("test__manifests.go__ManifestJSONWithRecoveryKey.json");
    v["RecoveryKeys"]["testRecKey1"] = RECOVERY_KEY_1.into();
    let err = parse_value(&v).expect_err("user placeholder");
    assert_eq!(err.path, "/Users/admin/Certificate");
    assert!(err.message.contains("placeholder"), "{err}");
}

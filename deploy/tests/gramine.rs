//! The Gramine manifest templates under `deploy/gramine/`, rendered with the release values of
//! their variables and parsed as TOML: production templates must attest with DCAP, measure the
//! binaries and every library they load, keep the sealed state on an encrypted mount with the
//! documented key, fix the environment and command line, carry no `insecure__` option, and be
//! sized at least as the measurements in `deploy/gramine/SIZING.md` require. Debug variants may
//! differ from their production template only in the debug keys.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quarry_deploy::{check, flatten, render, Expect, Problem};

/// Minimum enclave size and thread slots, from deploy/gramine/SIZING.md.
const COORDINATOR_MIN_ENCLAVE: u64 = 1 << 30;
const COORDINATOR_MIN_THREADS: u64 = 64;
const SIDECAR_MIN_ENCLAVE: u64 = 256 << 20;
const SIDECAR_MIN_THREADS: u64 = 16;

fn gramine_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gramine")
}

/// The variables `gramine-manifest` provides, with the paths of Gramine's Debian/Ubuntu
/// packages, plus Quarry's release values (docs/RELEASE.md).
fn vars() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        (
            "gramine.libos",
            "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so",
        ),
        (
            "gramine.runtimedir()",
            "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc",
        ),
        ("arch_libdir", "/opt/quarry/lib"),
        ("quarry_bindir", "/opt/quarry/bin"),
        ("data_dir", "/var/lib/quarry"),
        ("collateral_dir", "/var/cache/quarry/collateral"),
        ("service_dir", "/opt/hello"),
        ("service_exe", "hello"),
        ("marble_type", "hello"),
        ("coordinator_policy", "/etc/quarry/coordinator-policy.json"),
        ("marble_dir", "/var/lib/quarry-marble/hello"),
        ("enclave_size", "512M"),
        ("max_threads", "32"),
    ])
}

fn rendered(name: &str) -> String {
    let path = gramine_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    render(&text, &vars()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn parse(name: &str, text: &str) -> toml::Table {
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{name} is not valid TOML once rendered: {e}"))
}

/// Shared libraries `ldd` reports for a workspace binary built by `cargo build --workspace`.
fn libraries(bin: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(bin);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` before these tests",
        path.display()
    );
    let out = std::process::Command::new("ldd")
        .arg(&path)
        .output()
        .expect("ldd runs");
    assert!(out.status.success(), "ldd {} failed", path.display());
    let text = String::from_utf8(out.stdout).expect("ldd prints UTF-8");
    let libs: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|l| !l.starts_with("linux-vdso"))
        .map(|l| l.rsplit('/').next().unwrap_or(l).to_string())
        .collect();
    assert!(
        !libs.is_empty(),
        "ldd found no libraries in {}",
        path.display()
    );
    libs
}

fn coordinator_expect(debug: bool, libs: &[String]) -> Expect<'_> {
    Expect {
        debug,
        tee: "gramine-sgx",
        data_path: "/var/lib/quarry",
        data_key: "_sgx_mrsigner",
        trusted_paths: &[],
        passthrough_allowed: &["QUARRY_DNS_NAMES", "QUARRY_PCCS_URL"],
        libraries: libs,
        min_enclave_size: COORDINATOR_MIN_ENCLAVE,
        min_threads: COORDINATOR_MIN_THREADS,
    }
}

fn marble_expect(debug: bool, libs: &[String]) -> Expect<'_> {
    Expect {
        debug,
        tee: "gramine-sgx",
        data_path: "/marble",
        data_key: "_sgx_mrenclave",
        trusted_paths: &["/opt/quarry/coordinator-policy.json", "/service/hello"],
        passthrough_allowed: &["QUARRY_COORDINATOR_ADDR", "QUARRY_MARBLE_DNS_NAMES"],
        libraries: libs,
        min_enclave_size: SIDECAR_MIN_ENCLAVE,
        min_threads: SIDECAR_MIN_THREADS,
    }
}

#[test]
fn coordinator_template_has_every_production_property() {
    let libs = libraries("quarry-coordinator");
    let name = "quarry-coordinator.manifest.template";
    let doc = parse(name, &rendered(name));
    assert_eq!(check(&doc, &coordinator_expect(false, &libs)), vec![]);
}

#[test]
fn marble_template_has_every_production_property() {
    let libs = libraries("marble-sidecar");
    let name = "marble.manifest.template";
    let doc = parse(name, &rendered(name));
    assert_eq!(check(&doc, &marble_expect(false, &libs)), vec![]);
}

#[test]
fn debug_variants_are_debug_enclaves_and_otherwise_sound() {
    let libs = libraries("quarry-coordinator");
    let name = "quarry-coordinator-debug.manifest.template";
    let doc = parse(name, &rendered(name));
    assert_eq!(check(&doc, &coordinator_expect(true, &libs)), vec![]);

    let libs = libraries("marble-sidecar");
    let name = "marble-debug.manifest.template";
    let doc = parse(name, &rendered(name));
    assert_eq!(check(&doc, &marble_expect(true, &libs)), vec![]);
}

#[test]
fn debug_variants_differ_from_production_only_in_debug_keys() {
    let debug_only = |k: &str| {
        k.split('.').any(|p| p.starts_with("insecure__"))
            || [
                "loader.argv",
                "loader.log_level",
                "sgx.debug",
                "sgx.file_check_policy",
            ]
            .contains(&k)
    };
    for (prod, debug) in [
        (
            "quarry-coordinator.manifest.template",
            "quarry-coordinator-debug.manifest.template",
        ),
        ("marble.manifest.template", "marble-debug.manifest.template"),
    ] {
        let mut p = flatten(&parse(prod, &rendered(prod)));
        let mut d = flatten(&parse(debug, &rendered(debug)));
        p.retain(|k, _| !debug_only(k));
        d.retain(|k, _| !debug_only(k));
        assert_eq!(p, d, "{debug} drifted from {prod} outside the debug keys");
    }
}

#[test]
fn no_template_names_a_variable_outside_the_documented_list() {
    for entry in std::fs::read_dir(gramine_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "template") {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            rendered(&name);
        }
    }
}

/// A production template with `from` replaced by `to` (which must occur exactly once).
fn tampered(name: &str, from: &str, to: &str) -> toml::Table {
    let text = rendered(name);
    assert_eq!(text.matches(from).count(), 1, "{from:?} in {name}");
    parse(name, &text.replacen(from, to, 1))
}

#[test]
fn insecure_option_in_production_is_refused() {
    let libs = libraries("quarry-coordinator");
    let doc = tampered(
        "quarry-coordinator.manifest.template",
        "loader.argv = [\"quarry-coordinator\"]",
        "loader.insecure__use_host_env = true\nloader.argv = [\"quarry-coordinator\"]",
    );
    assert_eq!(
        check(&doc, &coordinator_expect(false, &libs)),
        vec![Problem::InsecureOption {
            key: "loader.insecure__use_host_env".into()
        }]
    );
}

#[test]
fn attestation_other_than_dcap_is_refused() {
    let libs = libraries("quarry-coordinator");
    let doc = tampered(
        "quarry-coordinator.manifest.template",
        "sgx.remote_attestation = \"dcap\"",
        "sgx.remote_attestation = \"none\"",
    );
    assert_eq!(
        check(&doc, &coordinator_expect(false, &libs)),
        vec![Problem::RemoteAttestation {
            actual: Some("none".into())
        }]
    );
}

#[test]
fn plain_data_mount_is_refused() {
    let libs = libraries("quarry-coordinator");
    let doc = tampered(
        "quarry-coordinator.manifest.template",
        "{ type = \"encrypted\", path = \"/var/lib/quarry\", uri = \"file:/var/lib/quarry\", key_name = \"_sgx_mrsigner\" }",
        "{ path = \"/var/lib/quarry\", uri = \"file:/var/lib/quarry\" }",
    );
    assert_eq!(
        check(&doc, &coordinator_expect(false, &libs)),
        vec![Problem::DataNotEncrypted {
            path: "/var/lib/quarry".into(),
            actual: Some("chroot".into())
        }]
    );
}

#[test]
fn coordinator_data_under_the_mrenclave_key_is_refused() {
    // The coordinator itself reads _sgx_mrenclave; Gramine forbids double use of a key.
    let libs = libraries("quarry-coordinator");
    let doc = tampered(
        "quarry-coordinator.manifest.template",
        "key_name = \"_sgx_mrsigner\"",
        "key_name = \"_sgx_mrenclave\"",
    );
    assert_eq!(
        check(&doc, &coordinator_expect(false, &libs)),
        vec![Problem::SealingKey {
            path: "/var/lib/quarry".into(),
            expected: "_sgx_mrsigner".into(),
            actual: Some("_sgx_mrenclave".into())
        }]
    );
}

#[test]
fn unmeasured_binary_is_refused() {
    let libs = libraries("quarry-coordinator");
    let doc = tampered(
        "quarry-coordinator.manifest.template",
        "  \"file:/opt/quarry/bin/quarry-coordinator\",\n",
        "",
    );
    assert_eq!(
        check(&doc, &coordinator_expect(false, &libs)),
        vec![Problem::NotTrusted {
            path: "/opt/quarry/bin/quarry-coordinator".into(),
            uri: Some("file:/opt/quarry/bin/quarry-coordinator".into())
        }]
    );
}

#[test]
fn unmeasured_library_is_refused() {
    let libs = libraries("quarry-coordinator");
    assert!(libs.iter().any(|l| l == "libgcc_s.so.1"), "{libs:?}");
    let doc = tampered(
        "quarry-coordinator.manifest.template",
        "  \"file:/opt/quarry/lib/libgcc_s.so.1\",\n",
        "",
    );
    assert_eq!(
        check(&doc, &coordinator_expect(false, &libs)),
        vec![Problem::LibraryNotTrusted {
            library: "libgcc_s.so.1".into()
        }]
    );
}

#[test]
fn unmeasured_service_or_coordinator_policy_is_refused() {
    let libs = libraries("marble-sidecar");
    let doc = tampered(
        "marble.manifest.template",
        "  \"file:/etc/quarry/coordinator-policy.json\",\n",
        "",
    );
    assert_eq!(
        check(&doc, &marble_expect(false, &libs)),
        vec![Problem::NotTrusted {
            path: "/opt/quarry/coordinator-policy.json".into(),
            uri: Some("file:/etc/quarry/coordinator-policy.json".into())
        }]
    );
    let doc = tampered("marble.manifest.template", "  \"file:/opt/hello/\",\n", "");
    assert_eq!(
        check(&doc, &marble_expect(false, &libs)),
        vec![Problem::NotTrusted {
            path: "/service/hello".into(),
            uri: Some("file:/opt/hello/hello".into())
        }]
    );
}

#[test]
fn host_chosen_tee_is_refused() {
    let libs = libraries("quarry-coordinator");
    let doc = tampered(
        "quarry-coordinator.manifest.template",
        "loader.env.QUARRY_TEE = \"gramine-sgx\"",
        "loader.env.QUARRY_TEE = { passthrough = true }",
    );
    assert_eq!(
        check(&doc, &coordinator_expect(false, &libs)),
        vec![
            Problem::Env {
                name: "QUARRY_TEE".into(),
                expected: "gramine-sgx".into(),
                actual: Some("{ passthrough = true }".into())
            },
            Problem::Passthrough {
                name: "QUARRY_TEE".into()
            }
        ]
    );
}

#[test]
fn allowed_files_over_the_sealed_state_are_refused() {
    let libs = libraries("quarry-coordinator");
    let doc = tampered(
        "quarry-coordinator.manifest.template",
        "  \"file:/var/cache/quarry/collateral/\",\n",
        "  \"file:/var/cache/quarry/collateral/\",\n  \"file:/var/lib/quarry/\",\n",
    );
    assert_eq!(
        check(&doc, &coordinator_expect(false, &libs)),
        vec![Problem::AllowedOverlap {
            allowed: "file:/var/lib/quarry/".into(),
            protected: "file:/var/lib/quarry".into()
        }]
    );
}

#[test]
fn undersized_enclave_is_refused() {
    let libs = libraries("quarry-coordinator");
    let doc = tampered(
        "quarry-coordinator.manifest.template",
        "sgx.enclave_size = \"1G\"",
        "sgx.enclave_size = \"768M\"",
    );
    assert_eq!(
        check(&doc, &coordinator_expect(false, &libs)),
        vec![Problem::EnclaveSize {
            actual: "768M".into(),
            minimum: COORDINATOR_MIN_ENCLAVE
        }]
    );
}

//! Every container the injector starts `marble-sidecar` in, parsed with the sidecar's own
//! clap definition and resolved with its own resolver against the container's env: a flag
//! the sidecar lacks (the mesh proxy once got `--state-dir`), a setting it needs but does not
//! get (`--sim-measure`), or a protected variable in the env fails here, not in a pod.
use std::collections::HashMap;

use base64::Engine as _;
use clap::Parser as _;
use marble_sidecar::config::{Mode, PROTECTED_ENV};
use marble_sidecar::{Cli, Config, CoordinatorTrust};
use quarry_injector::{mutate, AdmissionReview, InjectorConfig, Tee, PROTECTED_ENV as REFUSED_ENV};
use serde_json::{json, Value};

const SIDECAR: &str = "registry.example/quarry/marble-sidecar@sha256:abababababababababababababababababababababababababababababababab";
const COORDINATOR: &str = "quarry-mesh.quarry.svc.cluster.local:2001";

fn fixture(name: &str) -> AdmissionReview {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    serde_json::from_str(&text).expect("fixture is an AdmissionReview")
}

fn config(tee: Tee, mesh_proxy: bool) -> InjectorConfig {
    let mut c = InjectorConfig::new(COORDINATOR, tee, SIDECAR);
    if tee == Tee::Simulated {
        c.sim_platform_secret = Some("quarry-sim-platform".into());
    }
    c.mesh_proxy = mesh_proxy;
    c
}

fn annotate(mut review: AdmissionReview, key: &str, value: &str) -> AdmissionReview {
    let object = review
        .request
        .as_mut()
        .and_then(|r| r.object.as_mut())
        .expect("fixture has an object");
    let annotations = object["metadata"]
        .as_object_mut()
        .expect("metadata")
        .entry("annotations")
        .or_insert_with(|| json!({}));
    annotations[key] = json!(value);
    review
}

/// The pod after the injector's patch.
fn inject(review: AdmissionReview, config: &InjectorConfig) -> Value {
    let mut pod = review
        .request
        .as_ref()
        .and_then(|r| r.object.clone())
        .expect("object");
    let response = mutate(review, config).response.expect("a response");
    assert!(response.allowed, "refused: {:?}", response.status);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response.patch.expect("a patch"))
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("RFC 6902 patch");
    json_patch::patch(&mut pod, &patch).expect("the patch applies");
    pod
}

/// Containers and init containers whose command runs marble-sidecar.
fn sidecar_containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .filter(|c| {
            c["command"][0]
                .as_str()
                .is_some_and(|p| p.ends_with("/marble-sidecar"))
        })
        .collect()
}

/// What the sidecar would make of the container's command line and env.
fn resolve(c: &Value) -> Result<Config, String> {
    let argv: Vec<&str> = c["command"]
        .as_array()
        .expect("a command")
        .iter()
        .map(|a| a.as_str().expect("string arguments"))
        .collect();
    let cli = Cli::try_parse_from(&argv).map_err(|e| e.to_string())?;
    // A variable from valueFrom is present with a value unknown here.
    let env: HashMap<String, String> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["name"].as_str().expect("env name").to_string();
            (name, e["value"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    Config::resolve(cli, |k| env.get(k).cloned()).map_err(|e| e.to_string())
}

#[test]
fn every_injected_sidecar_command_line_parses_and_resolves() {
    let mut checked = 0;
    for tee in [Tee::Simulated, Tee::GramineSgx, Tee::Tdx, Tee::Snp] {
        let mut cases = vec![
            (
                "entrypoint-command.json",
                fixture("entrypoint-command.json"),
                false,
            ),
            (
                "entrypoint-no-command.json",
                fixture("entrypoint-no-command.json"),
                false,
            ),
            ("two-marbles.json", fixture("two-marbles.json"), false),
        ];
        if tee.pod_is_one_tee() {
            cases.push((
                "entrypoint-command.json + workload-api",
                annotate(
                    fixture("entrypoint-command.json"),
                    "quarry/workload-api",
                    "true",
                ),
                false,
            ));
            cases.push(("native-sidecar.json", fixture("native-sidecar.json"), false));
            cases.push((
                "native-sidecar.json + meshProxy",
                fixture("native-sidecar.json"),
                true,
            ));
        }
        for (name, review, mesh_proxy) in cases {
            let pod = inject(review, &config(tee, mesh_proxy));
            let sidecars = sidecar_containers(&pod);
            assert!(!sidecars.is_empty(), "{tee} {name}: no sidecar found");
            for c in sidecars {
                let what = format!("{tee} {name} {}", c["name"]);
                let resolved = resolve(c).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(
                    resolved.coordinator.as_str(),
                    format!("https://{COORDINATOR}/"),
                    "{what}"
                );
                assert_eq!(
                    resolved.trust,
                    CoordinatorTrust::PinnedRoot("/quarry/trust/root-ca.pem".into()),
                    "{what}"
                );
                assert!(!resolved.marble_type.is_empty(), "{what}");
                let sub = c["command"][1].as_str().expect("subcommand");
                match (&resolved.mode, sub) {
                    (Mode::Run { .. }, "run") => {
                        assert_eq!(
                            resolved.workload_api.is_some(),
                            name.ends_with("workload-api"),
                            "{what}"
                        );
                    }
                    (Mode::Activate { out, .. }, "activate") => {
                        assert_eq!(out.to_str(), Some("/quarry/run"), "{what}");
                    }
                    (Mode::Proxy { .. }, "proxy") => assert!(mesh_proxy, "{what}"),
                    (mode, sub) => panic!("{what}: {sub} resolved to {mode:?}"),
                }
                checked += 1;
            }
        }
    }
    // 3 TEEs × (1 + 1 + 2 + 1 + 1 + 2) and SGX's 1 + 1 + 2.
    assert_eq!(checked, 3 * 8 + 4);
}

/// The checker above can fail: the proxy command line the injector used to emit does not
/// parse, and a protected variable in an injected container's env does not resolve.
#[test]
fn a_flag_the_sidecar_lacks_or_a_protected_variable_fails_the_check() {
    let old_proxy = json!({"command": ["/usr/local/bin/marble-sidecar", "proxy", "--state-dir", "/quarry/run"]});
    let err = resolve(&old_proxy).unwrap_err();
    assert!(err.contains("--state-dir"), "{err}");

    let pod = inject(fixture("entrypoint-command.json"), &config(Tee::Tdx, false));
    let mut app = sidecar_containers(&pod)[0].clone();
    resolve(&app).expect("as injected");
    app["env"]
        .as_array_mut()
        .expect("the fixture has env")
        .push(json!({"name": "QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY", "value": "true"}));
    let err = resolve(&app).unwrap_err();
    assert!(
        err.starts_with("QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY set in the environment"),
        "{err}"
    );
}

#[test]
fn the_injectors_refused_variables_are_the_sidecars_protected_ones() {
    // One list in quarry-api; this pins that both binaries really use it.
    assert_eq!(REFUSED_ENV, PROTECTED_ENV);
}

/// Values from the pod are passed as `--flag=value`, so an annotation cannot smuggle in a flag.
#[test]
fn a_pod_value_that_looks_like_a_flag_stays_a_value() {
    let review = annotate(
        fixture("entrypoint-command.json"),
        "quarry/marble-type.storage-service",
        "--insecure-skip-coordinator-verify",
    );
    let review = annotate(
        review,
        "quarry/dns-names",
        "--coordinator=evil.example:2001",
    );
    let pod = inject(review, &config(Tee::Tdx, false));
    let resolved = resolve(sidecar_containers(&pod)[0]).expect("resolves");
    assert_eq!(resolved.marble_type, "--insecure-skip-coordinator-verify");
    assert_eq!(resolved.dns_names, ["--coordinator=evil.example:2001"]);
    assert_eq!(
        resolved.trust,
        CoordinatorTrust::PinnedRoot("/quarry/trust/root-ca.pem".into())
    );
    assert_eq!(
        resolved.coordinator.as_str(),
        format!("https://{COORDINATOR}/")
    );
}

//! Fixture tests: AdmissionReview in (tests/fixtures/*.json), JSON patch out, the patch
//! applied to the request's pod with the `json-patch` crate, the resulting pod checked.
//! `UPDATE_GOLDEN=1 cargo test -p quarry-injector` rewrites the `*.patch.json` files.
use base64::Engine as _;
use quarry_injector::{
    mutate, AdmissionResponse, AdmissionReview, InjectorConfig, Tee, PROTECTED_ENV,
    WORKLOAD_API_ENV,
};
use serde_json::{json, Value};

const SIDECAR: &str = "registry.example/quarry/marble-sidecar@sha256:abababababababababababababababababababababababababababababababab";
const COORDINATOR: &str = "quarry-mesh.quarry.svc.cluster.local:2001";

fn fixture(name: &str) -> AdmissionReview {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    serde_json::from_str(&text).expect("fixture is an AdmissionReview")
}

fn config(tee: Tee) -> InjectorConfig {
    let mut c = InjectorConfig::new(COORDINATOR, tee, SIDECAR);
    if tee == Tee::Simulated {
        c.sim_platform_secret = Some("quarry-sim-platform".into());
    }
    c
}

fn with_annotation(mut review: AdmissionReview, key: &str, value: Option<&str>) -> AdmissionReview {
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
    match value {
        Some(v) => annotations[key] = json!(v),
        None => {
            annotations.as_object_mut().expect("map").remove(key);
        }
    }
    review
}

/// Admit: returns the response, the patch and the pod after applying it.
fn admit(review: AdmissionReview, config: &InjectorConfig) -> (AdmissionResponse, Value, Value) {
    let uid = review.request.as_ref().expect("request").uid.clone();
    let mut pod = review
        .request
        .as_ref()
        .and_then(|r| r.object.clone())
        .expect("object");
    let out = mutate(review, config);
    assert_eq!(out.api_version, "admission.k8s.io/v1");
    assert_eq!(out.kind, "AdmissionReview");
    let response = out.response.expect("a response");
    assert_eq!(response.uid, uid, "the response echoes the request uid");
    assert!(response.allowed, "refused: {:?}", response.status);
    let Some(b64) = &response.patch else {
        return (response, Value::Null, pod);
    };
    assert_eq!(response.patch_type.as_deref(), Some("JSONPatch"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("patch is base64");
    let patch_value: Value = serde_json::from_slice(&bytes).expect("patch is JSON");
    let patch: json_patch::Patch =
        serde_json::from_value(patch_value.clone()).expect("RFC 6902 patch");
    json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod");
    (response, patch_value, pod)
}

fn refusal(review: AdmissionReview, config: &InjectorConfig) -> String {
    let out = mutate(review, config).response.expect("a response");
    assert!(!out.allowed, "admitted, expected a refusal");
    assert!(out.patch.is_none() && out.patch_type.is_none());
    let status = out.status.expect("a refusal has a status");
    assert_eq!(status.code, 403);
    status.message
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} entry {name}"))
}

fn env<'a>(c: &'a Value, name: &str) -> Vec<&'a str> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["name"] == name)
        .filter_map(|e| e["value"].as_str())
        .collect()
}

/// The value of `name=VALUE` among the sidecar's own flags (before `--`), if it is there.
fn flag<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    let command: Vec<&str> = c["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .take_while(|a| *a != "--")
        .collect();
    let prefix = format!("{name}=");
    command.iter().find_map(|a| a.strip_prefix(&prefix))
}

/// The sidecar's settings reach it on its command line, behind --settings-from-args, and
/// none of its protected variables is in the container's env.
fn assert_settings_on_the_command_line(c: &Value) {
    assert_eq!(
        c["command"][2], "--settings-from-args",
        "{}: the flag follows the subcommand",
        c["name"]
    );
    let names: Vec<&str> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for name in names {
        assert!(
            !PROTECTED_ENV.contains(&name),
            "{}: {name} in env",
            c["name"]
        );
    }
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    container(pod, "volumes", name)
}

fn mount<'a>(c: &'a Value, path: &str) -> &'a Value {
    c["volumeMounts"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["mountPath"] == path))
        .unwrap_or_else(|| panic!("no mount at {path} in {}", c["name"]))
}

fn golden(name: &str, patch: &Value) {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let pretty = serde_json::to_string_pretty(patch).expect("serialisable") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &pretty).expect("golden written");
    }
    let expected =
        std::fs::read_to_string(&path).expect("golden file (UPDATE_GOLDEN=1 creates it)");
    assert_eq!(pretty, expected, "patch differs from {name}");
}

#[test]
fn entrypoint_mode_wraps_the_command_and_sets_the_contract_env() {
    let mut cfg = config(Tee::Tdx);
    cfg.runtime_class = Some("kata-qemu-tdx".into());
    let (resp, patch, pod) = admit(fixture("entrypoint-command.json"), &cfg);
    golden("entrypoint-command.patch.json", &patch);
    assert!(resp.warnings.is_empty());

    let app = container(&pod, "containers", "storage-service");
    assert_eq!(
        app["command"],
        json!([
            "/quarry/bin/marble-sidecar",
            "run",
            "--settings-from-args",
            format!("--coordinator={COORDINATOR}"),
            "--marble-type=storage-service",
            "--uuid-file=/quarry/id/uuid",
            "--tee=tdx",
            "--coordinator-root-ca=/quarry/trust/root-ca.pem",
            "--dns-names=storage-service,storage-service.ocm,storage-service.ocm.svc,storage-service.ocm.svc.cluster.local",
            "--",
            "/app/storage-service",
            "--profile",
            "API"
        ])
    );
    assert!(app.get("args").is_none(), "args moved behind --");
    assert_settings_on_the_command_line(app);
    assert_eq!(
        app["env"],
        json!([{"name": "LOG_FORMAT", "value": "json"}]),
        "the pod's env, and nothing of the sidecar's"
    );
    assert_eq!(flag(app, "--sim-platform"), None);
    assert_eq!(mount(app, "/quarry/bin")["readOnly"], true);
    assert_eq!(mount(app, "/quarry/run")["subPath"], "storage-service");
    assert_eq!(mount(app, "/quarry/trust")["readOnly"], true);

    let install = &pod["spec"]["initContainers"][0];
    assert_eq!(install["name"], "quarry-install");
    assert_eq!(install["image"], SIDECAR);
    assert_eq!(
        install["command"],
        json!([
            "cp",
            "/usr/local/bin/marble-sidecar",
            "/quarry/bin/marble-sidecar"
        ])
    );
    assert!(install.get("restartPolicy").is_none());

    assert_eq!(
        volume(&pod, "quarry-id")["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.uid"
    );
    assert_eq!(volume(&pod, "quarry-run")["emptyDir"]["medium"], "Memory");
    assert_eq!(
        volume(&pod, "quarry-trust")["configMap"]["name"],
        "quarry-root-ca"
    );
    assert_eq!(
        volume(&pod, "quarry-trust")["configMap"]["items"][0]["path"],
        "root-ca.pem"
    );
    assert_eq!(pod["spec"]["runtimeClassName"], "kata-qemu-tdx");
    assert_eq!(
        pod["metadata"]["annotations"]["quarry/injected"],
        "entrypoint"
    );
    assert!(
        pod["spec"].get("tolerations").is_none(),
        "no SGX toleration for TDX"
    );
}

#[test]
fn entrypoint_from_the_annotation_when_the_container_sets_no_command() {
    let (_, _, pod) = admit(
        fixture("entrypoint-no-command.json"),
        &config(Tee::GramineSgx),
    );
    let nats = container(&pod, "containers", "nats");
    let command = nats["command"].as_array().expect("a command");
    let tail = &command[command.len() - 4..];
    assert_eq!(
        tail,
        json!(["--", "nats-server", "-c", "/quarry/run/nats-server.conf"])
            .as_array()
            .expect("array")
            .as_slice()
    );
    assert_eq!(command[1], "run");
    assert!(nats.get("args").is_none());
    assert_settings_on_the_command_line(nats);
    assert_eq!(flag(nats, "--tee"), Some("gramine-sgx"));
    assert_eq!(
        nats["resources"]["limits"]["sgx.intel.com/epc"], "512Mi",
        "the pod's EPC size wins"
    );
    assert_eq!(nats["resources"]["limits"]["sgx.intel.com/enclave"], "1");
    assert_eq!(nats["resources"]["limits"]["sgx.intel.com/provision"], "1");
    assert_eq!(nats["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(mount(nats, "/data")["name"], "data", "existing mounts kept");
    let tolerations = pod["spec"]["tolerations"].as_array().expect("tolerations");
    assert_eq!(tolerations.len(), 2);
    assert_eq!(tolerations[1]["key"], "sgx.intel.com/epc");
    assert_eq!(volume(&pod, "data")["emptyDir"], json!({}));
    assert_eq!(
        pod["metadata"]["annotations"]["quarry/entrypoint"],
        "[\"nats-server\"]"
    );
}

#[test]
fn resource_injection_can_be_disabled_per_pod() {
    let review = with_annotation(
        fixture("entrypoint-command.json"),
        "quarry/resource-injection",
        Some("disabled"),
    );
    let (_, _, pod) = admit(review, &config(Tee::GramineSgx));
    let app = container(&pod, "containers", "storage-service");
    assert!(app.get("resources").is_none());
    assert!(pod["spec"].get("tolerations").is_none());
}

#[test]
fn unknown_entrypoint_is_refused_naming_the_annotation() {
    let review = with_annotation(
        fixture("entrypoint-no-command.json"),
        "quarry/entrypoint",
        None,
    );
    let message = refusal(review, &config(Tee::GramineSgx));
    assert!(
        message.contains("container \"nats\" sets no command"),
        "{message}"
    );
    assert!(message.contains("quarry/entrypoint.nats"), "{message}");
}

#[test]
fn malformed_entrypoint_annotations_are_refused() {
    for bad in ["[]", "nats-server", "[\"\"]", "[1]"] {
        let review = with_annotation(
            fixture("entrypoint-no-command.json"),
            "quarry/entrypoint",
            Some(bad),
        );
        let message = refusal(review, &config(Tee::Tdx));
        assert!(
            message.contains("annotation quarry/entrypoint must be a non-empty JSON array"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn native_sidecar_mode_activates_into_a_memory_volume_before_other_init_containers() {
    let (_, _, pod) = admit(fixture("native-sidecar.json"), &config(Tee::Snp));
    let inits = pod["spec"]["initContainers"]
        .as_array()
        .expect("init containers");
    let names: Vec<&str> = inits.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["quarry-activate-app", "migrate"]);
    let activate = &inits[0];
    assert_eq!(
        activate["command"],
        json!([
            "/usr/local/bin/marble-sidecar",
            "activate",
            "--settings-from-args",
            format!("--coordinator={COORDINATOR}"),
            "--marble-type=well-known-service",
            "--uuid-file=/quarry/id/uuid",
            "--tee=snp",
            "--coordinator-root-ca=/quarry/trust/root-ca.pem",
            "--dns-names=well-known-service.ocm.svc,wk.example.org",
            "--out",
            "/quarry/run"
        ])
    );
    assert!(activate.get("env").is_none(), "everything is a flag");
    assert!(
        activate.get("restartPolicy").is_none(),
        "activation runs to completion"
    );
    assert_eq!(
        activate["securityContext"]["runAsUser"], 65532,
        "files 0600 stay readable by the service"
    );
    assert_eq!(activate["securityContext"]["runAsGroup"], 65532);
    assert_eq!(mount(activate, "/quarry/run")["subPath"], "app");

    let app = container(&pod, "containers", "app");
    assert!(
        app.get("command").is_none(),
        "the service's command is untouched"
    );
    assert_eq!(env(app, "QUARRY_ENV_FILE"), ["/quarry/run/env"]);
    let run = mount(app, "/quarry/run");
    assert_eq!(
        (run["readOnly"].as_bool(), run["subPath"].as_str()),
        (Some(true), Some("app"))
    );
    assert!(pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .all(|v| v["name"] != "quarry-bin"));
    assert_eq!(
        pod["metadata"]["annotations"]["quarry/injected"],
        "native-sidecar"
    );
}

#[test]
fn native_sidecar_with_mesh_proxy_adds_a_restart_always_init_container() {
    let mut cfg = config(Tee::Tdx);
    cfg.mesh_proxy = true;
    let (_, _, pod) = admit(fixture("native-sidecar.json"), &cfg);
    let inits = pod["spec"]["initContainers"]
        .as_array()
        .expect("init containers");
    let names: Vec<&str> = inits.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        ["quarry-activate-app", "quarry-proxy-app", "migrate"]
    );
    assert_eq!(inits[1]["restartPolicy"], "Always");
    // The proxy activates on its own, with the same settings (and so the same UUID file) as
    // the activation, and takes no flag the sidecar lacks (it once got `--state-dir`).
    let proxy = &inits[1];
    assert_eq!(proxy["command"][1], "proxy");
    assert_settings_on_the_command_line(proxy);
    assert_eq!(
        proxy["command"].as_array().expect("command")[2..],
        inits[0]["command"].as_array().expect("command")[2..9],
        "the activation's settings, without --out"
    );
    assert_eq!(proxy["command"].as_array().map(Vec::len), Some(9));
    assert!(proxy.get("env").is_none());
}

#[test]
fn native_sidecar_is_refused_for_sgx_because_secrets_would_leave_the_enclave() {
    let message = refusal(fixture("native-sidecar.json"), &config(Tee::GramineSgx));
    assert!(
        message.contains("would leave the enclave with TEE gramine-sgx"),
        "{message}"
    );
}

#[test]
fn several_marbles_in_one_pod_get_generated_uuids_and_their_own_types() {
    let (_, _, pod) = admit(fixture("two-marbles.json"), &config(Tee::Tdx));
    let signer = container(&pod, "containers", "signer");
    let engine = container(&pod, "containers", "crypto-engine");
    assert_eq!(flag(signer, "--marble-type"), Some("signer"));
    assert_eq!(flag(engine, "--marble-type"), Some("signer-crypto-engine"));
    assert_eq!(flag(signer, "--uuid-file"), Some("/quarry/id/signer.uuid"));
    assert_eq!(
        flag(engine, "--uuid-file"),
        Some("/quarry/id/crypto-engine.uuid")
    );
    assert_settings_on_the_command_line(signer);
    assert_settings_on_the_command_line(engine);
    let command = engine["command"].as_array().expect("a command");
    assert_eq!(
        command[..2],
        [json!("/quarry/bin/marble-sidecar"), json!("run")]
    );
    assert_eq!(
        command[command.len() - 2..],
        [json!("--"), json!("/opt/engine")]
    );
    assert_eq!(
        mount(engine, "/quarry/id")["readOnly"],
        false,
        "the sidecar creates the UUID file"
    );
    assert_eq!(volume(&pod, "quarry-id")["emptyDir"]["medium"], "Memory");
    let shipper = container(&pod, "containers", "log-shipper");
    assert!(
        shipper.get("env").is_none() && shipper.get("command").is_none(),
        "unlisted containers untouched"
    );
    let installs = pod["spec"]["initContainers"].as_array().expect("inits");
    assert_eq!(
        installs.len(),
        1,
        "one binary copy serves every wrapped container"
    );
}

#[test]
fn pod_uid_cannot_identify_several_marbles() {
    let review = with_annotation(fixture("two-marbles.json"), "quarry/uuid", Some("pod-uid"));
    let message = refusal(review, &config(Tee::Tdx));
    assert!(message.contains("2 containers are wrapped"), "{message}");
}

#[test]
fn several_containers_without_a_choice_are_refused() {
    let review = with_annotation(fixture("two-marbles.json"), "quarry/containers", None);
    let message = refusal(review, &config(Tee::Tdx));
    assert!(message.contains("the pod has 3 containers"), "{message}");
    let review = with_annotation(
        fixture("two-marbles.json"),
        "quarry/containers",
        Some("signer,nope"),
    );
    let message = refusal(review, &config(Tee::Tdx));
    assert!(message.contains("container \"nope\""), "{message}");
}

#[test]
fn unknown_annotation_values_are_refused() {
    for (key, value) in [
        ("quarry/injection", "sidecar"),
        ("quarry/uuid", "random"),
        ("quarry/resource-injection", "off"),
        ("quarry/workload-api", "yes"),
    ] {
        let review = with_annotation(fixture("entrypoint-command.json"), key, Some(value));
        let message = refusal(review, &config(Tee::Tdx));
        assert!(
            message.contains(&format!("annotation {key} has unknown value {value:?}")),
            "{message}"
        );
    }
}

#[test]
fn simulated_tee_mounts_the_platform_and_warns() {
    let (resp, _, pod) = admit(fixture("entrypoint-command.json"), &config(Tee::Simulated));
    let app = container(&pod, "containers", "storage-service");
    assert_eq!(flag(app, "--sim-platform"), Some("/quarry/sim"));
    assert_eq!(flag(app, "--tee"), Some("simulated"));
    assert_settings_on_the_command_line(app);
    assert_eq!(
        volume(&pod, "quarry-sim")["secret"]["secretName"],
        "quarry-sim-platform"
    );
    assert!(resp.warnings.iter().any(|w| w.contains("simulated TEE")));
}

#[test]
fn an_injected_pod_is_not_injected_twice() {
    let cfg = config(Tee::Tdx);
    let mut review = fixture("entrypoint-command.json");
    let (_, _, pod) = admit(review.clone(), &cfg);
    if let Some(r) = review.request.as_mut() {
        r.object = Some(pod);
    }
    let message = refusal(review, &cfg);
    assert!(
        message.contains("already has annotation \"quarry/injected\""),
        "{message}"
    );
}

#[test]
fn unlabelled_pods_and_other_operations_pass_unchanged() {
    let (resp, patch, _) = admit(fixture("unlabelled.json"), &config(Tee::Tdx));
    assert!(patch.is_null() && resp.patch_type.is_none());
    let mut review = fixture("entrypoint-command.json");
    if let Some(r) = review.request.as_mut() {
        r.operation = "UPDATE".into();
    }
    let (_, patch, _) = admit(review, &config(Tee::Tdx));
    assert!(patch.is_null());
}

#[test]
fn undecodable_objects_and_empty_reviews_are_refused() {
    let mut review = fixture("entrypoint-command.json");
    if let Some(r) = review.request.as_mut() {
        r.object = Some(
            json!({"metadata": {"labels": {"quarry/marble-type": "x"}}, "spec": {"containers": "nope"}}),
        );
    }
    let message = refusal(review, &config(Tee::Tdx));
    assert!(
        message.contains("not a Pod the injector can read"),
        "{message}"
    );
    let out = mutate(AdmissionReview::default(), &config(Tee::Tdx));
    assert!(!out.response.expect("response").allowed);
}

/// A pod creator cannot choose whom the sidecar trusts or which marble type it is: the pod's
/// own env would win over the injector's, so a wrapped container setting any of these is
/// refused, naming the container and the variable. (Choosing another type by label gets no
/// identity either: the coordinator activates a type only with evidence of its package.)
#[test]
fn a_pod_cannot_set_the_sidecars_trust_or_marble_type_through_env() {
    // The list is the sidecar's own (both read quarry_api::sidecar_env), so it covers the
    // MarbleRun EDG_* aliases, the UUID file, DNS names, TEE and CRL interval too; the
    // Workload API variable has its refusal of its own (below).
    for name in PROTECTED_ENV.into_iter().filter(|n| *n != WORKLOAD_API_ENV) {
        let mut review = fixture("entrypoint-command.json");
        let object = review
            .request
            .as_mut()
            .and_then(|r| r.object.as_mut())
            .expect("fixture has an object");
        object["spec"]["containers"][0]["env"]
            .as_array_mut()
            .expect("the fixture container has env")
            .push(json!({"name": name, "value": "true"}));
        let message = refusal(review, &config(Tee::Tdx));
        assert!(
            message.contains(&format!("container \"storage-service\" sets {name} itself"))
                && message.contains("--settings-from-args"),
            "{name}: {message}"
        );
    }
}

/// The socket the injected sidecar serves with `quarry/workload-api: "true"`.
const WORKLOAD_SOCKET: &str = "unix:///quarry/spiffe/agent/agent.sock";

/// `review` with `env` appended to container `index` (creating its env list if needed).
fn with_env(mut review: AdmissionReview, index: usize, name: &str, value: &str) -> AdmissionReview {
    let object = review
        .request
        .as_mut()
        .and_then(|r| r.object.as_mut())
        .expect("fixture has an object");
    let container = &mut object["spec"]["containers"][index];
    if container.get("env").is_none() {
        container["env"] = json!([]);
    }
    container["env"]
        .as_array_mut()
        .expect("env is a list")
        .push(json!({"name": name, "value": value}));
    review
}

fn volume_names(pod: &Value) -> Vec<&str> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect()
}

#[test]
fn workload_api_annotation_serves_the_socket_in_a_shared_memory_volume() {
    for tee in [Tee::Tdx, Tee::Snp, Tee::Simulated] {
        let review = with_annotation(
            fixture("entrypoint-command.json"),
            "quarry/workload-api",
            Some("true"),
        );
        let (_, _, pod) = admit(review, &config(tee));
        let app = container(&pod, "containers", "storage-service");
        let command = app["command"].as_array().expect("a command");
        let tail = &command[command.len() - 5..];
        assert_eq!(
            tail,
            json!([
                format!("--workload-api={WORKLOAD_SOCKET}"),
                "--",
                "/app/storage-service",
                "--profile",
                "API"
            ])
            .as_array()
            .expect("array")
            .as_slice(),
            "{tee}"
        );
        assert_settings_on_the_command_line(app);
        assert_eq!(env(app, "SPIFFE_ENDPOINT_SOCKET"), [WORKLOAD_SOCKET]);
        assert!(
            env(app, "QUARRY_WORKLOAD_API").is_empty(),
            "the flag, not the variable"
        );
        let m = mount(app, "/quarry/spiffe");
        assert_eq!(m["name"], "quarry-spiffe");
        assert_eq!(m["subPath"], "storage-service");
        assert!(
            m.get("readOnly").is_none(),
            "the sidecar creates the socket there"
        );
        // The socket lies in a directory below the mount, not in the emptyDir's own (0777)
        // directory, where the sidecar refuses to bind.
        let socket = WORKLOAD_SOCKET.trim_start_matches("unix://");
        let dir = std::path::Path::new(socket).parent().expect("a directory");
        assert!(dir.starts_with("/quarry/spiffe") && dir != std::path::Path::new("/quarry/spiffe"));
        assert_eq!(
            volume(&pod, "quarry-spiffe")["emptyDir"],
            json!({"medium": "Memory", "sizeLimit": "1Mi"})
        );
        // The rest of the wrapping is unchanged.
        assert_eq!(mount(app, "/quarry/run")["subPath"], "storage-service");
        assert_eq!(flag(app, "--marble-type"), Some("storage-service"));
    }
}

#[test]
fn without_the_workload_api_annotation_nothing_of_it_is_added() {
    for value in [None, Some("false"), Some("")] {
        let review = with_annotation(
            fixture("entrypoint-command.json"),
            "quarry/workload-api",
            value,
        );
        let (_, patch, pod) = admit(review, &config(Tee::Tdx));
        let app = container(&pod, "containers", "storage-service");
        assert_eq!(flag(app, "--workload-api"), None, "{value:?}");
        assert!(env(app, "SPIFFE_ENDPOINT_SOCKET").is_empty());
        assert!(!volume_names(&pod).contains(&"quarry-spiffe"));
        assert!(!patch.to_string().contains("spiffe"), "{value:?}: {patch}");
    }
}

#[test]
fn each_wrapped_container_gets_its_own_workload_api_directory() {
    let review = with_annotation(
        fixture("two-marbles.json"),
        "quarry/workload-api",
        Some("true"),
    );
    let (_, _, pod) = admit(review, &config(Tee::Tdx));
    for name in ["signer", "crypto-engine"] {
        let c = container(&pod, "containers", name);
        assert_eq!(flag(c, "--workload-api"), Some(WORKLOAD_SOCKET), "{name}");
        assert_settings_on_the_command_line(c);
        assert_eq!(env(c, "SPIFFE_ENDPOINT_SOCKET"), [WORKLOAD_SOCKET]);
        assert_eq!(mount(c, "/quarry/spiffe")["subPath"], name);
    }
    let shipper = container(&pod, "containers", "log-shipper");
    assert!(
        shipper.get("env").is_none() && shipper.get("volumeMounts").is_none(),
        "an unwrapped container gets neither the socket nor its variable"
    );
    assert_eq!(
        volume_names(&pod)
            .iter()
            .filter(|n| **n == "quarry-spiffe")
            .count(),
        1
    );
}

#[test]
fn a_pod_cannot_set_the_sidecars_workload_api_through_env() {
    // With the annotation or without it, in either mode: the variable would make the sidecar
    // hand out the marble's key at a socket of the pod's choosing.
    let cases = [
        ("entrypoint-command.json", "storage-service", None, Tee::Tdx),
        (
            "entrypoint-command.json",
            "storage-service",
            Some("true"),
            Tee::Tdx,
        ),
        (
            "entrypoint-command.json",
            "storage-service",
            None,
            Tee::GramineSgx,
        ),
        ("native-sidecar.json", "app", None, Tee::Snp),
    ];
    for (fixture_name, name, annotation, tee) in cases {
        let review = with_env(
            fixture(fixture_name),
            0,
            "QUARRY_WORKLOAD_API",
            "unix:///tmp/agent.sock",
        );
        let review = with_annotation(review, "quarry/workload-api", annotation);
        let message = refusal(review, &config(tee));
        assert!(
            message.contains(&format!(
                "container \"{name}\" sets QUARRY_WORKLOAD_API itself"
            )),
            "{fixture_name} {annotation:?} {tee}: {message}"
        );
    }
    // The application's own variable is not the sidecar's: allowed, and kept as the pod set it.
    let review = with_env(
        fixture("entrypoint-command.json"),
        0,
        "SPIFFE_ENDPOINT_SOCKET",
        "unix:///elsewhere.sock",
    );
    let review = with_annotation(review, "quarry/workload-api", Some("true"));
    let (_, _, pod) = admit(review, &config(Tee::Tdx));
    let app = container(&pod, "containers", "storage-service");
    assert_eq!(
        env(app, "SPIFFE_ENDPOINT_SOCKET"),
        ["unix:///elsewhere.sock"]
    );
}

#[test]
fn workload_api_is_refused_for_sgx_because_the_key_would_leave_the_enclave() {
    let review = with_annotation(
        fixture("entrypoint-command.json"),
        "quarry/workload-api",
        Some("true"),
    );
    let message = refusal(review, &config(Tee::GramineSgx));
    assert!(
        message.starts_with("quarry-injector: quarry/workload-api: ")
            && message.contains("would leave the enclave with TEE gramine-sgx"),
        "{message}"
    );
    // The refusal is the annotation's: the same pod without it is wrapped for SGX.
    let review = with_annotation(
        fixture("entrypoint-command.json"),
        "quarry/workload-api",
        Some("false"),
    );
    let (_, _, pod) = admit(review, &config(Tee::GramineSgx));
    let app = container(&pod, "containers", "storage-service");
    assert_eq!(app["command"][1], "run");
    assert!(env(app, "SPIFFE_ENDPOINT_SOCKET").is_empty());
}

#[test]
fn workload_api_in_native_sidecar_mode_is_refused_naming_entrypoint_mode() {
    for mesh_proxy in [false, true] {
        let mut cfg = config(Tee::Snp);
        cfg.mesh_proxy = mesh_proxy;
        let review = with_annotation(
            fixture("native-sidecar.json"),
            "quarry/workload-api",
            Some("true"),
        );
        let message = refusal(review, &cfg);
        assert!(
            message.contains("quarry/workload-api needs the sidecar to keep running")
                && message.contains("use quarry/injection: entrypoint"),
            "{message}"
        );
    }
}

#[test]
fn unknown_workload_api_values_are_refused() {
    for value in ["yes", "1", "on", "TRUE", "enabled", "true,false"] {
        let review = with_annotation(
            fixture("entrypoint-command.json"),
            "quarry/workload-api",
            Some(value),
        );
        let message = refusal(review, &config(Tee::Tdx));
        assert_eq!(
            message,
            format!(
                "quarry-injector: annotation quarry/workload-api has unknown value {value:?} (allowed: true, false)"
            )
        );
    }
}

#[test]
fn the_workload_api_volume_name_is_reserved() {
    let mut review = with_annotation(
        fixture("entrypoint-command.json"),
        "quarry/workload-api",
        Some("true"),
    );
    let object = review
        .request
        .as_mut()
        .and_then(|r| r.object.as_mut())
        .expect("fixture has an object");
    object["spec"]["volumes"] = json!([{"name": "quarry-spiffe", "emptyDir": {}}]);
    let message = refusal(review, &config(Tee::Tdx));
    assert!(
        message.contains("the pod already has volume \"quarry-spiffe\""),
        "{message}"
    );
}

/// envFrom keys are invisible to the webhook: it admits the pod (refusing all envFrom would
/// break ordinary configuration), warns, and relies on the sidecar's --settings-from-args,
/// which refuses to start if such a key is one of its protected variables.
#[test]
fn env_from_is_admitted_with_a_warning_and_left_to_the_sidecars_check() {
    let mut review = fixture("entrypoint-command.json");
    review
        .request
        .as_mut()
        .and_then(|r| r.object.as_mut())
        .expect("fixture has an object")["spec"]["containers"][0]["envFrom"] =
        json!([{"configMapRef": {"name": "app-settings"}}]);
    let (resp, _, pod) = admit(review, &config(Tee::Tdx));
    assert!(
        resp.warnings.iter().any(|w| w.contains(
            "container \"storage-service\" uses envFrom, which the injector cannot see into"
        ) && w.contains("refuses to start")),
        "{:?}",
        resp.warnings
    );
    let app = container(&pod, "containers", "storage-service");
    assert_eq!(app["envFrom"][0]["configMapRef"]["name"], "app-settings");
    assert_settings_on_the_command_line(app);
    // Without envFrom, no such warning.
    let (resp, _, _) = admit(fixture("entrypoint-command.json"), &config(Tee::Tdx));
    assert!(resp.warnings.is_empty(), "{:?}", resp.warnings);
}

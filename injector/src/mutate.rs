//! The mutation: an AdmissionReview for a Pod in, the same review with a response (an
//! RFC 6902 JSON patch, or a refusal) out. Pure: no I/O, no clock.
use serde_json::{json, Value};

use crate::config::{InjectorConfig, Tee, TrustSource};
use crate::container::{add_env, add_limits, hardened, small_resources};
pub use crate::keys::*;
use crate::patch::{pointer_token, Patch};
use crate::pod::{ContainerView, PodView};
pub use crate::refusal::Refusal;
use crate::respond::{allow, answer, deny};
use crate::review::AdmissionReview;

/// Where the injected pieces are mounted in every container that runs the sidecar.
pub const MOUNT_ROOT: &str = "/quarry";
const BIN_DIR: &str = "/quarry/bin";
const TRUST_DIR: &str = "/quarry/trust";
const ID_DIR: &str = "/quarry/id";
const RUN_DIR: &str = "/quarry/run";
const SIM_DIR: &str = "/quarry/sim";
/// Where the wrapped container sees its own directory of the `quarry-spiffe` volume.
const SPIFFE_DIR: &str = "/quarry/spiffe";
/// The Workload API socket the sidecar serves with `quarry/workload-api: "true"` (and
/// `SPIFFE_ENDPOINT_SOCKET` of the wrapped container). The sidecar creates its directory
/// `agent` 0700: the emptyDir itself is 0777, which the sidecar refuses to put a socket in.
pub const WORKLOAD_API_ADDRESS: &str = "unix:///quarry/spiffe/agent/agent.sock";
const ROOT_CA_FILE: &str = "root-ca.pem";

const VOL_BIN: &str = "quarry-bin";
const VOL_TRUST: &str = "quarry-trust";
const VOL_ID: &str = "quarry-id";
const VOL_RUN: &str = "quarry-run";
const VOL_SIM: &str = "quarry-sim";
const VOL_SPIFFE: &str = "quarry-spiffe";
const INSTALL_CONTAINER: &str = "quarry-install";

/// How a container is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The container's command becomes `marble-sidecar run -- CMD ARGS…` (binary copied in
    /// by an init container). Works for every TEE; env reaches the service directly.
    Entrypoint,
    /// An init container runs `marble-sidecar activate` into a memory-backed volume the
    /// service reads; with `mesh_proxy`, a native sidecar (restartPolicy Always) runs the
    /// proxies and renewals. Only for pods that are one TEE (confidential VM pods).
    NativeSidecar,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Entrypoint => "entrypoint",
            Mode::NativeSidecar => "native-sidecar",
        }
    }
}

/// Answer an AdmissionReview: admit unlabelled pods unchanged, patch labelled pods, refuse
/// labelled pods that cannot be wrapped. The result always carries a response.
pub fn mutate(review: AdmissionReview, config: &InjectorConfig) -> AdmissionReview {
    let Some(request) = review.request else {
        return answer(deny(
            String::new(),
            "the AdmissionReview has no request".into(),
        ));
    };
    let uid = request.uid.clone();
    let response = if request.operation != "CREATE" && !request.operation.is_empty() {
        allow(uid, None, Vec::new())
    } else {
        match &request.object {
            None => deny(uid, Refusal::NotAPod("no object".into()).to_string()),
            Some(object) => match plan(object, &request.namespace, config) {
                Ok(None) => allow(uid, None, Vec::new()),
                Ok(Some((patch, warnings))) => allow(uid, Some(patch), warnings),
                Err(refusal) => deny(uid, refusal.to_string()),
            },
        }
    };
    answer(response)
}

/// The patch for one pod, `None` when it is not labelled.
fn plan(
    object: &Value,
    namespace: &str,
    config: &InjectorConfig,
) -> Result<Option<(Patch, Vec<String>)>, Refusal> {
    let pod = PodView::parse(object).map_err(Refusal::NotAPod)?;
    let Some(pod_type) = pod.label(LABEL_MARBLE_TYPE) else {
        return Ok(None);
    };
    if pod.annotation(ANN_INJECTED).is_some() {
        return Err(Refusal::NameTaken {
            kind: "annotation",
            name: ANN_INJECTED.into(),
        });
    }
    let mode = match pod.annotation(ANN_INJECTION).map(str::trim) {
        None | Some("") | Some("entrypoint") => Mode::Entrypoint,
        Some("native-sidecar") => Mode::NativeSidecar,
        Some(other) => {
            return Err(Refusal::UnknownAnnotationValue {
                annotation: ANN_INJECTION,
                value: other.into(),
                allowed: "entrypoint, native-sidecar",
            })
        }
    };
    if mode == Mode::NativeSidecar && !config.tee.pod_is_one_tee() {
        return Err(Refusal::NativeSidecarOutsideTee(config.tee));
    }
    let workload_api = match pod.annotation(ANN_WORKLOAD_API).map(str::trim) {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Refusal::UnknownAnnotationValue {
                annotation: ANN_WORKLOAD_API,
                value: other.into(),
                allowed: "true, false",
            })
        }
    };
    if workload_api && !config.tee.pod_is_one_tee() {
        return Err(Refusal::WorkloadApiOutsideTee(config.tee));
    }
    if workload_api && mode == Mode::NativeSidecar {
        return Err(Refusal::WorkloadApiNeedsEntrypoint);
    }
    let wrapped = wrapped_containers(&pod)?;
    let generated_uuid = match pod.annotation(ANN_UUID).map(str::trim) {
        None | Some("") => wrapped.len() > 1,
        Some("pod-uid") if wrapped.len() > 1 => {
            return Err(Refusal::PodUidForSeveralMarbles {
                count: wrapped.len(),
            })
        }
        Some("pod-uid") => false,
        Some("generated") => true,
        Some(other) => {
            return Err(Refusal::UnknownAnnotationValue {
                annotation: ANN_UUID,
                value: other.into(),
                allowed: "pod-uid, generated",
            })
        }
    };
    let resources = match pod.annotation(ANN_RESOURCE_INJECTION).map(str::trim) {
        None | Some("") | Some("enabled") => true,
        Some("disabled") => false,
        Some(other) => {
            return Err(Refusal::UnknownAnnotationValue {
                annotation: ANN_RESOURCE_INJECTION,
                value: other.into(),
                allowed: "enabled, disabled",
            })
        }
    };
    check_free_names(&pod, &wrapped)?;
    let namespace = if namespace.is_empty() {
        pod.metadata.namespace.clone().unwrap_or_default()
    } else {
        namespace.to_string()
    };

    let ctx = Ctx {
        config,
        pod: &pod,
        namespace,
        generated_uuid,
        workload_api,
    };
    let mut patch = Patch::default();
    let mut init = Vec::new();
    if mode == Mode::Entrypoint {
        init.push(ctx.install_container());
    }
    for &index in &wrapped {
        let container = &pod.spec.containers[index];
        let marble_type = marble_type(&pod, pod_type, &container.name)?;
        let settings = ctx.sidecar_args(&container.name, &marble_type);
        match mode {
            Mode::Entrypoint => {
                let argv = wrapped_argv(&pod, container, wrapped.len())?;
                ctx.wrap_entrypoint(&mut patch, index, container, argv, settings, resources);
            }
            Mode::NativeSidecar => {
                init.extend(ctx.native_sidecars(container, &settings));
                ctx.mount_run_dir(&mut patch, index, container);
            }
        }
    }
    patch.prepend(
        "/spec/initContainers",
        pod.spec.init_containers.is_some(),
        init,
    );
    patch.append(
        "/spec/volumes",
        pod.spec.volumes.is_some(),
        ctx.volumes(mode),
    );
    ctx.pod_level(&mut patch, mode, resources);

    let mut warnings = Vec::new();
    if mode == Mode::Entrypoint {
        for &index in &wrapped {
            let c = &pod.spec.containers[index];
            if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
                warnings.push(format!(
                    "Quarry: container {:?} uses envFrom, which the injector cannot see into; its sidecar refuses to start (exit 2) if that brings one of the sidecar's protected variables ({}…, see docs/kubernetes.md)",
                    c.name, PROTECTED_ENV[0]
                ));
            }
        }
    }
    if config.tee == Tee::Simulated {
        warnings.push(
            "Quarry: marbles use the simulated TEE (development only; evidence proves nothing)"
                .into(),
        );
    }
    Ok(Some((patch, warnings)))
}

/// Indices of the containers to wrap.
fn wrapped_containers(pod: &PodView) -> Result<Vec<usize>, Refusal> {
    let containers = &pod.spec.containers;
    let Some(list) = pod
        .annotation(ANN_CONTAINERS)
        .filter(|l| !l.trim().is_empty())
    else {
        return match containers.len() {
            1 => Ok(vec![0]),
            0 => Err(Refusal::NotAPod("the pod has no containers".into())),
            count => Err(Refusal::AmbiguousContainers { count }),
        };
    };
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let index = containers
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| Refusal::UnknownContainer(name.into()))?;
        if !out.contains(&index) {
            out.push(index);
        }
    }
    Ok(out)
}

fn marble_type(pod: &PodView, label: &str, container: &str) -> Result<String, Refusal> {
    let key = format!("{ANN_MARBLE_TYPE_PREFIX}{container}");
    let value = pod.annotation(&key).unwrap_or(label).trim();
    if value.is_empty() {
        return Err(Refusal::EmptyMarbleType {
            container: container.into(),
        });
    }
    Ok(value.to_string())
}

/// What the wrapped container runs: its command + args, or the entrypoint annotation.
fn wrapped_argv(
    pod: &PodView,
    container: &ContainerView,
    wrapped: usize,
) -> Result<Vec<String>, Refusal> {
    let args = container.args.clone().unwrap_or_default();
    if let Some(command) = container.command.as_ref().filter(|c| !c.is_empty()) {
        return Ok(command.iter().cloned().chain(args).collect());
    }
    let specific = format!("{ANN_ENTRYPOINT}.{}", container.name);
    let (key, text) = match pod.annotation(&specific) {
        Some(t) => (specific, t),
        None => match pod.annotation(ANN_ENTRYPOINT).filter(|_| wrapped == 1) {
            Some(t) => (ANN_ENTRYPOINT.to_string(), t),
            None => {
                return Err(Refusal::EntrypointUnknown {
                    container: container.name.clone(),
                    annotation: specific,
                })
            }
        },
    };
    let invalid = |reason: String| Refusal::InvalidEntrypoint {
        annotation: key.clone(),
        reason,
    };
    let entry: Vec<String> = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if entry.is_empty() || entry[0].trim().is_empty() {
        return Err(invalid(
            "the array is empty or its first element is blank".into(),
        ));
    }
    Ok(entry.into_iter().chain(args).collect())
}

/// The sidecar's variables a wrapped container may not set (whom the sidecar trusts, which
/// identity and evidence it presents, where it serves the Workload API). The injector passes
/// these settings as flags behind `--settings-from-args`, so the sidecar would refuse to start
/// with any of them in its environment; refusing the pod says so at admission instead.
pub use quarry_api::sidecar_env::{PROTECTED_ENV, WORKLOAD_API_ENV};

/// The sidecar flag that makes it take the [`PROTECTED_ENV`] settings only
/// from its command line and refuse to start when its environment has any of them (which
/// `envFrom` could bring, unseen by the webhook).
pub const SETTINGS_FROM_ARGS: &str = "--settings-from-args";

fn check_free_names(pod: &PodView, wrapped: &[usize]) -> Result<(), Refusal> {
    let taken = |kind: &'static str, name: &str| Refusal::NameTaken {
        kind,
        name: name.into(),
    };
    let volumes = pod.spec.volumes.iter().flatten().map(|v| v.name.as_str());
    for name in volumes {
        if [VOL_BIN, VOL_TRUST, VOL_ID, VOL_RUN, VOL_SIM, VOL_SPIFFE].contains(&name) {
            return Err(taken("volume", name));
        }
    }
    let mut ours = vec![INSTALL_CONTAINER.to_string()];
    for &i in wrapped {
        let name = &pod.spec.containers[i].name;
        if name.len() > 47 {
            return Err(Refusal::NameTooLong(name.clone()));
        }
        ours.push(format!("quarry-activate-{name}"));
        ours.push(format!("quarry-proxy-{name}"));
    }
    let existing = pod.spec.containers.iter().map(|c| c.name.as_str()).chain(
        pod.spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str()),
    );
    for name in existing {
        if ours.iter().any(|o| o == name) {
            return Err(taken("container", name));
        }
    }
    for &i in wrapped {
        let c = &pod.spec.containers[i];
        // These would let a pod creator point an attested marble at a coordinator of their
        // choosing, or switch its verification off; the sidecar refuses them itself too (it
        // runs with --settings-from-args), this says so before the pod is created.
        if let Some(e) = c
            .env
            .iter()
            .flatten()
            .find(|e| quarry_api::sidecar_env::is_trust_setting(&e.name))
        {
            return Err(Refusal::TrustEnvSet {
                container: c.name.clone(),
                name: e.name.clone(),
            });
        }
        // The same for the Workload API: it hands out the marble's key, so a pod must not
        // make the sidecar serve it (with gramine-sgx, to processes outside the enclave) or
        // choose where.
        if c.env.iter().flatten().any(|e| e.name == WORKLOAD_API_ENV) {
            return Err(Refusal::WorkloadApiEnvSet {
                container: c.name.clone(),
            });
        }
        for m in c.volume_mounts.iter().flatten() {
            let path = m.mount_path.trim_end_matches('/');
            if path == MOUNT_ROOT || path.starts_with("/quarry/") {
                return Err(taken("volume mount path", &m.mount_path));
            }
        }
    }
    Ok(())
}

/// Everything the per-container builders need.
struct Ctx<'a> {
    config: &'a InjectorConfig,
    pod: &'a PodView,
    namespace: String,
    generated_uuid: bool,
    /// `quarry/workload-api: "true"` (entrypoint mode only).
    workload_api: bool,
}

impl Ctx<'_> {
    /// The settings of contract §9 for a container that runs `marble-sidecar`, as flags after
    /// the subcommand: behind `--settings-from-args` the sidecar reads them from nowhere else.
    fn sidecar_args(&self, container: &str, marble_type: &str) -> Vec<String> {
        let c = self.config;
        let uuid_file = if self.generated_uuid {
            format!("{ID_DIR}/{container}.uuid")
        } else {
            format!("{ID_DIR}/uuid")
        };
        // `--flag=value`: a value from the pod (an annotation's marble type or DNS names) can
        // never be taken for a flag of its own, e.g. --insecure-skip-coordinator-verify.
        let mut args = vec![
            SETTINGS_FROM_ARGS.to_string(),
            format!("--coordinator={}", c.coordinator_addr),
            format!("--marble-type={marble_type}"),
            format!("--uuid-file={uuid_file}"),
            format!("--tee={}", c.tee.as_str()),
            format!("--coordinator-root-ca={TRUST_DIR}/{ROOT_CA_FILE}"),
        ];
        let dns = self.dns_names(marble_type);
        if !dns.is_empty() {
            args.push(format!("--dns-names={dns}"));
        }
        if c.tee == Tee::Simulated {
            args.push(format!("--sim-platform={SIM_DIR}"));
        }
        args
    }

    /// `quarry/dns-names`, or `<type>`, `<type>.<ns>`, `<type>.<ns>.svc`,
    /// `<type>.<ns>.svc.<cluster domain>` when the type is a DNS label.
    fn dns_names(&self, marble_type: &str) -> String {
        if let Some(names) = self.pod.annotation(ANN_DNS_NAMES) {
            return names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .collect::<Vec<_>>()
                .join(",");
        }
        let t = marble_type.to_ascii_lowercase();
        let label_ok = t.len() <= 63
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !t.starts_with('-')
            && !t.ends_with('-');
        if !label_ok {
            return String::new();
        }
        if self.namespace.is_empty() {
            return t;
        }
        let ns = &self.namespace;
        let domain = &self.config.cluster_domain;
        format!("{t},{t}.{ns},{t}.{ns}.svc,{t}.{ns}.svc.{domain}")
    }

    /// Mounts of a container that runs `marble-sidecar` (its own run dir via subPath).
    fn sidecar_mounts(&self, container: &str, with_bin: bool) -> Vec<Value> {
        let mut m = vec![
            json!({"name": VOL_TRUST, "mountPath": TRUST_DIR, "readOnly": true}),
            json!({"name": VOL_ID, "mountPath": ID_DIR, "readOnly": !self.generated_uuid}),
            json!({"name": VOL_RUN, "mountPath": RUN_DIR, "subPath": container}),
        ];
        if with_bin {
            m.push(json!({"name": VOL_BIN, "mountPath": BIN_DIR, "readOnly": true}));
        }
        if self.config.tee == Tee::Simulated {
            m.push(json!({"name": VOL_SIM, "mountPath": SIM_DIR, "readOnly": true}));
        }
        m
    }

    /// Init container copying `marble-sidecar` into the shared `quarry-bin` volume.
    fn install_container(&self) -> Value {
        let c = self.config;
        json!({
            "name": INSTALL_CONTAINER,
            "image": c.sidecar_image,
            "imagePullPolicy": c.sidecar_pull_policy,
            "command": ["cp", c.sidecar_binary, format!("{BIN_DIR}/marble-sidecar")],
            "volumeMounts": [{"name": VOL_BIN, "mountPath": BIN_DIR}],
            "securityContext": hardened(None),
            "resources": small_resources(),
        })
    }

    /// Entrypoint mode: rewrite one container.
    fn wrap_entrypoint(
        &self,
        patch: &mut Patch,
        index: usize,
        container: &ContainerView,
        argv: Vec<String>,
        settings: Vec<String>,
        resources: bool,
    ) {
        let base = format!("/spec/containers/{index}");
        let mut command = vec![format!("{BIN_DIR}/marble-sidecar"), "run".to_string()];
        command.extend(settings);
        let mut env = Vec::new();
        let mut mounts = self.sidecar_mounts(&container.name, true);
        if self.workload_api {
            command.push(format!("--workload-api={WORKLOAD_API_ADDRESS}"));
            // Where SPIFFE libraries look for the socket; the sidecar itself ignores it.
            env.push(("SPIFFE_ENDPOINT_SOCKET".into(), WORKLOAD_API_ADDRESS.into()));
            // Writable: the sidecar creates the socket's directory and the socket in it.
            mounts.push(
                json!({"name": VOL_SPIFFE, "mountPath": SPIFFE_DIR, "subPath": container.name}),
            );
        }
        command.push("--".to_string());
        command.extend(argv);
        patch.add(&format!("{base}/command"), json!(command));
        if container.args.is_some() {
            patch.remove(&format!("{base}/args"));
        }
        add_env(patch, &base, container, &env);
        patch.append(
            &format!("{base}/volumeMounts"),
            container.volume_mounts.is_some(),
            mounts,
        );
        if resources && self.config.tee == Tee::GramineSgx {
            add_limits(patch, &base, container, &self.config.sgx_resources);
        }
    }

    /// Native-sidecar mode: the activation init container and, with `mesh_proxy`, the
    /// long-running proxy as a native sidecar.
    fn native_sidecars(&self, container: &ContainerView, settings: &[String]) -> Vec<Value> {
        let c = self.config;
        let command = |sub: &str, extra: &[&str]| {
            let mut command = vec![c.sidecar_binary.clone(), sub.to_string()];
            command.extend(settings.iter().cloned());
            command.extend(extra.iter().map(|a| a.to_string()));
            // Simulated evidence measures an executable; the service's is in another
            // container, so the sidecar measures its own binary (the package's UniqueID is
            // then `quarry package-info --sim marble-sidecar`).
            if c.tee == Tee::Simulated {
                command.push(format!("--sim-measure={}", c.sidecar_binary));
            }
            command
        };
        let sc = hardened(container.security_context.as_ref());
        let mut out = vec![json!({
            "name": format!("quarry-activate-{}", container.name),
            "image": c.sidecar_image,
            "imagePullPolicy": c.sidecar_pull_policy,
            "command": command("activate", &["--out", RUN_DIR]),
            "volumeMounts": self.sidecar_mounts(&container.name, false),
            "securityContext": sc,
            "resources": small_resources(),
        })];
        if c.mesh_proxy {
            out.push(json!({
                "name": format!("quarry-proxy-{}", container.name),
                "image": c.sidecar_image,
                "imagePullPolicy": c.sidecar_pull_policy,
                "restartPolicy": "Always",
                // `proxy` activates on its own (same UUID file, so the same marble) and keeps
                // its key in memory; it needs nothing of the activate container's directory.
                "command": command("proxy", &[]),
                "volumeMounts": self.sidecar_mounts(&container.name, false),
                "securityContext": sc,
                "resources": small_resources(),
            }));
        }
        out
    }

    /// Native-sidecar mode: the service reads its files from the run dir.
    fn mount_run_dir(&self, patch: &mut Patch, index: usize, container: &ContainerView) {
        let base = format!("/spec/containers/{index}");
        add_env(
            patch,
            &base,
            container,
            &[("QUARRY_ENV_FILE".into(), format!("{RUN_DIR}/env"))],
        );
        patch.append(
            &format!("{base}/volumeMounts"),
            container.volume_mounts.is_some(),
            vec![json!({"name": VOL_RUN, "mountPath": RUN_DIR, "subPath": container.name, "readOnly": true})],
        );
    }

    fn volumes(&self, mode: Mode) -> Vec<Value> {
        let c = self.config;
        let items = json!([{"key": c.trust_key, "path": ROOT_CA_FILE}]);
        let trust = match &c.trust {
            TrustSource::ConfigMap(name) => {
                json!({"name": VOL_TRUST, "configMap": {"name": name, "items": items}})
            }
            TrustSource::Secret(name) => {
                json!({"name": VOL_TRUST, "secret": {"secretName": name, "items": items}})
            }
        };
        let id = if self.generated_uuid {
            json!({"name": VOL_ID, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
        } else {
            json!({"name": VOL_ID, "downwardAPI": {"items": [
                {"path": "uuid", "fieldRef": {"fieldPath": "metadata.uid"}}
            ]}})
        };
        let mut v = vec![
            trust,
            id,
            json!({"name": VOL_RUN, "emptyDir": {"medium": "Memory", "sizeLimit": c.secrets_size_limit}}),
        ];
        if mode == Mode::Entrypoint {
            v.push(json!({"name": VOL_BIN, "emptyDir": {"sizeLimit": "256Mi"}}));
        }
        if self.workload_api {
            // Memory-backed like the secrets: it only holds sockets (one directory per
            // wrapped container, by subPath).
            v.push(
                json!({"name": VOL_SPIFFE, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
            );
        }
        if let Some(secret) = &c.sim_platform_secret {
            v.push(json!({"name": VOL_SIM, "secret": {"secretName": secret}}));
        }
        v
    }

    /// Tolerations, runtime class and the injected marker.
    fn pod_level(&self, patch: &mut Patch, mode: Mode, resources: bool) {
        let c = self.config;
        if c.tee == Tee::GramineSgx && resources {
            let present = self
                .pod
                .spec
                .tolerations
                .iter()
                .flatten()
                .any(|t| t.get("key").and_then(Value::as_str) == Some("sgx.intel.com/epc"));
            if !present {
                patch.append(
                    "/spec/tolerations",
                    self.pod.spec.tolerations.is_some(),
                    vec![json!({"key": "sgx.intel.com/epc", "operator": "Exists", "effect": "NoSchedule"})],
                );
            }
        }
        if matches!(c.tee, Tee::Tdx | Tee::Snp) && self.pod.spec.runtime_class_name.is_none() {
            if let Some(rc) = &c.runtime_class {
                patch.add("/spec/runtimeClassName", json!(rc));
            }
        }
        if self.pod.metadata.annotations.is_some() {
            patch.add(
                &format!("/metadata/annotations/{}", pointer_token(ANN_INJECTED)),
                json!(mode.as_str()),
            );
        } else {
            patch.add(
                "/metadata/annotations",
                json!({ ANN_INJECTED: mode.as_str() }),
            );
        }
    }
}

//! Pieces of the injected container specs and patches to existing containers.
use serde_json::{json, Value};

use crate::patch::{pointer_token, Patch};
use crate::pod::ContainerView;

/// Append env vars the container does not set itself (the pod's own values win).
pub(crate) fn add_env(
    patch: &mut Patch,
    base: &str,
    container: &ContainerView,
    env: &[(String, String)],
) {
    let existing: Vec<&str> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    let new: Vec<Value> = env
        .iter()
        .filter(|(k, _)| !existing.contains(&k.as_str()))
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    patch.append(&format!("{base}/env"), container.env.is_some(), new);
}

/// Add resource limits the container does not set itself.
pub(crate) fn add_limits(
    patch: &mut Patch,
    base: &str,
    container: &ContainerView,
    limits: &[(String, String)],
) {
    let Some(resources) = &container.resources else {
        let map: serde_json::Map<String, Value> =
            limits.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        patch.add(&format!("{base}/resources"), json!({"limits": map}));
        return;
    };
    let Some(existing) = &resources.limits else {
        let map: serde_json::Map<String, Value> =
            limits.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        patch.add(&format!("{base}/resources/limits"), Value::Object(map));
        return;
    };
    for (k, v) in limits {
        if !existing.contains_key(k) {
            patch.add(
                &format!("{base}/resources/limits/{}", pointer_token(k)),
                json!(v),
            );
        }
    }
}

/// Security context of the injected containers; keeps the service's user and group so the
/// files written for it (0600) stay readable by it.
pub(crate) fn hardened(service: Option<&crate::pod::SecurityContextView>) -> Value {
    let mut sc = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    });
    if let Some(s) = service {
        if let Some(uid) = s.run_as_user {
            sc["runAsUser"] = json!(uid);
        }
        if let Some(gid) = s.run_as_group {
            sc["runAsGroup"] = json!(gid);
        }
    }
    sc
}

/// Requests and limits of the injected containers.
pub(crate) fn small_resources() -> Value {
    json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}})
}

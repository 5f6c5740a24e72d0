//! A read-only typed view of the Pod fields the injector looks at. Unknown fields are
//! ignored here and left untouched in the object: the injector only emits a patch.
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// The parts of a Pod the injector reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct PodView {
    pub(crate) metadata: MetaView,
    pub(crate) spec: SpecView,
}

/// `metadata`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct MetaView {
    pub(crate) namespace: Option<String>,
    pub(crate) labels: Option<BTreeMap<String, String>>,
    pub(crate) annotations: Option<BTreeMap<String, String>>,
}

/// `spec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct SpecView {
    pub(crate) containers: Vec<ContainerView>,
    pub(crate) init_containers: Option<Vec<Named>>,
    pub(crate) volumes: Option<Vec<Named>>,
    pub(crate) tolerations: Option<Vec<Value>>,
    pub(crate) runtime_class_name: Option<String>,
}

/// One entry of `containers`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ContainerView {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) command: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) args: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) env: Option<Vec<Named>>,
    /// Only whether it is there: the keys of its ConfigMaps and Secrets are not in the pod.
    #[serde(default)]
    pub(crate) env_from: Option<Vec<Value>>,
    #[serde(default)]
    pub(crate) volume_mounts: Option<Vec<MountView>>,
    #[serde(default)]
    pub(crate) resources: Option<ResourcesView>,
    #[serde(default)]
    pub(crate) security_context: Option<SecurityContextView>,
}

/// Anything with a `name`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Named {
    pub(crate) name: String,
}

/// One entry of `volumeMounts`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct MountView {
    pub(crate) mount_path: String,
}

/// `resources`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ResourcesView {
    pub(crate) limits: Option<BTreeMap<String, Value>>,
}

/// The user and group a container runs as (copied to the sidecar containers that write
/// files the service must read).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct SecurityContextView {
    pub(crate) run_as_user: Option<i64>,
    pub(crate) run_as_group: Option<i64>,
}

impl PodView {
    /// Decode the object of an AdmissionRequest.
    pub(crate) fn parse(object: &Value) -> Result<PodView, String> {
        PodView::deserialize(object).map_err(|e| e.to_string())
    }

    /// A label value.
    pub(crate) fn label(&self, key: &str) -> Option<&str> {
        self.metadata.labels.as_ref()?.get(key).map(String::as_str)
    }

    /// An annotation value.
    pub(crate) fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }
}

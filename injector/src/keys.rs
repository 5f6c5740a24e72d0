//! The label and annotations the injector reads and writes on pods.

/// Label that opts a pod in; its value is the marble type (a key of the manifest's `Marbles`).
pub const LABEL_MARBLE_TYPE: &str = "quarry/marble-type";
/// Annotation choosing how a container is wrapped: `entrypoint` (default) or `native-sidecar`.
pub const ANN_INJECTION: &str = "quarry/injection";
/// Annotation listing the containers to wrap (comma-separated); needed when a pod has several.
pub const ANN_CONTAINERS: &str = "quarry/containers";
/// Annotation prefix: `quarry/marble-type.<container>` overrides the label for one container.
pub const ANN_MARBLE_TYPE_PREFIX: &str = "quarry/marble-type.";
/// Annotation (or prefix `quarry/entrypoint.<container>`): the image's ENTRYPOINT (+CMD) as
/// a JSON array, for entrypoint mode when the container sets no `command`.
pub const ANN_ENTRYPOINT: &str = "quarry/entrypoint";
/// Annotation: comma-separated DNS names for the marble certificates (default derived from
/// the marble type and namespace).
pub const ANN_DNS_NAMES: &str = "quarry/dns-names";
/// Annotation: where the marble UUID comes from: `pod-uid` (default) or `generated`.
pub const ANN_UUID: &str = "quarry/uuid";
/// Annotation: `disabled` skips the TEE resource requests (SGX device plugin).
pub const ANN_RESOURCE_INJECTION: &str = "quarry/resource-injection";
/// Annotation the injector sets on the pods it mutated (value: the mode).
pub const ANN_INJECTED: &str = "quarry/injected";
/// Annotation: `true` makes the sidecar serve the SPIFFE Workload API to the wrapped
/// container (`false`, the default, does not); refused for gramine-sgx.
pub const ANN_WORKLOAD_API: &str = "quarry/workload-api";

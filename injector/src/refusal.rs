//! Why the injector refuses a labelled pod (it fails closed).
use crate::config::Tee;
use crate::keys::*;

/// Why a labelled pod is refused (the webhook fails closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The object could not be decoded as a Pod.
    #[error("the object is not a Pod the injector can read: {0}")]
    NotAPod(String),
    /// The marble type is empty.
    #[error("label {LABEL_MARBLE_TYPE} (or annotation {ANN_MARBLE_TYPE_PREFIX}{container}) must name a marble type")]
    EmptyMarbleType {
        /// Container the type was looked up for.
        container: String,
    },
    /// An annotation has a value the injector does not know.
    #[error("annotation {annotation} has unknown value {value:?} (allowed: {allowed})")]
    UnknownAnnotationValue {
        /// The annotation key.
        annotation: &'static str,
        /// Its value.
        value: String,
        /// The allowed values.
        allowed: &'static str,
    },
    /// Several containers and no choice among them.
    #[error(
        "the pod has {count} containers; annotation {ANN_CONTAINERS} must list the ones to wrap"
    )]
    AmbiguousContainers {
        /// Number of containers.
        count: usize,
    },
    /// A listed container does not exist.
    #[error("annotation {ANN_CONTAINERS} names container {0:?}, which the pod does not have")]
    UnknownContainer(String),
    /// Entrypoint mode cannot know what to run.
    #[error("container {container:?} sets no command, so the image's entrypoint is unknown to the injector; set the container's command, or annotation {annotation} to the image's ENTRYPOINT (followed by its CMD unless the container sets args) as a JSON array")]
    EntrypointUnknown {
        /// The container.
        container: String,
        /// The annotation that would give it.
        annotation: String,
    },
    /// The entrypoint annotation is not a non-empty JSON array of strings.
    #[error("annotation {annotation} must be a non-empty JSON array of strings: {reason}")]
    InvalidEntrypoint {
        /// The annotation key.
        annotation: String,
        /// What is wrong.
        reason: String,
    },
    /// Native-sidecar mode would move secrets across a TEE boundary.
    #[error("{ANN_INJECTION}: native-sidecar shares materialised secrets between containers through a tmpfs, which would leave the enclave with TEE {0}; use {ANN_INJECTION}: entrypoint")]
    NativeSidecarOutsideTee(Tee),
    /// One pod UID cannot identify several marbles.
    #[error("{ANN_UUID}: pod-uid gives one UUID per pod, but {count} containers are wrapped; use {ANN_UUID}: generated")]
    PodUidForSeveralMarbles {
        /// Wrapped containers.
        count: usize,
    },
    /// A name the injector adds exists already.
    #[error("the pod already has {kind} {name:?}, which the injector would add (injected twice?)")]
    NameTaken {
        /// What kind of name.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A wrapped container sets a variable that decides whom its sidecar trusts or who it is.
    #[error("container {container:?} sets {name} itself; the injector sets the sidecar's coordinator, trust, marble identity and evidence settings on its command line, a pod cannot choose them, and the sidecar (--settings-from-args) refuses to start with one in its environment (remove the variable, from envFrom too; the marble type comes from label {LABEL_MARBLE_TYPE}, the DNS names from annotation {ANN_DNS_NAMES})")]
    TrustEnvSet {
        /// The container.
        container: String,
        /// The variable.
        name: String,
    },
    /// A wrapped container sets the sidecar's Workload API socket itself.
    #[error("container {container:?} sets QUARRY_WORKLOAD_API itself; the Workload API hands out the marble's private key, so only the injector turns it on, at its own socket (annotation {ANN_WORKLOAD_API}: \"true\"; remove the variable)")]
    WorkloadApiEnvSet {
        /// The container.
        container: String,
    },
    /// The Workload API would hand the marble's key across a TEE boundary.
    #[error("{ANN_WORKLOAD_API}: the Workload API hands the marble's private key to the process at the other end of its socket, which would leave the enclave with TEE {0}; the key must stay inside the trust boundary (docs/spiffe.md), so it is only served in confidential VM pods")]
    WorkloadApiOutsideTee(Tee),
    /// Native-sidecar mode has no long-running sidecar that could serve the Workload API.
    #[error("{ANN_WORKLOAD_API} needs the sidecar to keep running beside the service; with {ANN_INJECTION}: native-sidecar it only activates and exits (its long-running proxy cannot reuse that activation yet); use {ANN_INJECTION}: entrypoint")]
    WorkloadApiNeedsEntrypoint,
    /// A derived container name would exceed Kubernetes' 63 characters.
    #[error("container name {0:?} is too long to derive the sidecar container names (at most 47 characters)")]
    NameTooLong(String),
}

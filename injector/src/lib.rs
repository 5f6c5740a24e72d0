//! Quarry sidecar injector: a Kubernetes mutating admission webhook that wraps pods labelled
//! `quarry/marble-type` in the marble sidecar (contract §9, §11).
//!
//! [`mutate`] is the whole decision, a pure function from an AdmissionReview to the answered
//! review; [`server`] serves it over HTTPS. Kubernetes is untrusted (contract §2): the
//! injector is a convenience, not part of the trusted computing base. A pod it wraps wrongly
//! or not at all simply fails to activate, because the coordinator checks each marble's
//! evidence and the sidecar authenticates the coordinator. It refuses (fails closed) every
//! labelled pod it cannot wrap, so such a pod never runs unwrapped by accident.
//!
//! What is added, per mode, is described in `docs/kubernetes.md`.
#![forbid(unsafe_code)]

mod config;
mod container;
mod keys;
mod mutate;
mod patch;
mod pod;
mod refusal;
mod respond;
pub mod review;
pub mod server;

pub use config::{default_sgx_resources, InjectorConfig, Tee, TrustSource, DEFAULT_SIDECAR_BINARY};
pub use mutate::{
    mutate, Mode, Refusal, ANN_CONTAINERS, ANN_DNS_NAMES, ANN_ENTRYPOINT, ANN_INJECTED,
    ANN_INJECTION, ANN_MARBLE_TYPE_PREFIX, ANN_RESOURCE_INJECTION, ANN_UUID, ANN_WORKLOAD_API,
    LABEL_MARBLE_TYPE, MOUNT_ROOT, PROTECTED_ENV, SETTINGS_FROM_ARGS, WORKLOAD_API_ADDRESS,
    WORKLOAD_API_ENV,
};
pub use patch::{pointer_token, Patch};
pub use review::{AdmissionRequest, AdmissionResponse, AdmissionReview};

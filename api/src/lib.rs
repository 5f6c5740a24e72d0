//! Quarry data and rules: manifest model, validation, templating and the wire types of every
//! HTTP body. This crate does no I/O; services and tools build on it.
#![forbid(unsafe_code)]

pub mod attestation;
pub mod bytes;
pub mod claims;
pub mod ear;
pub mod evidence;
pub mod http;
pub mod manifest;
pub mod merkle;
pub mod package;
pub mod quote_signature;
pub mod secret;
pub mod sidecar_env;
pub mod spiffe;
pub mod statement;
pub mod tcb;
pub mod template;

pub use claims::{Claims, TcbStatus, TeeKind};
pub use evidence::{Evidence, EvidenceType, REPORT_DATA_LEN};
pub use package::Package;
pub use secret::Secret;

//! Client-side trust, written once: the TLS certificate verifiers Quarry's clients and servers
//! use ([`tls`]) and the relying-party verification of a coordinator by its attestation
//! ([`relying_party`]), and the check of the coordinator's EAR against the key its verified
//! statement binds ([`ear`]).
//!
//! Every verifier here is TLS 1.3 only on the ring provider: TLS 1.2 signatures are refused,
//! and the handshake signature is always checked with the certificate's key, so a peer at
//! least holds the key of the certificate it shows. What the certificate *means* differs per
//! verifier and is the first line of each type's documentation.
#![forbid(unsafe_code)]

pub mod ear;
pub mod relying_party;
pub mod tls;

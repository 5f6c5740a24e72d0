//! The deployment manifest on the client API: setting the first one ([`set`]) and changing
//! it later, by package update or multi-party manifest update ([`update`]).
pub mod set;
pub mod update;

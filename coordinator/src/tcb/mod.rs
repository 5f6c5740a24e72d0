//! The TCB event monitor (issue 18): the coordinator keeps the evidence each running marble
//! activated with ([`record`]), re-verifies it periodically and whenever the collateral
//! changes with its *current* collateral source ([`evaluate`]), re-checks the package policy,
//! and records, logs, counts and publishes every change ([`monitor`]). What follows from a
//! marble falling out of policy is the manifest's `Config.TCBChangeAction`: warn (default),
//! refuse its next renewal (`tcb-out-of-policy`) or revoke it.
pub mod evaluate;
pub mod memory;
pub mod monitor;
pub mod record;

pub use memory::Monitor;

#[cfg(test)]
mod tests;

//! The sidecar's protected environment: the variables that decide whom a marble sidecar trusts
//! and what it presents. Both sides of one rule read this list: the sidecar refuses to start
//! with any of them present under `--settings-from-args`, and the Kubernetes injector refuses
//! a pod that sets one, at admission rather than in a crash loop.

/// The sidecar's variable for its SPIFFE Workload API socket: it hands out the marble's key,
/// so only the launcher may set it (the injector, as the `--workload-api` flag).
pub const WORKLOAD_API_ENV: &str = "QUARRY_WORKLOAD_API";

/// Every variable the sidecar's configuration reads: whom it trusts (coordinator address,
/// root CA, policy, verification switches, CRL interval), which identity and evidence it
/// presents (marble type, UUID file, DNS names, TEE provider and its device root and
/// collateral, the simulated identity and measured executable) and where it serves the
/// marble's key ([`WORKLOAD_API_ENV`]).
pub const PROTECTED_ENV: [&str; 23] = [
    "QUARRY_COORDINATOR_ADDR",
    "EDG_MARBLE_COORDINATOR_ADDR",
    "QUARRY_COORDINATOR_ROOT_CA",
    "QUARRY_COORDINATOR_POLICY",
    "QUARRY_ALLOW_SIMULATED_COORDINATOR",
    "QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY",
    "QUARRY_CRL_INTERVAL",
    "QUARRY_MARBLE_TYPE",
    "EDG_MARBLE_TYPE",
    "QUARRY_MARBLE_UUID_FILE",
    "EDG_MARBLE_UUID_FILE",
    "QUARRY_MARBLE_DNS_NAMES",
    "EDG_MARBLE_DNS_NAMES",
    "QUARRY_TEE",
    "QUARRY_ATTESTATION_ROOT",
    "QUARRY_COLLATERAL",
    "QUARRY_SIM_PLATFORM",
    "QUARRY_SIM_SIGNER",
    "QUARRY_SIM_PRODUCT_ID",
    "QUARRY_SIM_SVN",
    "QUARRY_SIM_DEBUG",
    "QUARRY_SIM_MEASURE",
    WORKLOAD_API_ENV,
];

/// True for the protected variables but [`WORKLOAD_API_ENV`]: the settings of trust and
/// identity, which a pod must never set (the Workload API has a refusal of its own).
pub fn is_trust_setting(name: &str) -> bool {
    name != WORKLOAD_API_ENV && PROTECTED_ENV.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_of_distinct_quarry_or_marblerun_names_and_holds_the_workload_api() {
        let mut names = PROTECTED_ENV.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PROTECTED_ENV.len(), "a name is listed twice");
        assert!(PROTECTED_ENV
            .iter()
            .all(|n| n.starts_with("QUARRY_") || n.starts_with("EDG_MARBLE_")));
        assert!(PROTECTED_ENV.contains(&WORKLOAD_API_ENV));
        assert!(!is_trust_setting(WORKLOAD_API_ENV));
        assert!(is_trust_setting("QUARRY_COORDINATOR_ADDR"));
        assert!(is_trust_setting("EDG_MARBLE_TYPE"));
        assert!(!is_trust_setting("RUST_LOG"));
        assert!(!is_trust_setting("QUARRY_LOG_FORMAT"));
    }
}

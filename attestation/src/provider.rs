//! Runtime evidence providers for hardware TEEs: Gramine's `/dev/attestation` (SGX) and Linux
//! configfs-tsm (TDX, SEV-SNP). Every device path is under a configurable root so tests run
//! the providers against a prepared directory. The simulated provider is in
//! [`crate::simulated`].
pub mod gramine;
pub mod tsm;

pub use gramine::GramineProvider;
pub use tsm::TsmProvider;

/// Default root of Gramine's pseudo-files.
pub const GRAMINE_ROOT: &str = "/dev/attestation";
/// Default root of configfs-tsm reports.
pub const TSM_ROOT: &str = "/sys/kernel/config/tsm/report";

/// Which hardware TEE this process appears to run in, judged from the given roots and
/// device nodes; `None` when nothing is found (the caller must then refuse to start).
pub fn detect(
    gramine_root: &std::path::Path,
    tsm_root: &std::path::Path,
) -> Option<quarry_api::TeeKind> {
    use quarry_api::TeeKind;
    if gramine_root.join("attestation_type").exists() {
        return Some(TeeKind::Sgx);
    }
    if tsm_root.is_dir() {
        if std::path::Path::new("/dev/tdx_guest").exists() {
            return Some(TeeKind::Tdx);
        }
        if std::path::Path::new("/dev/sev-guest").exists() {
            return Some(TeeKind::Snp);
        }
    }
    None
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> crate::ProviderError {
    let what = what.to_string();
    move |source| crate::ProviderError::Io { what, source }
}

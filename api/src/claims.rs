//! Claims: what a verifier proved about a TEE (contract §4.1).
use serde::{Deserialize, Serialize};

use crate::evidence::REPORT_DATA_LEN;

/// The kind of TEE that produced evidence; also the `TEE` field of a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TeeKind {
    /// Intel SGX enclave.
    #[default]
    Sgx,
    /// Intel TDX trust domain.
    Tdx,
    /// AMD SEV-SNP guest.
    Snp,
    /// Simulated TEE for development (contract §4.4).
    Simulated,
}

impl TeeKind {
    /// The manifest spelling of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            TeeKind::Sgx => "sgx",
            TeeKind::Tdx => "tdx",
            TeeKind::Snp => "snp",
            TeeKind::Simulated => "simulated",
        }
    }

    /// Parse the manifest spelling, case-insensitively.
    pub fn parse(text: &str) -> Option<TeeKind> {
        match text.to_ascii_lowercase().as_str() {
            "sgx" => Some(TeeKind::Sgx),
            "tdx" => Some(TeeKind::Tdx),
            "snp" | "sev-snp" => Some(TeeKind::Snp),
            "simulated" => Some(TeeKind::Simulated),
            _ => None,
        }
    }
}

impl std::fmt::Display for TeeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TCB status as Intel and AMD verification report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TcbStatus {
    /// Platform is fully patched.
    UpToDate,
    /// Software hardening (mitigations) needed.
    SWHardeningNeeded,
    /// Platform configuration needed.
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSWHardeningNeeded,
    /// Out of date.
    OutOfDate,
    /// Out of date and configuration needed.
    OutOfDateConfigurationNeeded,
    /// Revoked: never acceptable.
    Revoked,
}

impl TcbStatus {
    /// The statuses accepted where no list is given: a package without
    /// `AcceptedTCBStatuses`, `quarry evidence verify` without the flag, a replica's peer.
    pub const DEFAULT_ACCEPTED: [TcbStatus; 2] =
        [TcbStatus::UpToDate, TcbStatus::SWHardeningNeeded];

    /// All statuses, in the order of the contract.
    pub const ALL: [TcbStatus; 7] = [
        TcbStatus::UpToDate,
        TcbStatus::SWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::ConfigurationAndSWHardeningNeeded,
        TcbStatus::OutOfDate,
        TcbStatus::OutOfDateConfigurationNeeded,
        TcbStatus::Revoked,
    ];

    /// Name as written in manifests and by Intel.
    pub fn as_str(self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::Revoked => "Revoked",
        }
    }

    /// Parse a status name, case-insensitively.
    pub fn parse(text: &str) -> Option<TcbStatus> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }

    /// The names of `statuses`, comma-separated (`UpToDate,SWHardeningNeeded`).
    pub fn join(statuses: &[TcbStatus]) -> String {
        statuses
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Identity values proven by evidence; which are present depends on the TEE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Identity {
    /// SGX MRENCLAVE or the simulated measurement (SHA-256 of the executable).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_opt")]
    pub unique_id: Option<Vec<u8>>,
    /// SGX MRSIGNER or the simulated signer.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_opt")]
    pub signer_id: Option<Vec<u8>>,
    /// SGX ISVPRODID or the simulated product ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<u64>,
    /// SGX ISVSVN or the simulated security version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_version: Option<u64>,
    /// TEE-specific measurements by name (`MRTD`, `RTMR0`, `MRSEAM`, `Measurement`, `HostData`,
    /// `IDKeyDigest`, `ChipID`...), hex-encoded.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
}

/// [`Identity::fields`] that describe the host rather than the measured image: the SNP chip and
/// its firmware's report format, the TDX module and its SVN. One image run on two hosts
/// differs in exactly these; whether the host's firmware is acceptable is the TCB check's
/// verdict, not an identity comparison's.
pub const PLATFORM_FIELDS: [&str; 4] = ["ChipID", "ReportVersion", "MRSEAM", "TEETCBSVN"];

impl Identity {
    /// The fields without [`PLATFORM_FIELDS`]: what one image measures to on any host.
    pub fn image_fields(&self) -> std::collections::BTreeMap<&str, &str> {
        self.fields
            .iter()
            .filter(|(name, _)| !PLATFORM_FIELDS.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect()
    }
}

/// What a verifier proved: the result of verifying evidence at a given time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Which TEE produced the evidence.
    pub tee: TeeKind,
    /// Measurements and versions.
    pub identity: Identity,
    /// Debug mode (SGX DEBUG attribute, TDX debug, SNP policy DEBUG, simulated flag).
    pub debug: bool,
    /// The 64 bytes of report data the evidence binds.
    #[serde(with = "hex_arr")]
    pub report_data: [u8; REPORT_DATA_LEN],
    /// TCB status of the platform.
    pub tcb_status: TcbStatus,
    /// Security advisories that apply to the platform (e.g. `INTEL-SA-00615`).
    #[serde(default)]
    pub advisory_ids: Vec<String>,
    /// Platform identity: FMSPC for Intel, CHIP_ID for AMD, the platform CA digest when simulated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_id: Option<String>,
    /// True when the evidence came from a simulated TEE. Never true for hardware evidence.
    pub simulation: bool,
    /// SEV-SNP REPORTED_TCB (the TCB the VCEK/VLEK is issued for); absent for other TEEs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_tcb: Option<SnpTcb>,
    /// Where the platform stands in its vendor's TCB information (DCAP): the matched level
    /// and, against the newest UpToDate level, each component to raise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcb_standing: Option<TcbStanding>,
}

/// The TCB level a platform matched and what it must raise to reach the newest UpToDate
/// level of the same TCB information.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TcbStanding {
    /// `tcbEvaluationDataNumber` of the TCB information that judged the platform.
    pub evaluation_data_number: u32,
    /// `tcbDate` of the matched platform level.
    pub matched_date: String,
    /// `tcbDate` of the level the components are compared with: the newest UpToDate level,
    /// or the newest level of any status when the TCB information has no UpToDate level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_date: Option<String>,
    /// Status of that target level (UpToDate unless the TCB information has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_status: Option<TcbStatus>,
    /// Each component below the target level, in TCB information order.
    #[serde(default)]
    pub to_raise: Vec<ComponentGap>,
}

/// One TCB component below what a level requires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentGap {
    /// Stable name: `CPUSVN[i]`, `PCESVN`, `TEE_TCB_SVN[i]`, `TDX_MODULE_ISVSVN`, `QE_ISVSVN`.
    pub component: String,
    /// What the TCB information calls it (category and type), when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The platform's SVN.
    pub found: u16,
    /// The SVN the target level requires.
    pub required: u16,
}

impl std::fmt::Display for ComponentGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.component)?;
        if let Some(label) = &self.label {
            write!(f, " ({label})")?;
        }
        write!(f, ": found {}, required {}", self.found, self.required)
    }
}

/// An AMD SEV-SNP TCB version by component (security patch levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct SnpTcb {
    /// Boot loader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// CPU microcode SPL.
    pub microcode: u8,
    /// FMC SPL (Turin and later only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
}

impl SnpTcb {
    /// The components of `self` that are below `minimum`, as `(name, minimum, actual)`.
    pub fn below(&self, minimum: &SnpTcb) -> Vec<(&'static str, u8, u8)> {
        let mut out = Vec::new();
        let pairs = [
            ("bootloader", minimum.bootloader, self.bootloader),
            ("tee", minimum.tee, self.tee),
            ("snp", minimum.snp, self.snp),
            ("microcode", minimum.microcode, self.microcode),
        ];
        for (name, min, actual) in pairs {
            if actual < min {
                out.push((name, min, actual));
            }
        }
        if let Some(min) = minimum.fmc {
            let actual = self.fmc.unwrap_or(0);
            if actual < min {
                out.push(("fmc", min, actual));
            }
        }
        out
    }
}

impl std::fmt::Display for SnpTcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bootloader={} tee={} snp={} microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )?;
        if let Some(fmc) = self.fmc {
            write!(f, " fmc={fmc}")?;
        }
        Ok(())
    }
}

impl Claims {
    /// The TCB status with its advisories, as refusals print it:
    /// `SWHardeningNeeded (advisories: INTEL-SA-00615)`, or `(advisories: none)`.
    pub fn tcb_summary(&self) -> String {
        let advisories = if self.advisory_ids.is_empty() {
            "none".to_string()
        } else {
            self.advisory_ids.join(",")
        };
        format!("{} (advisories: {advisories})", self.tcb_status.as_str())
    }

    /// SHA-256 over the canonical JSON of these claims; recorded in certificates and logs.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        // serde_json writes struct fields in declaration order and BTreeMaps sorted, so the
        // encoding is deterministic for a given value.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&bytes).into()
    }
}

mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| hex::decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod hex_arr {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::evidence::REPORT_DATA_LEN;

    pub fn serialize<S: Serializer>(v: &[u8; REPORT_DATA_LEN], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; REPORT_DATA_LEN], D::Error> {
        let bytes = hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("report_data must be 64 bytes"))
    }
}

//! `Packages.<name>` → [`crate::Package`], including the Quarry TDX/SNP extensions.
use serde_json::Value;

use super::error::{ManifestError, Ptr, Warning};
use super::fields::Obj;
use crate::claims::{SnpTcb, TcbStatus, TeeKind};
use crate::Package;

/// TDX reference values (48 bytes each).
pub(super) const TDX_FIELDS: [&str; 6] = ["MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3", "MRSEAM"];
/// SNP reference values and their lengths in bytes.
pub(super) const SNP_FIELDS: [(&str, usize); 3] =
    [("Measurement", 48), ("HostData", 32), ("IDKeyDigest", 48)];
const SGX_FIELDS: [&str; 4] = ["UniqueID", "SignerID", "ProductID", "SecurityVersion"];

/// Convert one package definition (syntax and per-TEE field rules).
pub(super) fn convert(value: &Value, ptr: Ptr) -> Result<Package, ManifestError> {
    let o = Obj::new(value, ptr)?;
    let tee = match o.str("TEE")? {
        None => TeeKind::Sgx,
        Some(t) => TeeKind::parse(t).ok_or_else(|| {
            o.at("TEE").err(format!(
                "unknown TEE {t:?} (allowed: sgx, tdx, snp, simulated)"
            ))
        })?,
    };
    let mut pkg = Package {
        tee,
        unique_id: o.hex("UniqueID", 32)?,
        signer_id: o.hex("SignerID", 32)?,
        product_id: o.u64("ProductID")?,
        security_version: o.u64("SecurityVersion")?,
        debug: o.bool("Debug")?,
        accepted_tcb_statuses: Vec::new(),
        accepted_advisories: o.strings("AcceptedAdvisories")?,
        allowed_platforms: Vec::new(),
        fields: Default::default(),
        minimum_tcb: None,
        max_vmpl: 0,
    };
    for (i, name) in o.strings("AcceptedTCBStatuses")?.iter().enumerate() {
        let at = o.at("AcceptedTCBStatuses").join(i);
        match TcbStatus::parse(name) {
            Some(TcbStatus::Revoked) => {
                return Err(at.err("Revoked platforms are never accepted"));
            }
            Some(s) => pkg.accepted_tcb_statuses.push(s),
            None => return Err(at.err(format!("unknown TCB status {name:?}"))),
        }
    }
    for (i, p) in o.strings("AllowedPlatforms")?.iter().enumerate() {
        let p = p.trim();
        if p.is_empty() {
            return Err(o.at("AllowedPlatforms").join(i).err("must not be empty"));
        }
        pkg.allowed_platforms.push(p.to_ascii_lowercase());
    }
    for (i, chip) in o.strings("AllowedChipIDs")?.iter().enumerate() {
        let at = o.at("AllowedChipIDs").join(i);
        if tee != TeeKind::Snp {
            return Err(at.err("AllowedChipIDs needs TEE snp"));
        }
        match hex::decode(chip.trim()) {
            Ok(b) if b.len() == 64 => pkg.allowed_platforms.push(hex::encode(b)),
            _ => return Err(at.err("must be 128 hex digits (64 bytes)")),
        }
    }
    if o.has("MinimumTCB") {
        if tee != TeeKind::Snp {
            return Err(o.at("MinimumTCB").err("MinimumTCB needs TEE snp"));
        }
        pkg.minimum_tcb = minimum_tcb(o.get("MinimumTCB"), o.at("MinimumTCB"))?;
    }
    if let Some(vmpl) = o.u64("MaxVMPL")? {
        if tee != TeeKind::Snp {
            return Err(o.at("MaxVMPL").err("MaxVMPL needs TEE snp"));
        }
        // SEV-SNP has four privilege levels, VMPL 0 (most privileged) to 3.
        pkg.max_vmpl = match u32::try_from(vmpl) {
            Ok(v) if v <= 3 => v,
            _ => {
                return Err(o
                    .at("MaxVMPL")
                    .err(format!("{vmpl} is not a VMPL (0 to 3)")))
            }
        };
    }
    for name in TDX_FIELDS {
        if let Some(b) = o.hex(name, 48)? {
            if tee != TeeKind::Tdx {
                return Err(o
                    .at(name)
                    .err(format!("{name} is a TDX value and needs TEE tdx")));
            }
            pkg.fields.insert(name.to_string(), hex::encode(b));
        }
    }
    for (name, len) in SNP_FIELDS {
        if let Some(b) = o.hex(name, len)? {
            if tee != TeeKind::Snp {
                return Err(o
                    .at(name)
                    .err(format!("{name} is an SNP value and needs TEE snp")));
            }
            pkg.fields.insert(name.to_string(), hex::encode(b));
        }
    }
    if matches!(tee, TeeKind::Tdx | TeeKind::Snp) {
        for name in SGX_FIELDS {
            if o.get(name)
                .is_some_and(|v| v != &Value::String(String::new()))
            {
                return Err(o.at(name).err(format!(
                    "{name} is an SGX/simulated value and cannot be used with TEE {tee}"
                )));
            }
        }
    }
    Ok(pkg)
}

/// `MinimumTCB`: `{"BootLoader","TEE","SNP","Microcode"[,"FMC"]}` (case-insensitive keys,
/// each 0..=255, absent components are 0).
fn minimum_tcb(value: Option<&Value>, ptr: Ptr) -> Result<Option<SnpTcb>, ManifestError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let Value::Object(map) = value else {
        return Err(ptr.err(
            "must be an object like {\"BootLoader\": 3, \"TEE\": 0, \"SNP\": 8, \"Microcode\": 115}",
        ));
    };
    let mut tcb = SnpTcb::default();
    for (key, v) in map {
        let at = ptr.join(key);
        let n = v
            .as_u64()
            .filter(|n| *n <= 255)
            .ok_or_else(|| at.err("must be an integer from 0 to 255"))?;
        let n = n as u8;
        match key.to_ascii_lowercase().as_str() {
            "bootloader" => tcb.bootloader = n,
            "tee" => tcb.tee = n,
            "snp" => tcb.snp = n,
            "microcode" => tcb.microcode = n,
            "fmc" => tcb.fmc = Some(n),
            _ => {
                return Err(
                    at.err("unknown TCB component (allowed: BootLoader, TEE, SNP, Microcode, FMC)")
                )
            }
        }
    }
    Ok(Some(tcb))
}

/// The identity rule: what a package must pin (MarbleRun §2.10 for sgx/simulated).
pub(super) fn check_identity(
    pkg: &Package,
    ptr: &Ptr,
    warnings: &mut Vec<Warning>,
) -> Result<(), ManifestError> {
    match pkg.tee {
        TeeKind::Sgx | TeeKind::Simulated => {
            let any_signer = pkg.signer_id.is_some()
                || pkg.product_id.is_some()
                || pkg.security_version.is_some();
            let all_signer = pkg.signer_id.is_some()
                && pkg.product_id.is_some()
                && pkg.security_version.is_some();
            let problem = if pkg.unique_id.is_some() && any_signer {
                Some((
                    "UniqueID",
                    "UniqueID cannot be combined with SignerID, ProductID or SecurityVersion",
                ))
            } else if pkg.unique_id.is_none() && !all_signer {
                let missing = [
                    ("SignerID", pkg.signer_id.is_none()),
                    ("ProductID", pkg.product_id.is_none()),
                    ("SecurityVersion", pkg.security_version.is_none()),
                ]
                .into_iter()
                .find(|(_, m)| *m)
                .map_or("SignerID", |(n, _)| n);
                Some((
                    missing,
                    "set UniqueID, or all of SignerID, ProductID and SecurityVersion",
                ))
            } else {
                None
            };
            match problem {
                None => Ok(()),
                Some((field, msg)) if pkg.debug => {
                    warnings.push(ptr.join(field).warn(format!(
                        "{msg}; accepted only because Debug is true (MarbleRun behaviour)"
                    )));
                    Ok(())
                }
                Some((field, msg)) => Err(ptr.join(field).err(msg)),
            }
        }
        TeeKind::Tdx => {
            let pinned = ["MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3"]
                .iter()
                .any(|f| pkg.fields.contains_key(*f));
            if pinned {
                Ok(())
            } else {
                Err(ptr
                    .join("MRTD")
                    .err("a tdx package needs MRTD or RTMR0..RTMR3"))
            }
        }
        TeeKind::Snp => {
            if pkg.fields.contains_key("Measurement") {
                Ok(())
            } else {
                Err(ptr
                    .join("Measurement")
                    .err("an snp package needs Measurement"))
            }
        }
    }
}

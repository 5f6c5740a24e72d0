//! Where a DCAP platform stands in its TCB information, and which components to raise.
//!
//! A quote that is not UpToDate tells an operator *that* the platform fell behind; this
//! module says *what* to update. After dcap-qvl has verified the quote and its collateral,
//! the platform's SVNs (CPUSVN and PCESVN from the PCK certificate, TEE_TCB_SVN from the
//! TD report, the QE's ISVSVN) are compared with the newest UpToDate level of the same TCB
//! info (and TDX module identity, and QE identity). Only verified collateral is read, so
//! the result is a fact about signed Intel data, not a guess.
use dcap_qvl::policy::QuoteClaims;
use dcap_qvl::qe_identity::QeIdentity;
use dcap_qvl::quote::Report;
use dcap_qvl::tcb_info::{SvnComponent, TcbInfo, TcbStatus};
use dcap_qvl::QuoteCollateralV3;
use quarry_api::claims::{ComponentGap, TcbStanding};
use serde_json::Value;

/// The standing of a verified DCAP quote; `None` only if the (already verified) collateral
/// cannot be read again, which dcap-qvl would have refused first.
pub(crate) fn dcap(out: &QuoteClaims, collateral: &QuoteCollateralV3) -> Option<TcbStanding> {
    let key = crate::cache::key(
        "dcap-levels",
        &[
            collateral.tcb_info.as_bytes(),
            collateral.qe_identity.as_bytes(),
        ],
    );
    let levels = crate::cache::DCAP_LEVELS
        .get_or_parse(key, || Levels::parse(collateral).ok_or(()))
        .ok()?;
    let (info, qe) = (&levels.info, &levels.qe);
    let pck = &out.platform.pck;
    let tee_tcb_svn = match &out.report {
        Report::SgxEnclave(_) => None,
        other => other.as_td10().map(|td| td.tee_tcb_svn),
    };
    let mut standing = TcbStanding {
        evaluation_data_number: out.tcb.eval_data_number,
        matched_date: out.platform.tcb_level.tcb_date.clone(),
        target_date: None,
        target_status: None,
        to_raise: Vec::new(),
    };
    if let Some(target) = target_level(info) {
        let level = &info.tcb_levels[target];
        standing.target_date = Some(level.tcb_date.clone());
        standing.target_status = quarry_api::TcbStatus::parse(&level.tcb_status.to_string());
        let names = &levels.names[target];
        // A count mismatch is refused by dcap-qvl's own matching; nothing to report then.
        let shortfalls = level
            .shortfalls(&pck.cpu_svn, pck.pce_svn, tee_tcb_svn.as_ref())
            .unwrap_or_default();
        for s in shortfalls {
            let (component, label) = match s.component {
                SvnComponent::Sgx(i) => (format!("CPUSVN[{i}]"), names.sgx(i)),
                SvnComponent::Tdx(i) => (format!("TEE_TCB_SVN[{i}]"), names.tdx(i)),
                SvnComponent::PceSvn => ("PCESVN".to_string(), None),
                SvnComponent::TdxModuleIsvSvn => ("TDX_MODULE_ISVSVN".to_string(), None),
            };
            standing.to_raise.push(ComponentGap {
                component,
                label,
                found: s.have,
                required: s.needs,
            });
        }
    }
    if let Some(svn) = tee_tcb_svn {
        standing.to_raise.extend(module_gap(info, &svn));
    }
    if let Some(qe) = qe {
        standing.to_raise.extend(qe_gap(qe, out.qe.report.isv_svn));
    }
    Some(standing)
}

/// TCB info and QE identity as parsed once per exact content ([`crate::cache`]).
pub(crate) struct Levels {
    info: TcbInfo,
    /// Component names per TCB level, in JSON order.
    names: Vec<ComponentNames>,
    qe: Option<QeIdentity>,
}

impl Levels {
    fn parse(collateral: &QuoteCollateralV3) -> Option<Levels> {
        let raw: Value = serde_json::from_str(&collateral.tcb_info).ok()?;
        let info: TcbInfo = serde_json::from_value(raw.clone()).ok()?;
        let names = (0..info.tcb_levels.len())
            .map(|i| component_names(&raw, i))
            .collect();
        Some(Levels {
            info,
            names,
            qe: serde_json::from_str(&collateral.qe_identity).ok(),
        })
    }
}

/// Index of the UpToDate level with the latest `tcbDate`, or of the latest level of any
/// status when none is UpToDate (some SGX FMSPCs top out at SWHardeningNeeded). RFC 3339
/// UTC strings of one format compare in date order; the first level in the JSON wins ties.
fn target_level(info: &TcbInfo) -> Option<usize> {
    let newest = |up_to_date_only: bool| {
        let mut best: Option<usize> = None;
        for (i, level) in info.tcb_levels.iter().enumerate() {
            if up_to_date_only && level.tcb_status != TcbStatus::UpToDate {
                continue;
            }
            if best.is_none_or(|b| level.tcb_date > info.tcb_levels[b].tcb_date) {
                best = Some(i);
            }
        }
        best
    };
    newest(true).or_else(|| newest(false))
}

/// The TDX module's ISVSVN against the newest UpToDate level of its module identity
/// (selected by the module version in TEE_TCB_SVN[1]; version 0 has none).
fn module_gap(info: &TcbInfo, tee_tcb_svn: &[u8; 16]) -> Option<ComponentGap> {
    let identity = info.tdx_module_identity(tee_tcb_svn).ok()??;
    let target = identity
        .tcb_levels
        .iter()
        .filter(|l| l.tcb_status == TcbStatus::UpToDate)
        .max_by(|a, b| a.tcb_date.cmp(&b.tcb_date))?;
    let gap = target.shortfall(tee_tcb_svn)?;
    Some(ComponentGap {
        component: "TDX_MODULE_ISVSVN".into(),
        label: Some(format!("TDX module {}", identity.id)),
        found: gap.have,
        required: gap.needs,
    })
}

/// The quoting enclave's ISVSVN against the newest UpToDate level of its identity.
fn qe_gap(qe: &QeIdentity, isv_svn: u16) -> Option<ComponentGap> {
    let required = qe
        .tcb_levels
        .iter()
        .filter(|l| l.tcb_status == TcbStatus::UpToDate)
        .max_by(|a, b| a.tcb_date.cmp(&b.tcb_date))?
        .tcb
        .isvsvn;
    (isv_svn < required).then(|| ComponentGap {
        component: "QE_ISVSVN".into(),
        label: Some(format!("{} identity", qe.id)),
        found: isv_svn,
        required,
    })
}

/// Category and type of each component of one level, as the TCB info JSON names them.
struct ComponentNames {
    sgx: Vec<Option<String>>,
    tdx: Vec<Option<String>>,
}

impl ComponentNames {
    fn sgx(&self, i: u8) -> Option<String> {
        self.sgx.get(usize::from(i)).cloned().flatten()
    }

    fn tdx(&self, i: u8) -> Option<String> {
        self.tdx.get(usize::from(i)).cloned().flatten()
    }
}

fn component_names(raw: &Value, level: usize) -> ComponentNames {
    let tcb = &raw["tcbLevels"][level]["tcb"];
    let names = |key: &str| -> Vec<Option<String>> {
        tcb[key]
            .as_array()
            .map(|list| list.iter().map(label).collect())
            .unwrap_or_default()
    };
    ComponentNames {
        sgx: names("sgxtcbcomponents"),
        tdx: names("tdxtcbcomponents"),
    }
}

/// `"OS/VMM: SGX Late Microcode Update"`, `"BIOS"`, or `None` when the JSON says nothing.
fn label(component: &Value) -> Option<String> {
    let category = component["category"].as_str().filter(|s| !s.is_empty());
    let kind = component["type"].as_str().filter(|s| !s.is_empty());
    match (category, kind) {
        (Some(c), Some(t)) => Some(format!("{c}: {t}")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_string()),
        (None, None) => None,
    }
}

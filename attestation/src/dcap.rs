//! Intel SGX (quote v3) and TDX (quote v4/v5) DCAP verification with `dcap-qvl`.
//!
//! Collateral is dcap-qvl's `QuoteCollateralV3` JSON, taken from the evidence's `collateral`
//! field or, when absent, from a [`CollateralSource`] keyed by (TEE, FMSPC, PCK CA type).
//!
//! Order of checks: exact quote length (trailing bytes are refused, see below), header,
//! evidence type vs TEE type, collateral validity window at `now` (each item named with its
//! dates), then dcap-qvl (CRLs, TCB info and QE identity signatures and chains, PCK chain, QE
//! report, ISV signature, TCB level, TDX attributes), then the debug decision.
//!
//! **Trailing bytes**: a quote is `header ‖ body ‖ u32 len ‖ signature data`; its length is
//! fully determined by its own fields ([`quote_len`]), and dcap-qvl ignores anything after
//! it. Real TDX quotes arrive zero-padded (the quote generation service fills a fixed
//! buffer; two of the shared vectors carry 70 zero bytes), so Quarry verifies exactly the
//! quote and trims **zero** padding. Any **non-zero** byte after the quote is refused
//! (`Malformed`, naming the offset and count): it is unsigned data that a consumer could
//! mistake for part of the evidence. That refusal comes after the cryptographic and TCB
//! checks, so a quote that fails those is reported for that reason. Nothing past
//! [`quote_len`] is ever hashed, stored or returned.
use std::sync::Arc;
use std::time::SystemTime;

use dcap_qvl::quote::{Quote, Report};
use dcap_qvl::verify::QuoteVerifier;
use dcap_qvl::QuoteCollateralV3;
use quarry_api::claims::Identity;
use quarry_api::{Claims, Evidence, EvidenceType, TcbStatus, TeeKind};

use crate::collateral::{CollateralSource, DcapKey, PckCaType};
use crate::timefmt::unix_secs;
use crate::{Verifier, VerifyError};

const HEADER_LEN: usize = 48;
const SGX_BODY_LEN: usize = 384;
const TD10_BODY_LEN: usize = 584;
const TEE_TYPE_SGX: u32 = 0;
const TEE_TYPE_TDX: u32 = 0x81;

/// Verifies SGX or TDX DCAP quotes.
pub struct DcapVerifier {
    tee: TeeKind,
    root_ca_der: Option<Vec<u8>>,
    source: Option<Arc<dyn CollateralSource>>,
    allow_debug: bool,
    cache: bool,
}

impl DcapVerifier {
    /// A verifier of SGX quotes (v3) anchored at Intel's production SGX Root CA.
    pub fn sgx() -> DcapVerifier {
        DcapVerifier::new(TeeKind::Sgx)
    }

    /// A verifier of TDX quotes (v4/v5) anchored at Intel's production SGX Root CA.
    pub fn tdx() -> DcapVerifier {
        DcapVerifier::new(TeeKind::Tdx)
    }

    fn new(tee: TeeKind) -> DcapVerifier {
        DcapVerifier {
            tee,
            root_ca_der: None,
            source: None,
            allow_debug: false,
            cache: true,
        }
    }

    /// Anchors verification at another root CA (DER) instead of Intel's production root.
    pub fn with_root_ca(mut self, der: Vec<u8>) -> DcapVerifier {
        self.root_ca_der = Some(der);
        self
    }

    /// Looks collateral up here when the evidence carries none.
    pub fn with_collateral_source(mut self, source: Arc<dyn CollateralSource>) -> DcapVerifier {
        self.source = Some(source);
        self
    }

    /// The TEE whose quotes this verifier takes (SGX or TDX).
    pub fn tee(&self) -> TeeKind {
        self.tee
    }

    /// Accepts debug enclaves / TDs (claims say `debug: true`). Default: refused.
    pub fn allow_debug(mut self, allow: bool) -> DcapVerifier {
        self.allow_debug = allow;
        self
    }

    /// Reuses successful collateral signature checks ([`crate::cache`]); default on.
    pub fn collateral_cache(mut self, on: bool) -> DcapVerifier {
        self.cache = on;
        self
    }

    /// Verifies raw quote bytes with explicit collateral (or the configured source).
    pub fn verify_quote(
        &self,
        quote: &[u8],
        collateral: Option<&QuoteCollateralV3>,
        now: SystemTime,
    ) -> Result<Claims, VerifyError> {
        let now_secs = unix_secs(now)?;
        let len = quote_len(quote)?;
        let (quote, trailing) = quote.split_at(len);
        let parsed = Quote::parse(quote)
            .map_err(|e| VerifyError::Malformed(format!("DCAP quote: {e:#}")))?;
        let quote_tee = match parsed.header.tee_type {
            TEE_TYPE_SGX => TeeKind::Sgx,
            TEE_TYPE_TDX => TeeKind::Tdx,
            other => {
                return Err(VerifyError::Malformed(format!(
                    "DCAP quote: unknown TEE type {other:#x} at offset 4"
                )))
            }
        };
        if quote_tee != self.tee {
            return Err(VerifyError::Unsupported(format!(
                "a {} verifier was given a {} quote",
                self.tee, quote_tee
            )));
        }
        let owned;
        let collateral = match collateral {
            Some(c) => c,
            None => {
                owned = self.collateral_for(&parsed, now)?;
                &owned
            }
        };
        check_window(collateral, now_secs)?;
        let verifier = match &self.root_ca_der {
            Some(der) => QuoteVerifier::new(der.clone()),
            None => QuoteVerifier::new_prod(),
        }
        // Debug is decided below with a precise error; everything else stays dcap-qvl's default.
        .allow_debug(true);
        let out = if self.cache {
            // The quote's own signature (header and body, by the attestation key) is checked
            // every time. The QE report signed by the PCK key certifies the attestation key
            // and is the same in every quote of that key, so like a certificate it is checked
            // once per exact content.
            let per_quote = quote
                .get(..parsed.signed_length())
                .map(<[u8]>::to_vec)
                .into_iter()
                .collect();
            let _call = crate::cache::DcapCall::begin(per_quote);
            verifier
                .with_config::<crate::cache::CachedConfig>()
                .verify_with_policy(quote, collateral, now_secs, &AcceptAll)
        } else {
            verifier.verify_with_policy(quote, collateral, now_secs, &AcceptAll)
        }
        .map_err(|e| map_error(e, now_secs))?;
        let mut claims = claims_from(&out)?;
        // Collateral that dcap-qvl just verified, so its TCB levels can be read as facts.
        claims.tcb_standing = crate::standing::dcap(&out, collateral);
        if trailing.iter().any(|b| *b != 0) {
            return Err(VerifyError::Malformed(format!(
                "{} trailing bytes after the quote, which ends at offset {len}, are not zero padding",
                trailing.len()
            )));
        }
        if claims.debug && !self.allow_debug {
            return Err(VerifyError::Debug(match self.tee {
                TeeKind::Tdx => "TD attributes have a TUD (debug) bit set".into(),
                _ => "the enclave's ATTRIBUTES.DEBUG flag is set".into(),
            }));
        }
        Ok(claims)
    }

    fn collateral_for(
        &self,
        quote: &Quote,
        now: SystemTime,
    ) -> Result<QuoteCollateralV3, VerifyError> {
        let fmspc = dcap_qvl::intel::quote_fmspc(quote)
            .map_err(|e| VerifyError::Malformed(format!("PCK certificate in the quote: {e:#}")))?;
        let ca = dcap_qvl::intel::quote_ca(quote)
            .map_err(|e| VerifyError::Malformed(format!("PCK certificate in the quote: {e:#}")))?;
        let key = DcapKey {
            tee: self.tee,
            fmspc: hex::encode_upper(fmspc),
            ca: match ca {
                dcap_qvl::config::PckCa::Platform => PckCaType::Platform,
                dcap_qvl::config::PckCa::Processor => PckCaType::Processor,
            },
        };
        match &self.source {
            Some(source) => source.dcap(&key, now),
            None => Err(VerifyError::Collateral(format!(
                "the evidence carries no collateral and no collateral cache is configured ({key})"
            ))),
        }
    }
}

impl Verifier for DcapVerifier {
    fn verify(&self, evidence: &Evidence, now: SystemTime) -> Result<Claims, VerifyError> {
        let want = match self.tee {
            TeeKind::Tdx => EvidenceType::TdxDcap,
            _ => EvidenceType::SgxDcap,
        };
        crate::expect_kind(evidence, want)?;
        let collateral: Option<QuoteCollateralV3> =
            crate::collateral::embedded(evidence, "QuoteCollateralV3 JSON")?;
        self.verify_quote(&evidence.quote, collateral.as_ref(), now)
    }
}

/// Parses QuoteCollateralV3 JSON text.
pub fn parse_collateral(text: &str) -> Result<QuoteCollateralV3, VerifyError> {
    serde_json::from_str(text)
        .map_err(|e| VerifyError::Collateral(format!("not QuoteCollateralV3 JSON: {e}")))
}

/// The length of the quote at the start of `quote` (from its own header and length fields);
/// refuses truncated input and unknown versions.
pub fn quote_len(quote: &[u8]) -> Result<usize, VerifyError> {
    let u16_at = |off: usize| -> Option<u16> {
        Some(u16::from_le_bytes(
            quote.get(off..off + 2)?.try_into().ok()?,
        ))
    };
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            quote.get(off..off + 4)?.try_into().ok()?,
        ))
    };
    let short = |what: &str| {
        VerifyError::Malformed(format!(
            "DCAP quote truncated: {} bytes, too short for {what}",
            quote.len()
        ))
    };
    let version = u16_at(0).ok_or_else(|| short("the header"))?;
    let tee_type = u32_at(4).ok_or_else(|| short("the header"))?;
    let body_end = match (version, tee_type) {
        (3, _) | (4, TEE_TYPE_SGX) => HEADER_LEN + SGX_BODY_LEN,
        (4, _) => HEADER_LEN + TD10_BODY_LEN,
        (5, _) => {
            let size = u32_at(HEADER_LEN + 2).ok_or_else(|| short("the v5 body descriptor"))?;
            HEADER_LEN + 6 + size as usize
        }
        (v, _) => {
            return Err(VerifyError::Malformed(format!(
                "DCAP quote version {v} is not supported (3, 4, 5)"
            )))
        }
    };
    let sig_len = u32_at(body_end).ok_or_else(|| short("the report body"))?;
    let total = body_end + 4 + sig_len as usize;
    if quote.len() < total {
        return Err(short(&format!("its signature data ({total} bytes needed)")));
    }
    Ok(total)
}

/// The validity window of each collateral item (issue date, next update), in check order.
pub(crate) struct Windows([(&'static str, i64, Option<i64>); 4]);

/// Refuses collateral outside its validity window at `now`, naming the item and the date.
/// The dates are parsed once per exact collateral ([`crate::cache`]); the comparison with
/// `now` runs every time.
fn check_window(c: &QuoteCollateralV3, now: u64) -> Result<(), VerifyError> {
    let key = crate::cache::key(
        "dcap-windows",
        &[
            c.tcb_info.as_bytes(),
            c.qe_identity.as_bytes(),
            &c.root_ca_crl,
            &c.pck_crl,
        ],
    );
    let windows = crate::cache::DCAP_WINDOWS.get_or_parse(key, || parse_windows(c))?;
    for (what, issue, next) in windows.0 {
        in_window(what, issue, next, now)?;
    }
    Ok(())
}

fn parse_windows(c: &QuoteCollateralV3) -> Result<Windows, VerifyError> {
    /// The two dates of a TCB info / QE identity body; other fields are skipped unparsed.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Dates {
        issue_date: Option<String>,
        next_update: Option<String>,
    }
    let json_dates = |what: &str, text: &str| -> Result<(i64, i64), VerifyError> {
        let v: Dates = serde_json::from_str(text)
            .map_err(|e| VerifyError::Collateral(format!("{what} is not JSON: {e}")))?;
        let date = |field: &str, value: Option<&String>| -> Result<i64, VerifyError> {
            let s =
                value.ok_or_else(|| VerifyError::Collateral(format!("{what} has no {field}")))?;
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .map_err(|e| VerifyError::Collateral(format!("{what} {field} {s:?}: {e}")))
        };
        Ok((
            date("issueDate", v.issue_date.as_ref())?,
            date("nextUpdate", v.next_update.as_ref())?,
        ))
    };
    let crl_dates = |what: &str, der: &[u8]| -> Result<(i64, Option<i64>), VerifyError> {
        let (_, crl) = x509_parser::parse_x509_crl(der)
            .map_err(|e| VerifyError::Collateral(format!("{what} is not a DER CRL: {e}")))?;
        Ok((
            crl.last_update().timestamp(),
            crl.next_update().map(|t| t.timestamp()),
        ))
    };
    let (tcb_issue, tcb_next) = json_dates("TCB info", &c.tcb_info)?;
    let (qe_issue, qe_next) = json_dates("QE identity", &c.qe_identity)?;
    let (root_issue, root_next) = crl_dates("Root CA CRL", &c.root_ca_crl)?;
    let (pck_issue, pck_next) = crl_dates("PCK CRL", &c.pck_crl)?;
    Ok(Windows([
        ("TCB info", tcb_issue, Some(tcb_next)),
        ("QE identity", qe_issue, Some(qe_next)),
        ("Root CA CRL", root_issue, root_next),
        ("PCK CRL", pck_issue, pck_next),
    ]))
}

fn in_window(what: &str, issue: i64, next: Option<i64>, now: u64) -> Result<(), VerifyError> {
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    let outside = now_i < issue || next.is_some_and(|n| now_i >= n);
    if outside {
        return Err(VerifyError::Expired {
            what: what.to_string(),
            now: now_i,
            not_before: Some(issue),
            not_after: next,
        });
    }
    Ok(())
}

/// dcap-qvl's policy hook: accept every verified status; Quarry's policy decides later.
struct AcceptAll;

impl dcap_qvl::policy::Policy for AcceptAll {
    fn validate(&self, _: &dcap_qvl::policy::QuoteClaims) -> anyhow::Result<()> {
        Ok(())
    }
}

fn claims_from(out: &dcap_qvl::policy::QuoteClaims) -> Result<Claims, VerifyError> {
    use dcap_qvl::tcb_info::TcbStatus as Q;
    let tcb_status = match out.tcb.status {
        Q::UpToDate => TcbStatus::UpToDate,
        Q::SWHardeningNeeded => TcbStatus::SWHardeningNeeded,
        Q::ConfigurationNeeded => TcbStatus::ConfigurationNeeded,
        Q::ConfigurationAndSWHardeningNeeded => TcbStatus::ConfigurationAndSWHardeningNeeded,
        // A TD that launched on an out-of-date TCB: reported as out of date (conservative).
        Q::OutOfDate | Q::TDRelaunchAdvised => TcbStatus::OutOfDate,
        Q::OutOfDateConfigurationNeeded | Q::TDRelaunchAdvisedConfigurationNeeded => {
            TcbStatus::OutOfDateConfigurationNeeded
        }
        Q::Revoked => {
            return Err(VerifyError::Revoked(
                "the platform TCB level is Revoked".into(),
            ))
        }
    };
    let mut identity = Identity::default();
    let (tee, debug, report_data) = match &out.report {
        Report::SgxEnclave(r) => {
            identity.unique_id = Some(r.mr_enclave.to_vec());
            identity.signer_id = Some(r.mr_signer.to_vec());
            identity.product_id = Some(u64::from(r.isv_prod_id));
            identity.security_version = Some(u64::from(r.isv_svn));
            identity
                .fields
                .insert("Attributes".into(), hex::encode(r.attributes));
            identity
                .fields
                .insert("MiscSelect".into(), format!("{:08x}", r.misc_select));
            (TeeKind::Sgx, r.attributes[0] & 0x02 != 0, r.report_data)
        }
        other => {
            let td = other.as_td10().ok_or_else(|| {
                VerifyError::Malformed("TDX quote without a TD report body".into())
            })?;
            let fields: [(&str, &[u8]); 12] = [
                ("MRTD", &td.mr_td),
                ("RTMR0", &td.rt_mr0),
                ("RTMR1", &td.rt_mr1),
                ("RTMR2", &td.rt_mr2),
                ("RTMR3", &td.rt_mr3),
                ("MRSEAM", &td.mr_seam),
                ("MRConfigID", &td.mr_config_id),
                ("MROwner", &td.mr_owner),
                ("MROwnerConfig", &td.mr_owner_config),
                ("TDAttributes", &td.td_attributes),
                ("TEETCBSVN", &td.tee_tcb_svn),
                ("XFAM", &td.xfam),
            ];
            let f = &mut identity.fields;
            for (name, value) in fields {
                f.insert(name.into(), hex::encode(value));
            }
            if let Some(td15) = other.as_td15() {
                f.insert("MRServiceTD".into(), hex::encode(td15.mr_service_td));
            }
            // Any TUD bit (DEBUG, profiling) makes the TD untrusted.
            (TeeKind::Tdx, td.td_attributes[0] != 0, td.report_data)
        }
    };
    Ok(Claims {
        tee,
        identity,
        debug,
        report_data,
        tcb_status,
        advisory_ids: out.tcb.advisory_ids.clone(),
        platform_id: Some(hex::encode(out.platform.pck.fmspc)),
        simulation: false,
        reported_tcb: None,
        tcb_standing: None,
    })
}

/// Turns dcap-qvl's message chain into the precise refusal variant, keeping the text.
fn map_error(e: anyhow::Error, now: u64) -> VerifyError {
    let text = format!("{e:#}");
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&["Revoked", "revoked", "CertRevoked"]) {
        VerifyError::Revoked(text)
    } else if has(&[
        "expired",
        "Expired",
        "in the future",
        "NotValidYet",
        "not valid",
    ]) {
        VerifyError::Expired {
            what: text,
            now: i64::try_from(now).unwrap_or(i64::MAX),
            not_before: None,
            not_after: None,
        }
    } else if has(&["No matching TCB level", "TCB level", "below minimum"]) {
        VerifyError::TcbUnsupported(text)
    } else if has(&["Debug mode", "profiling"]) {
        VerifyError::Debug(text)
    } else if has(&[
        "TD attributes",
        "migration",
        "SERVTD_EXT",
        "SEPT_VE_DISABLE",
        "service TD",
    ]) {
        VerifyError::Attribute {
            name: text,
            found: "set".into(),
            allowed: "refused by the quote verification library".into(),
        }
    } else if has(&["ignature", "hash mismatch"]) {
        VerifyError::BadSignature(text)
    } else if has(&["decode", "Decode", "parse", "Unsupported"]) {
        VerifyError::Malformed(text)
    } else {
        VerifyError::UntrustedPlatform(text)
    }
}

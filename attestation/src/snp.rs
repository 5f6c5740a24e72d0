//! AMD SEV-SNP attestation report verification (report versions 2..=5).
//!
//! The `sev` crate (no OpenSSL) verifies the RSA-PSS certificate chain ARK → ASK/ASVK →
//! VCEK/VLEK. Quarry adds what `sev` does not do: the ARK must be a pinned AMD root of the
//! VEK's product line, every certificate must be valid at the verification time, the VEK's SPL
//! extensions must equal REPORTED_TCB, a VCEK's hwID must equal CHIP_ID, a VLEK must be issued
//! by an ASVK (and a VCEK by an ASK), the product line must match the report's CPUID (v3+),
//! the ECDSA P-384 signature is checked over the raw report bytes `[0, 0x2A0)`, and the guest
//! policy's DEBUG and MIGRATE_MA bits and the VMPL are refused unless allowed.
//!
//! The report must be exactly 1184 bytes: truncated input and trailing bytes are refused.
//! SNP has no Intel-style TCB status: a report whose VEK matches its REPORTED_TCB gets
//! `UpToDate`; packages pin a floor with `MinimumTCB`.
use std::sync::Arc;
use std::time::SystemTime;

use quarry_api::claims::{Identity, SnpTcb};
use quarry_api::{Claims, Evidence, EvidenceType, TcbStatus, TeeKind};
use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;

use crate::collateral::{CollateralSource, SnpKey};
use crate::timefmt::unix_secs;
use crate::{Verifier, VerifyError};

/// Size of an SNP attestation report.
pub const REPORT_LEN: usize = 0x4A0;
/// Highest VMPL an SNP guest can run at (VMPL 0 is the most privileged).
pub const HIGHEST_VMPL: u32 = 3;
/// End of the signed part of the report.
const SIGNED_LEN: usize = 0x2A0;
const OID_PRODUCT: &str = "1.3.6.1.4.1.3704.1.2";
const OID_BL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";
const POLICY_MIGRATE_MA: u64 = 1 << 18;
const POLICY_DEBUG: u64 = 1 << 19;

/// VEK and CA chain for one report: the `collateral` of `snp` evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpCollateral {
    /// The VCEK or VLEK certificate, PEM.
    #[serde(alias = "vcek", alias = "vlek")]
    pub vek: String,
    /// ASK or ASVK and ARK, PEM (any order). Absent: AMD's built-in ASK + ARK of the product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_chain: Option<String>,
}

/// Verifies SEV-SNP attestation reports.
pub struct SnpVerifier {
    arks: Vec<Vec<u8>>,
    source: Option<Arc<dyn CollateralSource>>,
    allow_debug: bool,
    allow_migration_agent: bool,
    max_vmpl: u32,
    cache: bool,
}

impl Default for SnpVerifier {
    fn default() -> SnpVerifier {
        SnpVerifier::new()
    }
}

impl SnpVerifier {
    /// A verifier trusting AMD's Milan, Genoa and Turin ARKs; VMPL 0 only; no debug, no MA.
    pub fn new() -> SnpVerifier {
        use sev::certs::snp::builtin::{genoa, milan, turin};
        let arks = [milan::ARK, genoa::ARK, turin::ARK]
            .iter()
            .filter_map(|pem| pem_certs(pem).ok())
            .flatten()
            .collect();
        SnpVerifier {
            arks,
            source: None,
            allow_debug: false,
            allow_migration_agent: false,
            max_vmpl: 0,
            cache: true,
        }
    }

    /// Looks the VEK up here when the evidence carries no collateral.
    pub fn with_collateral_source(mut self, source: Arc<dyn CollateralSource>) -> SnpVerifier {
        self.source = Some(source);
        self
    }

    /// Accepts reports whose guest policy allows debugging (claims say `debug: true`).
    pub fn allow_debug(mut self, allow: bool) -> SnpVerifier {
        self.allow_debug = allow;
        self
    }

    /// Accepts guests with a migration agent (policy MIGRATE_MA).
    pub fn allow_migration_agent(mut self, allow: bool) -> SnpVerifier {
        self.allow_migration_agent = allow;
        self
    }

    /// Highest VMPL accepted (0 = full guest only; 1..3 under an SVSM; see [`HIGHEST_VMPL`]).
    pub fn max_vmpl(mut self, vmpl: u32) -> SnpVerifier {
        self.max_vmpl = vmpl;
        self
    }

    /// Reuses verified AMD certificate chains ([`crate::cache`]); default on.
    pub fn collateral_cache(mut self, on: bool) -> SnpVerifier {
        self.cache = on;
        self
    }

    /// Verifies a raw report with explicit collateral (or the configured source).
    pub fn verify_report(
        &self,
        report: &[u8],
        collateral: Option<&SnpCollateral>,
        now: SystemTime,
    ) -> Result<Claims, VerifyError> {
        let at = now;
        let now = i64::try_from(unix_secs(now)?).unwrap_or(i64::MAX);
        let r = RawReport::parse(report)?;
        let owned;
        let collateral = match collateral {
            Some(c) => c,
            None => {
                owned = self.collateral_for(&r, at)?;
                &owned
            }
        };
        let vek_der = pem_or_der_one(&collateral.vek, "VEK")?;
        let vek = parse_cert(&vek_der, "VEK")?;
        let vek_product = ext_product(&vek)?;
        let product_line = vek_product
            .split('-')
            .next()
            .unwrap_or_default()
            .to_string();
        let chain_ders = match &collateral.ca_chain {
            Some(pem) => pem_certs(pem.as_bytes())
                .map_err(|e| VerifyError::Collateral(format!("CA chain: {e}")))?,
            None => builtin_chain(&product_line)?,
        };
        let chain: Vec<(Vec<u8>, X509Certificate<'_>)> = chain_ders
            .iter()
            .map(|d| parse_cert(d, "CA chain certificate").map(|c| (d.clone(), c)))
            .collect::<Result<_, _>>()?;

        // Issuer of the VEK: the chain certificate whose subject is the VEK's issuer.
        let (ask_der, ask) = chain
            .iter()
            .find(|(_, c)| c.subject() == vek.issuer() && c.subject() != c.issuer())
            .ok_or_else(|| {
                VerifyError::UntrustedPlatform(format!(
                    "the CA chain has no issuer of the VEK ({})",
                    vek.issuer()
                ))
            })?;
        let (ark_der, ark) = chain
            .iter()
            .find(|(_, c)| c.subject() == ask.issuer() && c.subject() == c.issuer())
            .ok_or_else(|| {
                VerifyError::UntrustedPlatform(format!(
                    "the CA chain has no self-signed root issuing {}",
                    ask.subject()
                ))
            })?;
        if !self.arks.iter().any(|a| a == ark_der) {
            return Err(VerifyError::UntrustedPlatform(format!(
                "the root {} is not a pinned AMD ARK",
                ark.subject()
            )));
        }
        for (what, cert) in [("ARK", ark), ("ASK/ASVK", ask), ("VEK", &vek)] {
            cert_valid_at(what, cert, now)?;
        }
        // Product line: ARK-<line>, SEV-<line> / SEV-VLEK-<line>, VEK productName <line>[-stepping].
        let ark_cn = common_name(ark);
        let ask_cn = common_name(ask);
        if ark_cn != format!("ARK-{product_line}") {
            return Err(mismatch(
                "root (ARK) for the VEK product",
                format!("ARK-{product_line}"),
                ark_cn,
            ));
        }
        let is_asvk = ask_cn == format!("SEV-VLEK-{product_line}");
        if !is_asvk && ask_cn != format!("SEV-{product_line}") {
            return Err(mismatch(
                "issuer (ASK/ASVK) for the VEK product",
                format!("SEV-{product_line} or SEV-VLEK-{product_line}"),
                ask_cn,
            ));
        }
        match (r.signing_key, is_asvk) {
            (0, false) | (1, true) => {}
            (0, true) => {
                return Err(mismatch(
                    "VEK issuer for SIGNING_KEY 0 (VCEK)",
                    format!("SEV-{product_line} (an ASK)"),
                    ask_cn,
                ))
            }
            (1, false) => {
                return Err(mismatch(
                    "VEK issuer for SIGNING_KEY 1 (VLEK)",
                    format!("SEV-VLEK-{product_line} (an ASVK)"),
                    ask_cn,
                ))
            }
            (other, _) => {
                return Err(VerifyError::Unsupported(format!(
                    "SIGNING_KEY {other} (only VCEK 0 and VLEK 1 are verifiable)"
                )))
            }
        }
        if let Some(cpu_line) = r.cpuid_product_line() {
            if cpu_line != product_line {
                return Err(mismatch(
                    "product line (report CPUID vs VEK productName)",
                    cpu_line.to_string(),
                    vek_product.to_string(),
                ));
            }
        }
        // Signatures: ARK self-signed, ARK → ASK/ASVK → VEK (sev, RSA-PSS SHA-384). They
        // depend on the exact DER only (the validity windows were checked above), so a
        // chain verified once is not verified again ([`crate::cache`]); failures never are
        // remembered.
        let chain_key = crate::cache::key("snp-chain", &[ark_der, ask_der, &vek_der]);
        if !(self.cache && crate::cache::SNP_CHAINS.contains(&chain_key)) {
            verify_chain(ark_der, ask_der, &vek_der, &ask_cn)?;
            if self.cache {
                crate::cache::SNP_CHAINS.insert(chain_key);
            }
        }
        // Reported TCB == VEK SPLs (the VEK is derived per TCB).
        let tcb = r.reported_tcb(&product_line);
        let spl = |oid: &str| ext_int(&vek, oid);
        let mut wrong = Vec::new();
        for (name, oid, actual) in [
            ("bootloader", OID_BL, tcb.bootloader),
            ("tee", OID_TEE, tcb.tee),
            ("snp", OID_SNP, tcb.snp),
            ("microcode", OID_UCODE, tcb.microcode),
        ] {
            let cert_val = spl(oid)?;
            if cert_val != Some(u64::from(actual)) {
                wrong.push((name, actual.to_string(), show(cert_val)));
            }
        }
        if let Some(fmc) = tcb.fmc {
            let cert_val = spl(OID_FMC)?;
            if cert_val != Some(u64::from(fmc)) {
                wrong.push(("fmc", fmc.to_string(), show(cert_val)));
            }
        }
        if !wrong.is_empty() {
            let names: Vec<&str> = wrong.iter().map(|(n, _, _)| *n).collect();
            let report: Vec<String> = wrong.iter().map(|(n, r, _)| format!("{n} {r}")).collect();
            let vek: Vec<String> = wrong.iter().map(|(n, _, v)| format!("{n} {v}")).collect();
            return Err(mismatch(
                &format!("VEK TCB ({}) vs REPORTED_TCB", names.join(", ")),
                report.join(", "),
                vek.join(", "),
            ));
        }
        // hwID == CHIP_ID (VCEK only; a VLEK is not chip-specific).
        if r.signing_key == 0 {
            let hwid = ext_octets(&vek, OID_HWID)?.ok_or_else(|| {
                mismatch("VCEK hwID extension", "present".into(), "absent".into())
            })?;
            let chip = &r.bytes[0x1A0..0x1E0];
            let matches = !hwid.is_empty()
                && hwid.len() <= chip.len()
                && hwid == chip[..hwid.len()]
                && chip[hwid.len()..].iter().all(|b| *b == 0);
            if !matches {
                return Err(mismatch(
                    "VCEK hwID vs report CHIP_ID",
                    hex::encode(chip),
                    hex::encode(&hwid),
                ));
            }
        }
        // ECDSA P-384 over the raw bytes [0, 0x2A0).
        verify_report_signature(&vek, r.bytes)?;
        let debug = self.check_guest(&r)?;
        Ok(r.claims(debug, tcb))
    }

    /// The guest policy's DEBUG and MIGRATE_MA bits and the VMPL against what this verifier
    /// accepts; runs only after the signature verified. Returns whether DEBUG is set.
    fn check_guest(&self, r: &RawReport<'_>) -> Result<bool, VerifyError> {
        let debug = r.policy & POLICY_DEBUG != 0;
        if debug && !self.allow_debug {
            return Err(VerifyError::Debug(format!(
                "guest policy {:#x} has DEBUG (bit 19) set",
                r.policy
            )));
        }
        if r.policy & POLICY_MIGRATE_MA != 0 && !self.allow_migration_agent {
            return Err(VerifyError::Attribute {
                name: format!("guest policy {:#x} MIGRATE_MA (bit 18)", r.policy),
                found: "set".into(),
                allowed: "a migration agent is never accepted".into(),
            });
        }
        if r.vmpl > self.max_vmpl {
            return Err(VerifyError::Attribute {
                name: "VMPL".into(),
                found: r.vmpl.to_string(),
                allowed: format!("at most {} accepted", self.max_vmpl),
            });
        }
        Ok(debug)
    }

    fn collateral_for(
        &self,
        r: &RawReport<'_>,
        now: SystemTime,
    ) -> Result<SnpCollateral, VerifyError> {
        let product = r.cpuid_product_line();
        let key = SnpKey {
            product: product.clone().unwrap_or_else(|| "Milan".into()),
            chip_id: hex::encode(&r.bytes[0x1A0..0x1E0]),
            reported_tcb: r.reported_tcb(product.as_deref().unwrap_or("Milan")),
            vlek: r.signing_key == 1,
        };
        match &self.source {
            Some(s) => s.snp(&key, now),
            None => Err(VerifyError::Collateral(format!(
                "the evidence carries no VEK and no collateral cache is configured ({key})"
            ))),
        }
    }
}

impl Verifier for SnpVerifier {
    fn verify(&self, evidence: &Evidence, now: SystemTime) -> Result<Claims, VerifyError> {
        crate::expect_kind(evidence, EvidenceType::Snp)?;
        let collateral: Option<SnpCollateral> =
            crate::collateral::embedded(evidence, "{\"vek\": PEM, \"ca_chain\": PEM}")?;
        self.verify_report(&evidence.quote, collateral.as_ref(), now)
    }
}

/// The fields of a report Quarry reads, by offset.
struct RawReport<'a> {
    bytes: &'a [u8],
    version: u32,
    policy: u64,
    vmpl: u32,
    signing_key: u32,
}

impl<'a> RawReport<'a> {
    fn parse(bytes: &'a [u8]) -> Result<RawReport<'a>, VerifyError> {
        if bytes.len() < REPORT_LEN {
            return Err(VerifyError::Malformed(format!(
                "SNP report truncated: {} bytes, {REPORT_LEN} expected",
                bytes.len()
            )));
        }
        if bytes.len() > REPORT_LEN {
            return Err(VerifyError::Malformed(format!(
                "{} trailing bytes after the {REPORT_LEN}-byte SNP report; Quarry refuses padded reports",
                bytes.len() - REPORT_LEN
            )));
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let version = u32_at(0);
        if !(2..=5).contains(&version) {
            return Err(VerifyError::Unsupported(format!(
                "SNP report version {version} (2..=5 supported)"
            )));
        }
        let sig_algo = u32_at(0x34);
        if sig_algo != 1 {
            return Err(VerifyError::Unsupported(format!(
                "SNP SIGNATURE_ALGO {sig_algo} (only 1 = ECDSA P-384 SHA-384)"
            )));
        }
        let mut policy = [0u8; 8];
        policy.copy_from_slice(&bytes[8..16]);
        Ok(RawReport {
            bytes,
            version,
            policy: u64::from_le_bytes(policy),
            vmpl: u32_at(0x30),
            signing_key: (u32_at(0x48) >> 2) & 0x7,
        })
    }

    /// Product line from CPUID family/model (v3+ reports), if known.
    fn cpuid_product_line(&self) -> Option<String> {
        if self.version < 3 {
            return None;
        }
        let (family, model) = (self.bytes[0x188], self.bytes[0x189]);
        let line = match (family, model) {
            (0x19, 0x00..=0x0F) => "Milan",
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => "Genoa",
            (0x1A, 0x00..=0x11) => "Turin",
            _ => return Some(format!("unknown(family {family:#x} model {model:#x})")),
        };
        Some(line.to_string())
    }

    fn reported_tcb(&self, product_line: &str) -> SnpTcb {
        let t = &self.bytes[0x180..0x188];
        if product_line == "Turin" {
            SnpTcb {
                fmc: Some(t[0]),
                bootloader: t[1],
                tee: t[2],
                snp: t[3],
                microcode: t[7],
            }
        } else {
            SnpTcb {
                bootloader: t[0],
                tee: t[1],
                snp: t[6],
                microcode: t[7],
                fmc: None,
            }
        }
    }

    fn claims(&self, debug: bool, tcb: SnpTcb) -> Claims {
        let b = self.bytes;
        let mut identity = Identity::default();
        let f = &mut identity.fields;
        f.insert("Measurement".into(), hex::encode(&b[0x90..0xC0]));
        f.insert("HostData".into(), hex::encode(&b[0xC0..0xE0]));
        f.insert("IDKeyDigest".into(), hex::encode(&b[0xE0..0x110]));
        f.insert("AuthorKeyDigest".into(), hex::encode(&b[0x110..0x140]));
        f.insert("FamilyID".into(), hex::encode(&b[0x10..0x20]));
        f.insert("ImageID".into(), hex::encode(&b[0x20..0x30]));
        f.insert("ChipID".into(), hex::encode(&b[0x1A0..0x1E0]));
        f.insert("Policy".into(), format!("{:#x}", self.policy));
        f.insert("VMPL".into(), self.vmpl.to_string());
        f.insert(
            "GuestSVN".into(),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]).to_string(),
        );
        f.insert("ReportVersion".into(), self.version.to_string());
        let mut report_data = [0u8; 64];
        report_data.copy_from_slice(&b[0x50..0x90]);
        Claims {
            tee: TeeKind::Snp,
            identity,
            debug,
            report_data,
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: Vec::new(),
            platform_id: Some(hex::encode(&b[0x1A0..0x1E0])),
            simulation: false,
            reported_tcb: Some(tcb),
            tcb_standing: None,
        }
    }
}

/// ARK self-signature, ARK → ASK/ASVK and ASK/ASVK → VEK (sev, RSA-PSS SHA-384).
fn verify_chain(ark: &[u8], ask: &[u8], vek: &[u8], ask_cn: &str) -> Result<(), VerifyError> {
    use sev::certs::snp::Verifiable as _;
    let sev_cert = |der: &[u8]| {
        sev::certs::snp::Certificate::from_der(der)
            .map_err(|e| VerifyError::Malformed(format!("certificate: {e}")))
    };
    let chain = sev::certs::snp::Chain {
        ca: sev::certs::snp::ca::Chain {
            ark: sev_cert(ark)?,
            ask: sev_cert(ask)?,
        },
        vek: sev_cert(vek)?,
    };
    (&chain).verify().map(|_| ()).map_err(|e| {
        VerifyError::BadSignature(format!("AMD certificate chain ARK → {ask_cn} → VEK: {e}"))
    })
}

fn verify_report_signature(vek: &X509Certificate<'_>, report: &[u8]) -> Result<(), VerifyError> {
    let key = &vek.public_key().subject_public_key.data;
    // An uncompressed SEC1 P-384 point; ring checks it is on the curve when verifying.
    if key.len() != 97 || key[0] != 0x04 {
        return Err(VerifyError::Malformed(
            "the VEK's public key is not an uncompressed ECDSA P-384 key".into(),
        ));
    }
    // R and S are 72-byte little-endian fields; P-384 scalars use the low 48 bytes.
    let sig = &report[SIGNED_LEN..SIGNED_LEN + 144];
    let (r_le, s_le) = sig.split_at(72);
    if r_le[48..].iter().chain(&s_le[48..]).any(|b| *b != 0) {
        return Err(VerifyError::BadSignature(
            "the report signature's R or S exceeds 48 bytes".into(),
        ));
    }
    let mut rs = [0u8; 96];
    for i in 0..48 {
        rs[i] = r_le[47 - i];
        rs[48 + i] = s_le[47 - i];
    }
    // ring's P-384 (the same implementation rustls uses) is ~5x faster than RustCrypto's.
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_FIXED, key)
        .verify(&report[..SIGNED_LEN], &rs)
        .map_err(|_| {
            VerifyError::BadSignature(
                "the report signature over bytes [0, 0x2A0) does not verify with the VEK".into(),
            )
        })
}

fn builtin_chain(product_line: &str) -> Result<Vec<Vec<u8>>, VerifyError> {
    use sev::certs::snp::builtin::{genoa, milan, turin};
    let (ask, ark) = match product_line {
        "Milan" => (milan::ASK, milan::ARK),
        "Genoa" => (genoa::ASK, genoa::ARK),
        "Turin" => (turin::ASK, turin::ARK),
        other => {
            return Err(VerifyError::Collateral(format!(
                "no built-in AMD chain for product {other:?}; pass the CA chain"
            )))
        }
    };
    let mut out = pem_certs(ask).map_err(VerifyError::Collateral)?;
    out.extend(pem_certs(ark).map_err(VerifyError::Collateral)?);
    Ok(out)
}

/// All CERTIFICATE blocks of a PEM text, DER.
pub fn pem_certs(text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.contents().to_vec())
        .collect();
    if certs.is_empty() {
        return Err("no CERTIFICATE in the PEM text".into());
    }
    Ok(certs)
}

/// One certificate given as PEM text (or base64 DER).
fn pem_or_der_one(text: &str, what: &str) -> Result<Vec<u8>, VerifyError> {
    if text.contains("-----BEGIN") {
        let mut certs = pem_certs(text.as_bytes())
            .map_err(|e| VerifyError::Collateral(format!("{what}: {e}")))?;
        return Ok(certs.swap_remove(0));
    }
    quarry_api::bytes::unb64(text)
        .map_err(|e| VerifyError::Collateral(format!("{what}: neither PEM nor base64 DER: {e}")))
}

fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, VerifyError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| VerifyError::Malformed(format!("{what} is not an X.509 certificate: {e}")))
}

/// A certificate that does not belong to the report: the field, what the report calls for,
/// what the certificate says.
fn mismatch(field: &str, expected: String, found: String) -> VerifyError {
    VerifyError::CertificateMismatch {
        field: field.to_string(),
        expected,
        found,
    }
}

fn cert_valid_at(what: &str, cert: &X509Certificate<'_>, now: i64) -> Result<(), VerifyError> {
    let v = cert.validity();
    let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
    // x509 notAfter is inclusive: valid through `to`, expired from the next second.
    if now < from || now > to {
        return Err(VerifyError::Expired {
            what: format!("{what} certificate {}", common_name(cert)),
            now,
            not_before: Some(from),
            not_after: Some(to.saturating_add(1)),
        });
    }
    Ok(())
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_string()
}

fn ext_value<'a>(cert: &'a X509Certificate<'_>, oid: &str) -> Option<&'a [u8]> {
    cert.extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == oid)
        .map(|e| e.value)
}

/// A DER TLV: (tag, content) when `bytes` is exactly one short- or long-form TLV.
fn der_tlv(bytes: &[u8]) -> Option<(u8, &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7F);
        if n == 0 || n > 2 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() == len).then_some((tag, rest))
}

fn ext_int(cert: &X509Certificate<'_>, oid: &str) -> Result<Option<u64>, VerifyError> {
    let Some(v) = ext_value(cert, oid) else {
        return Ok(None);
    };
    match der_tlv(v) {
        Some((0x02, n)) if !n.is_empty() && n.len() <= 9 => {
            Ok(Some(n.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b))))
        }
        _ => Err(VerifyError::Malformed(format!(
            "VEK extension {oid} is not a DER INTEGER"
        ))),
    }
}

fn ext_octets(cert: &X509Certificate<'_>, oid: &str) -> Result<Option<Vec<u8>>, VerifyError> {
    let Some(v) = ext_value(cert, oid) else {
        return Ok(None);
    };
    Ok(Some(match der_tlv(v) {
        Some((0x04, inner)) => inner.to_vec(),
        // Some VCEKs carry the raw hwID bytes without an OCTET STRING wrapper.
        _ => v.to_vec(),
    }))
}

fn ext_product(cert: &X509Certificate<'_>) -> Result<String, VerifyError> {
    let v = ext_value(cert, OID_PRODUCT).ok_or_else(|| {
        mismatch(
            "VEK productName extension",
            "present".into(),
            "absent".into(),
        )
    })?;
    let text = match der_tlv(v) {
        Some((0x16 | 0x0C | 0x13, s)) => s,
        _ => v,
    };
    String::from_utf8(text.to_vec())
        .map_err(|_| VerifyError::Malformed("the VEK's productName is not text".into()))
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "(absent)".into(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A structurally valid v2 report (policy 0x30000) at `vmpl`; signature checks are not
    /// involved: `check_guest` runs after them.
    fn report_at(vmpl: u32) -> Vec<u8> {
        let mut r = vec![0u8; REPORT_LEN];
        r[0] = 2;
        r[8..16].copy_from_slice(&0x30000u64.to_le_bytes());
        r[0x30..0x34].copy_from_slice(&vmpl.to_le_bytes());
        r[0x34] = 1;
        r
    }

    #[test]
    fn a_report_above_the_vmpl_limit_is_refused_naming_the_vmpl_and_the_limit() {
        let bytes = report_at(1);
        let r = RawReport::parse(&bytes).unwrap();
        let err = SnpVerifier::new().check_guest(&r).unwrap_err();
        match err {
            VerifyError::Attribute {
                name,
                found,
                allowed,
            } => {
                assert_eq!(name, "VMPL");
                assert_eq!(found, "1");
                assert_eq!(allowed, "at most 0 accepted");
            }
            other => panic!("{other:?}"),
        }
        assert!(!SnpVerifier::new().max_vmpl(1).check_guest(&r).unwrap());
        let bytes = report_at(HIGHEST_VMPL);
        let r = RawReport::parse(&bytes).unwrap();
        assert!(SnpVerifier::new().max_vmpl(2).check_guest(&r).is_err());
        assert!(SnpVerifier::new()
            .max_vmpl(HIGHEST_VMPL)
            .check_guest(&r)
            .is_ok());
    }

    #[test]
    fn debug_and_migration_agent_bits_are_refused_unless_allowed() {
        let mut bytes = report_at(0);
        bytes[8..16].copy_from_slice(&(0x30000u64 | POLICY_DEBUG).to_le_bytes());
        let r = RawReport::parse(&bytes).unwrap();
        assert!(matches!(
            SnpVerifier::new().check_guest(&r),
            Err(VerifyError::Debug(_))
        ));
        assert!(SnpVerifier::new()
            .allow_debug(true)
            .check_guest(&r)
            .unwrap());
        bytes[8..16].copy_from_slice(&(0x30000u64 | POLICY_MIGRATE_MA).to_le_bytes());
        let r = RawReport::parse(&bytes).unwrap();
        assert!(matches!(
            SnpVerifier::new().check_guest(&r),
            Err(VerifyError::Attribute { .. })
        ));
    }
}

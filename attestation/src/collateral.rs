//! Verification collateral: an on-disk cache keyed by (TEE, FMSPC or chip, CA type) and
//! fetchers for a PCCS / Intel PCS URL and AMD KDS, used only when configured.
//!
//! Layout under the cache directory:
//! `sgx|tdx/<FMSPC>-<processor|platform>.json` (dcap-qvl `QuoteCollateralV3`, without any
//! per-quote PCK chain) and `snp/<product>/<chip-id hex>/<vcek|vlek>-<tcb>.json`
//! ([`SnpCollateral`]). Every item in it is vendor-signed and checked at verification, so the
//! transport and the cache need no trust. Without a [`Fetcher`] the cache is offline: it
//! never touches the network and a miss is an error naming the key and the file.
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use dcap_qvl::QuoteCollateralV3;
use quarry_api::claims::SnpTcb;
use quarry_api::TeeKind;

use crate::snp::SnpCollateral;
use crate::VerifyError;

/// Where verifiers get collateral that the evidence does not carry.
pub trait CollateralSource: Send + Sync {
    /// DCAP collateral for a platform model and PCK CA.
    fn dcap(&self, key: &DcapKey, now: SystemTime) -> Result<QuoteCollateralV3, VerifyError>;
    /// The VEK (and CA chain) of an SNP chip at a TCB.
    fn snp(&self, key: &SnpKey, now: SystemTime) -> Result<SnpCollateral, VerifyError>;
}

/// Which Intel CA issued a PCK certificate (selects the PCK CRL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PckCaType {
    /// Intel SGX PCK Processor CA.
    Processor,
    /// Intel SGX PCK Platform CA.
    Platform,
}

impl PckCaType {
    /// Spelling in PCS URLs and cache file names.
    pub fn as_str(self) -> &'static str {
        match self {
            PckCaType::Processor => "processor",
            PckCaType::Platform => "platform",
        }
    }
}

/// Cache key of DCAP collateral.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DcapKey {
    /// `sgx` or `tdx`.
    pub tee: TeeKind,
    /// FMSPC, upper-case hex (12 digits).
    pub fmspc: String,
    /// PCK CA type.
    pub ca: PckCaType,
}

impl std::fmt::Display for DcapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} collateral for FMSPC {} with the PCK {} CA",
            self.tee,
            self.fmspc,
            self.ca.as_str()
        )
    }
}

/// Cache key of an SNP VEK.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnpKey {
    /// Product line (`Milan`, `Genoa`, `Turin`).
    pub product: String,
    /// CHIP_ID, hex.
    pub chip_id: String,
    /// REPORTED_TCB the VEK is issued for.
    pub reported_tcb: SnpTcb,
    /// True for a VLEK (cloud-installed), false for a VCEK.
    pub vlek: bool,
}

impl SnpKey {
    fn tcb_tag(&self) -> String {
        let t = &self.reported_tcb;
        let mut s = format!("{}-{}-{}-{}", t.bootloader, t.tee, t.snp, t.microcode);
        if let Some(fmc) = t.fmc {
            s.push_str(&format!("-{fmc}"));
        }
        s
    }

    fn kind(&self) -> &'static str {
        if self.vlek {
            "vlek"
        } else {
            "vcek"
        }
    }
}

impl std::fmt::Display for SnpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} for chip {}… at TCB {}",
            self.product,
            self.kind().to_uppercase(),
            self.chip_id.get(..16).unwrap_or(&self.chip_id),
            self.reported_tcb
        )
    }
}

/// Collateral cached on disk, optionally filled by a fetcher.
pub struct CollateralCache {
    dir: PathBuf,
    fetcher: Option<crate::fetch::Fetcher>,
}

impl CollateralCache {
    /// A cache that never touches the network.
    pub fn offline(dir: impl Into<PathBuf>) -> CollateralCache {
        CollateralCache {
            dir: dir.into(),
            fetcher: None,
        }
    }

    /// Fetch missing or expired items with `fetcher` and store them.
    pub fn with_fetcher(mut self, fetcher: crate::fetch::Fetcher) -> CollateralCache {
        self.fetcher = Some(fetcher);
        self
    }

    /// True when no fetcher is configured.
    pub fn is_offline(&self) -> bool {
        self.fetcher.is_none()
    }

    /// The file of a DCAP key.
    pub fn dcap_path(&self, key: &DcapKey) -> PathBuf {
        self.dir.join(key.tee.as_str()).join(format!(
            "{}-{}.json",
            key.fmspc.to_uppercase(),
            key.ca.as_str()
        ))
    }

    /// The file of an SNP key.
    pub fn snp_path(&self, key: &SnpKey) -> PathBuf {
        self.dir
            .join("snp")
            .join(&key.product)
            .join(key.chip_id.to_lowercase())
            .join(format!("{}-{}.json", key.kind(), key.tcb_tag()))
    }

    /// Stores DCAP collateral (a per-quote PCK chain is dropped: it is not per FMSPC).
    pub fn store_dcap(&self, key: &DcapKey, c: &QuoteCollateralV3) -> std::io::Result<()> {
        let mut c = c.clone();
        c.pck_certificate_chain = None;
        let json = serde_json::to_vec_pretty(&c).map_err(std::io::Error::other)?;
        write_atomic(&self.dcap_path(key), &json)
    }

    /// Stores an SNP VEK and chain.
    pub fn store_snp(&self, key: &SnpKey, c: &SnpCollateral) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?;
        write_atomic(&self.snp_path(key), &json)
    }

    fn read<T: serde::de::DeserializeOwned>(
        path: &Path,
        what: &str,
    ) -> Result<Option<T>, VerifyError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                VerifyError::Collateral(format!("cached {what} {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(VerifyError::Collateral(format!(
                "reading cached {what} {}: {e}",
                path.display()
            ))),
        }
    }

    /// `path` as the operator knows it: relative to the cache directory.
    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// A cache miss: fetch `what` (offline: refused, naming the file it looked for) and keep
    /// it at `path` for the next verification.
    fn fetch_and_store<T>(
        &self,
        what: &str,
        path: &Path,
        fetch: impl FnOnce(&crate::fetch::Fetcher) -> Result<T, VerifyError>,
        store: impl FnOnce(&T) -> std::io::Result<()>,
    ) -> Result<T, VerifyError> {
        let Some(fetcher) = &self.fetcher else {
            return Err(VerifyError::Collateral(format!(
                "no cached {what} at {} and the collateral cache is offline",
                path.display()
            )));
        };
        let fresh = fetch(fetcher)?;
        store(&fresh).map_err(|e| {
            VerifyError::Collateral(format!("storing {what} at {}: {e}", path.display()))
        })?;
        Ok(fresh)
    }
}

impl CollateralSource for CollateralCache {
    fn dcap(&self, key: &DcapKey, now: SystemTime) -> Result<QuoteCollateralV3, VerifyError> {
        let path = self.dcap_path(key);
        let cached: Option<QuoteCollateralV3> = Self::read(&path, &key.to_string())?;
        if let Some(c) = &cached {
            if self.fetcher.is_none() || !dcap_expired(c, now) {
                return Ok(c.clone());
            }
        }
        self.fetch_and_store(
            &key.to_string(),
            &path,
            |f| f.dcap(key),
            |c| self.store_dcap(key, c),
        )
    }

    fn snp(&self, key: &SnpKey, _now: SystemTime) -> Result<SnpCollateral, VerifyError> {
        let path = self.snp_path(key);
        if let Some(c) = Self::read(&path, &key.to_string())? {
            return Ok(c);
        }
        self.fetch_and_store(
            &key.to_string(),
            &path,
            |f| f.snp(key),
            |c| self.store_snp(key, c),
        )
    }
}

/// The collateral item of a cache that expires first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// When it expires (nextUpdate of TCB info, QE identity or a CRL; notAfter of an SNP
    /// VEK), Unix seconds.
    pub at: i64,
    /// What it is, e.g. "TCB info in sgx/00906ED50000-processor.json".
    pub item: String,
}

impl CollateralCache {
    /// The earliest expiry of everything cached (DCAP TCB info, QE identity, root CA and
    /// PCK CRL `nextUpdate`; SNP VEK `notAfter`), `None` when nothing is cached. Files that
    /// do not parse are skipped: verification reports them when they are used.
    pub fn earliest_expiry(&self) -> Option<Expiry> {
        let mut best: Option<Expiry> = None;
        let mut consider = |at: Option<i64>, item: String| {
            if let Some(at) = at {
                if best.as_ref().is_none_or(|b| at < b.at) {
                    best = Some(Expiry { at, item });
                }
            }
        };
        for tee in ["sgx", "tdx"] {
            for path in json_files(&self.dir.join(tee), 1) {
                let name = self.relative(&path);
                let Ok(Some(c)) = Self::read::<QuoteCollateralV3>(&path, "collateral") else {
                    continue;
                };
                consider(json_next_update(&c.tcb_info), format!("TCB info in {name}"));
                consider(
                    json_next_update(&c.qe_identity),
                    format!("QE identity in {name}"),
                );
                consider(
                    crl_next_update(&c.root_ca_crl),
                    format!("root CA CRL in {name}"),
                );
                consider(crl_next_update(&c.pck_crl), format!("PCK CRL in {name}"));
            }
        }
        for path in json_files(&self.dir.join("snp"), 3) {
            let name = self.relative(&path);
            let Ok(Some(c)) = Self::read::<SnpCollateral>(&path, "collateral") else {
                continue;
            };
            let not_after = crate::snp::pem_certs(c.vek.as_bytes())
                .ok()
                .and_then(|certs| certs.into_iter().next())
                .or_else(|| quarry_api::bytes::unb64(&c.vek).ok())
                .and_then(|der| {
                    x509_parser::parse_x509_certificate(&der)
                        .ok()
                        .map(|(_, cert)| cert.validity().not_after.timestamp())
                });
            consider(not_after, format!("VEK certificate in {name}"));
        }
        best
    }
}

/// `*.json` files at most `depth` directory levels below `dir` (1 = directly in it).
fn json_files(dir: &Path, depth: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth > 1 {
            out.extend(json_files(&path, depth - 1));
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    out
}

/// `nextUpdate` of a TCB info or QE identity body, Unix seconds.
fn json_next_update(text: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let s = v.get("nextUpdate")?.as_str()?;
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// `nextUpdate` of a DER CRL, Unix seconds.
fn crl_next_update(der: &[u8]) -> Option<i64> {
    let (_, crl) = x509_parser::parse_x509_crl(der).ok()?;
    crl.next_update().map(|t| t.timestamp())
}

/// True when the TCB info or QE identity of `c` is past its nextUpdate at `now`.
fn dcap_expired(c: &QuoteCollateralV3, now: SystemTime) -> bool {
    let now = crate::timefmt::unix_secs(now).unwrap_or(0) as i64;
    [&c.tcb_info, &c.qe_identity].iter().any(|text| {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("nextUpdate")?.as_str().map(str::to_string))
            .and_then(|s| {
                time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).ok()
            })
            .is_none_or(|t| t.unix_timestamp() <= now)
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("cache path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("item"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The collateral that travels inside `evidence`, when there is any, as `T` (`shape` names
/// the expected JSON in the refusal).
pub fn embedded<T: serde::de::DeserializeOwned>(
    evidence: &quarry_api::Evidence,
    shape: &str,
) -> Result<Option<T>, VerifyError> {
    evidence
        .collateral
        .as_ref()
        .map(|v| {
            serde_json::from_value(v.clone()).map_err(|e| {
                VerifyError::Collateral(format!("the evidence's collateral is not {shape}: {e}"))
            })
        })
        .transpose()
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    fn dcap(tcb_next: &str, qe_next: &str) -> QuoteCollateralV3 {
        QuoteCollateralV3 {
            pck_crl_issuer_chain: String::new(),
            root_ca_crl: Vec::new(),
            pck_crl: Vec::new(),
            tcb_info_issuer_chain: String::new(),
            tcb_info: format!(r#"{{"nextUpdate":"{tcb_next}"}}"#),
            tcb_info_signature: Vec::new(),
            qe_identity_issuer_chain: String::new(),
            qe_identity: format!(r#"{{"nextUpdate":"{qe_next}"}}"#),
            qe_identity_signature: Vec::new(),
            pck_certificate_chain: None,
        }
    }

    #[test]
    fn the_earliest_next_update_of_every_cached_item_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CollateralCache::offline(dir.path());
        assert_eq!(
            cache.earliest_expiry(),
            None,
            "an empty cache has no expiry"
        );
        let key = |fmspc: &str, tee| DcapKey {
            tee,
            fmspc: fmspc.into(),
            ca: PckCaType::Processor,
        };
        cache
            .store_dcap(
                &key("00906ED50000", TeeKind::Sgx),
                &dcap("2030-01-01T00:00:00Z", "2029-06-01T00:00:00Z"),
            )
            .expect("stores");
        cache
            .store_dcap(
                &key("00806F050000", TeeKind::Tdx),
                &dcap("2028-03-04T05:06:07Z", "2031-01-01T00:00:00Z"),
            )
            .expect("stores");
        std::fs::write(dir.path().join("sgx").join("broken.json"), b"{").expect("writes");
        let e = cache.earliest_expiry().expect("an expiry");
        assert_eq!(e.at, 1_835_759_167, "{e:?}");
        assert_eq!(e.item, "TCB info in tdx/00806F050000-processor.json");
    }
}

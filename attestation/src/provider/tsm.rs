//! Linux configfs-tsm evidence (TDX and SEV-SNP guests, kernel ≥ 6.7).
//!
//! Per request: `mkdir <root>/<unique name>`, read `provider` and `generation`, write the 64
//! bytes of report data to `inblob`, read `outblob` (and `auxblob` for SNP), re-read
//! `generation`; if it is not exactly one more than before, another writer raced on the
//! entry and the result is discarded and retried. `EBUSY` (a TDX quote in flight) is retried
//! with backoff. The entry is removed afterwards. The file operations sit behind [`TsmFs`] so
//! the protocol is tested against a simulated kernel.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quarry_api::{Evidence, EvidenceType, REPORT_DATA_LEN};

use crate::snp::SnpCollateral;
use crate::{EvidenceProvider, ProviderError};

const EBUSY: i32 = 16;
const BUSY_RETRIES: u32 = 20;
const RACE_RETRIES: u32 = 3;
/// GUIDs of the SNP extended-report certificate table.
const GUID_VCEK: &str = "63da758d-e664-4564-adc5-f4b93be8accd";
const GUID_VLEK: &str = "a8074bc2-a25a-483e-aae6-39c045a0b8a1";
const GUID_ASK: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";
const GUID_ARK: &str = "c0b406a4-a803-4952-9743-3fb6014cd0ae";

/// `outblob` and, for SNP, `auxblob`.
type Blobs = (Vec<u8>, Option<Vec<u8>>);

/// The configfs operations the protocol needs (real: `std::fs`).
pub trait TsmFs: Send + Sync {
    /// Create an entry directory.
    fn mkdir(&self, path: &Path) -> std::io::Result<()>;
    /// Remove an entry directory.
    fn rmdir(&self, path: &Path) -> std::io::Result<()>;
    /// Read an attribute.
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// Write an attribute.
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()>;
}

/// The real configfs.
pub struct RealFs;

impl TsmFs for RealFs {
    fn mkdir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir(path)
    }
    fn rmdir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::write(path, bytes)
    }
}

/// Evidence from configfs-tsm.
pub struct TsmProvider {
    root: PathBuf,
    kind: EvidenceType,
    fs: Box<dyn TsmFs>,
    counter: AtomicU64,
    backoff: Duration,
}

impl TsmProvider {
    /// A provider for `kind` (`TdxDcap` or `Snp`) under `root`; refuses if `root` is missing.
    pub fn open(root: &Path, kind: EvidenceType) -> Result<TsmProvider, ProviderError> {
        if !root.is_dir() {
            return Err(ProviderError::Key(format!(
                "{} is not a directory: configfs-tsm is unavailable (kernel ≥ 6.7 with CONFIG_TSM_REPORTS and configfs mounted)",
                root.display()
            )));
        }
        TsmProvider::with_fs(root, kind, Box::new(RealFs))
    }

    /// A provider over another [`TsmFs`] (tests).
    pub fn with_fs(
        root: &Path,
        kind: EvidenceType,
        fs: Box<dyn TsmFs>,
    ) -> Result<TsmProvider, ProviderError> {
        if !matches!(kind, EvidenceType::TdxDcap | EvidenceType::Snp) {
            return Err(ProviderError::Key(format!(
                "configfs-tsm provides tdx-dcap or snp evidence, not {}",
                kind.as_str()
            )));
        }
        Ok(TsmProvider {
            root: root.to_path_buf(),
            kind,
            fs,
            counter: AtomicU64::new(0),
            backoff: Duration::from_millis(20),
        })
    }

    /// Sets the first EBUSY backoff (doubles per retry, capped at 1 s).
    pub fn with_backoff(mut self, backoff: Duration) -> TsmProvider {
        self.backoff = backoff;
        self
    }

    fn expected_provider(&self) -> &'static str {
        match self.kind {
            EvidenceType::Snp => "sev_guest",
            _ => "tdx_guest",
        }
    }

    fn unique_entry(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.root
            .join(format!("quarry-{}-{n}-{nanos:08x}", std::process::id()))
    }

    fn busy<T>(
        &self,
        what: &Path,
        mut op: impl FnMut() -> std::io::Result<T>,
    ) -> Result<T, ProviderError> {
        let mut wait = self.backoff;
        for _ in 0..BUSY_RETRIES {
            match op() {
                Err(e) if e.raw_os_error() == Some(EBUSY) => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                other => return other.map_err(super::io_err(what.display())),
            }
        }
        Err(ProviderError::Key(format!(
            "{}: still busy after {BUSY_RETRIES} retries",
            what.display()
        )))
    }

    fn generation(&self, entry: &Path) -> Result<u64, ProviderError> {
        let path = entry.join("generation");
        let text = self.fs.read(&path).map_err(super::io_err(path.display()))?;
        String::from_utf8_lossy(&text)
            .trim()
            .parse()
            .map_err(|_| ProviderError::Key(format!("{}: not a number", path.display())))
    }

    /// One attempt in a fresh entry: Ok(None) when another writer raced.
    fn attempt(
        &self,
        entry: &Path,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<Option<Blobs>, ProviderError> {
        let ppath = entry.join("provider");
        let provider = self
            .fs
            .read(&ppath)
            .map_err(super::io_err(ppath.display()))?;
        let provider = String::from_utf8_lossy(&provider).trim().to_string();
        if provider != self.expected_provider() {
            return Err(ProviderError::Key(format!(
                "configfs-tsm provider is {provider:?}, expected {:?} for {} evidence",
                self.expected_provider(),
                self.kind.as_str()
            )));
        }
        let before = self.generation(entry)?;
        let inblob = entry.join("inblob");
        self.busy(&inblob, || self.fs.write(&inblob, report_data))?;
        let outblob = entry.join("outblob");
        let out = self.busy(&outblob, || self.fs.read(&outblob))?;
        let aux = if self.kind == EvidenceType::Snp {
            self.fs
                .read(&entry.join("auxblob"))
                .ok()
                .filter(|a| !a.is_empty())
        } else {
            None
        };
        let after = self.generation(entry)?;
        if after != before + 1 {
            return Ok(None);
        }
        Ok(Some((out, aux)))
    }
}

impl EvidenceProvider for TsmProvider {
    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, ProviderError> {
        for _ in 0..RACE_RETRIES {
            let entry = self.unique_entry();
            self.fs
                .mkdir(&entry)
                .map_err(super::io_err(entry.display()))?;
            let result = self.attempt(&entry, report_data);
            let _ = self.fs.rmdir(&entry);
            let Some((out, aux)) = result? else {
                continue;
            };
            let (quote, collateral) = match self.kind {
                EvidenceType::Snp => {
                    let collateral = aux
                        .and_then(|a| cert_table_collateral(&a))
                        .map(|c| serde_json::to_value(c).unwrap_or_default());
                    (out, collateral)
                }
                _ => {
                    let len = crate::dcap::quote_len(&out)
                        .map_err(|e| ProviderError::Key(format!("outblob: {e}")))?;
                    (out[..len].to_vec(), None)
                }
            };
            return Ok(Evidence {
                kind: self.kind,
                quote,
                collateral,
            });
        }
        Err(ProviderError::Key(format!(
            "configfs-tsm: the generation changed during {RACE_RETRIES} attempts (another writer raced); giving up"
        )))
    }

    fn is_simulated(&self) -> bool {
        false
    }
}

/// The VEK and CA chain from an SNP extended-report certificate table (`auxblob`):
/// entries `{GUID (16, mixed-endian), offset u32, length u32}` up to an all-zero entry.
pub fn cert_table_collateral(table: &[u8]) -> Option<SnpCollateral> {
    let mut vek = None;
    let mut chain = String::new();
    for entry in table.chunks_exact(24) {
        if entry.iter().all(|b| *b == 0) {
            break;
        }
        let g = &entry[..16];
        let guid = format!(
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}-{}",
            g[3],
            g[2],
            g[1],
            g[0],
            g[5],
            g[4],
            g[7],
            g[6],
            hex::encode(&g[8..10]),
            hex::encode(&g[10..16])
        );
        let off = u32::from_le_bytes(entry[16..20].try_into().ok()?) as usize;
        let len = u32::from_le_bytes(entry[20..24].try_into().ok()?) as usize;
        let der = table.get(off..off.checked_add(len)?)?;
        let pem = quarry_api::bytes::encode_pem("CERTIFICATE", der);
        match guid.as_str() {
            GUID_VCEK | GUID_VLEK => vek = Some(pem),
            GUID_ASK | GUID_ARK => chain.push_str(&pem),
            _ => {}
        }
    }
    Some(SnpCollateral {
        vek: vek?,
        ca_chain: (!chain.is_empty()).then_some(chain),
    })
}

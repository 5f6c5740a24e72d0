//! Runtime providers against prepared directories (Gramine) and a simulated configfs-tsm
//! kernel, feeding real vectors through to the verifiers.
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use quarry_api::EvidenceType;
use quarry_attestation::dcap::{parse_collateral, DcapVerifier};
use quarry_attestation::provider::tsm::{TsmFs, TsmProvider};
use quarry_attestation::provider::GramineProvider;
use quarry_attestation::snp::SnpVerifier;
use quarry_attestation::{EvidenceProvider, Verifier};

fn vectors() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUARRY_SHARED_DIR") {
        return PathBuf::from(dir).join("testdata/attestation");
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let p = dir.join("shared/testdata/attestation");
        if p.is_dir() {
            return p;
        }
        assert!(
            dir.pop(),
            "shared/testdata/attestation not found; set QUARRY_SHARED_DIR"
        );
    }
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(vectors().join(rel)).unwrap()
}

#[test]
fn gramine_provider_writes_report_data_and_returns_the_exact_quote() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("attestation_type"), "dcap").unwrap();
    let quote = read("sgx/dcapqvl_sgx_quote_v3.bin");
    let mut padded = quote.clone();
    padded.extend_from_slice(&[0; 64]);
    std::fs::write(dir.path().join("quote"), &padded).unwrap();
    let p = GramineProvider::open(dir.path()).unwrap();
    assert!(!p.is_simulated());
    let ev = p.evidence(&[7; 64]).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("user_report_data")).unwrap(),
        [7; 64]
    );
    assert_eq!(ev.kind, EvidenceType::SgxDcap);
    assert_eq!(ev.quote, quote, "zero padding is trimmed");
    let c = parse_collateral(
        &String::from_utf8(read("sgx/dcapqvl_sgx_quote_v3.collateral.json")).unwrap(),
    )
    .unwrap();
    let claims = DcapVerifier::sgx()
        .verify_quote(
            &ev.quote,
            Some(&c),
            UNIX_EPOCH + Duration::from_secs(1751328000),
        )
        .unwrap();
    assert_eq!(&claims.report_data[..13], b"Hello, world!");

    std::fs::write(dir.path().join("attestation_type"), "none\n").unwrap();
    let err = GramineProvider::open(dir.path()).err().expect("refused");
    assert!(err.to_string().contains("\"none\""), "{err}");
    let empty = tempfile::tempdir().unwrap();
    assert!(GramineProvider::open(empty.path()).is_err());
}

/// A configfs-tsm kernel in memory: per-entry attributes, generation counting, EBUSY and an
/// optional racing writer.
struct FakeKernel {
    provider: &'static str,
    outblob: Vec<u8>,
    auxblob: Vec<u8>,
    entries: Mutex<HashMap<PathBuf, (u64, Vec<u8>)>>,
    seen: Mutex<BTreeSet<PathBuf>>,
    busy: AtomicU32,
    race_once: AtomicBool,
}

impl FakeKernel {
    fn new(provider: &'static str, outblob: Vec<u8>, auxblob: Vec<u8>) -> Arc<FakeKernel> {
        Arc::new(FakeKernel {
            provider,
            outblob,
            auxblob,
            entries: Mutex::default(),
            seen: Mutex::default(),
            busy: AtomicU32::new(0),
            race_once: AtomicBool::new(false),
        })
    }
}

struct Shared(Arc<FakeKernel>);

impl TsmFs for Shared {
    fn mkdir(&self, path: &Path) -> std::io::Result<()> {
        let mut e = self.0.entries.lock().unwrap();
        if e.contains_key(path) || !self.0.seen.lock().unwrap().insert(path.to_path_buf()) {
            return Err(std::io::ErrorKind::AlreadyExists.into());
        }
        e.insert(path.to_path_buf(), (0, Vec::new()));
        Ok(())
    }
    fn rmdir(&self, path: &Path) -> std::io::Result<()> {
        self.0
            .entries
            .lock()
            .unwrap()
            .remove(path)
            .map(|_| ())
            .ok_or(std::io::ErrorKind::NotFound.into())
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let e = self.0.entries.lock().unwrap();
        let (gen, inblob) = e
            .get(path.parent().unwrap())
            .ok_or(std::io::ErrorKind::NotFound)?;
        match path.file_name().unwrap().to_str().unwrap() {
            "provider" => Ok(format!("{}\n", self.0.provider).into_bytes()),
            "generation" => Ok(format!("{gen}\n").into_bytes()),
            "outblob" if inblob.len() == 64 => Ok(self.0.outblob.clone()),
            "auxblob" => Ok(self.0.auxblob.clone()),
            _ => Err(std::io::Error::from_raw_os_error(22)),
        }
    }
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        if self.0.busy.load(Ordering::SeqCst) > 0 {
            self.0.busy.fetch_sub(1, Ordering::SeqCst);
            return Err(std::io::Error::from_raw_os_error(16));
        }
        let mut e = self.0.entries.lock().unwrap();
        let entry = e
            .get_mut(path.parent().unwrap())
            .ok_or(std::io::ErrorKind::NotFound)?;
        if bytes.len() != 64 {
            return Err(std::io::Error::from_raw_os_error(22));
        }
        entry.1 = bytes.to_vec();
        entry.0 += 1;
        if self.0.race_once.swap(false, Ordering::SeqCst) {
            entry.0 += 1; // another writer wrote inblob meanwhile
        }
        Ok(())
    }
}

fn tdx_kernel() -> Arc<FakeKernel> {
    FakeKernel::new(
        "tdx_guest",
        read("tdx/dcapqvl_tdx_quote_v4.bin"),
        Vec::new(),
    )
}

fn provider(k: &Arc<FakeKernel>, kind: EvidenceType) -> TsmProvider {
    TsmProvider::with_fs(Path::new("/tsm"), kind, Box::new(Shared(k.clone())))
        .unwrap()
        .with_backoff(Duration::from_millis(1))
}

#[test]
fn tsm_provider_retries_ebusy_and_returns_a_verifiable_tdx_quote() {
    let k = tdx_kernel();
    k.busy.store(3, Ordering::SeqCst);
    let ev = provider(&k, EvidenceType::TdxDcap)
        .evidence(&[1; 64])
        .unwrap();
    assert_eq!(ev.kind, EvidenceType::TdxDcap);
    assert_eq!(ev.quote.len(), 4936, "zero padding trimmed");
    assert!(k.entries.lock().unwrap().is_empty(), "entry removed");
    let c = parse_collateral(
        &String::from_utf8(read("tdx/dcapqvl_tdx_quote_v4.collateral.json")).unwrap(),
    )
    .unwrap();
    DcapVerifier::tdx()
        .verify_quote(
            &ev.quote,
            Some(&c),
            UNIX_EPOCH + Duration::from_secs(1751328000),
        )
        .unwrap();
}

#[test]
fn tsm_provider_discards_a_raced_generation_and_uses_a_new_entry_per_request() {
    let k = tdx_kernel();
    k.race_once.store(true, Ordering::SeqCst);
    let p = provider(&k, EvidenceType::TdxDcap);
    p.evidence(&[1; 64]).unwrap();
    assert_eq!(
        k.seen.lock().unwrap().len(),
        2,
        "raced entry discarded, retried in a new one"
    );
    p.evidence(&[2; 64]).unwrap();
    assert_eq!(k.seen.lock().unwrap().len(), 3);
    assert!(k.entries.lock().unwrap().is_empty());
}

#[test]
fn tsm_provider_refuses_another_provider_and_gives_up_when_always_busy() {
    let k = tdx_kernel();
    let err = provider(&k, EvidenceType::Snp)
        .evidence(&[0; 64])
        .unwrap_err();
    assert!(err.to_string().contains("\"tdx_guest\""), "{err}");
    k.busy.store(1000, Ordering::SeqCst);
    let err = provider(&k, EvidenceType::TdxDcap)
        .evidence(&[0; 64])
        .unwrap_err();
    assert!(err.to_string().contains("busy"), "{err}");
    assert!(TsmProvider::open(Path::new("/nonexistent/tsm"), EvidenceType::TdxDcap).is_err());
}

fn guid_bytes(guid: &str) -> [u8; 16] {
    let h = hex::decode(guid.replace('-', "")).unwrap();
    let mut g = [0u8; 16];
    g[..4].copy_from_slice(&[h[3], h[2], h[1], h[0]]);
    g[4..6].copy_from_slice(&[h[5], h[4]]);
    g[6..8].copy_from_slice(&[h[7], h[6]]);
    g[8..].copy_from_slice(&h[8..]);
    g
}

#[test]
fn tsm_provider_turns_the_snp_cert_table_into_collateral_that_verifies() {
    let chain = pem::parse_many(read("snp/virtee_milan_ask_ark.pem")).unwrap();
    let certs = [
        (
            "63da758d-e664-4564-adc5-f4b93be8accd",
            read("snp/virtee_milan_vcek.der"),
        ),
        (
            "4ab7b379-bbac-4fe4-a02f-05aef327c782",
            chain[0].contents().to_vec(),
        ),
        (
            "c0b406a4-a803-4952-9743-3fb6014cd0ae",
            chain[1].contents().to_vec(),
        ),
    ];
    let mut table = Vec::new();
    let mut data = Vec::new();
    let header = 24 * (certs.len() + 1);
    for (guid, der) in &certs {
        table.extend_from_slice(&guid_bytes(guid));
        table.extend_from_slice(&((header + data.len()) as u32).to_le_bytes());
        table.extend_from_slice(&(der.len() as u32).to_le_bytes());
        data.extend_from_slice(der);
    }
    table.extend_from_slice(&[0; 24]);
    table.extend_from_slice(&data);
    let k = FakeKernel::new("sev_guest", read("snp/virtee_milan_report.bin"), table);
    let ev = provider(&k, EvidenceType::Snp).evidence(&[0; 64]).unwrap();
    assert_eq!(ev.kind, EvidenceType::Snp);
    assert!(ev.collateral.is_some());
    SnpVerifier::new()
        .verify(&ev, UNIX_EPOCH + Duration::from_secs(1748736000))
        .expect("VCEK + chain from the cert table");
}

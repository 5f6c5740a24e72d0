//! Verified-collateral cache: a signature over collateral is checked once per exact content.
//!
//! TCB info and QE identity signatures, the CRLs' signatures and the PCK and AMD certificate
//! chains are the same for every quote of a platform until the vendor publishes new
//! collateral, and they are most of a verification's cost (an ECDSA P-256 check is ~85 µs
//! here; a DCAP quote needs ten of them, an SNP chain three RSA-4096 PSS checks). This
//! cache remembers that a *successful* check of exactly these bytes (public key, message,
//! signature; or the exact certificate chain) happened, so the next quote skips it.
//!
//! What is never cached: refusals (only successes are recorded, so a bad signature is
//! recomputed and refused every time), and each quote's own signature (the quote header and
//! body signed by the attestation key, which [`DcapCall`] names; the SNP report signed by
//! the VEK, which the SNP verifier checks outside the cache). The QE report signed by the
//! PCK key is cached like a certificate: it certifies the attestation key and is the same
//! in every quote signed with that key. Everything that depends on the verification time (validity windows, CRL
//! freshness, revocation of the PCK, TCB level matching) still runs on every call: the
//! cache holds signature facts only, which do not change with time.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use rustls_pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};
use sha2::{Digest, Sha256};

/// Entries kept per cache before it starts over (a verified item is 32 bytes here).
const CAPACITY: usize = 8192;

/// A bounded set of digests of successfully verified items.
pub(crate) struct VerifiedSet {
    entries: LazyLock<Mutex<HashSet<[u8; 32]>>>,
}

impl VerifiedSet {
    const fn new() -> VerifiedSet {
        VerifiedSet {
            entries: LazyLock::new(|| Mutex::new(HashSet::new())),
        }
    }

    pub(crate) fn contains(&self, key: &[u8; 32]) -> bool {
        self.entries
            .lock()
            .map(|e| e.contains(key))
            .unwrap_or(false)
    }

    pub(crate) fn insert(&self, key: [u8; 32]) {
        if let Ok(mut e) = self.entries.lock() {
            // New collateral replaces old; starting over keeps the memory bounded.
            if e.len() >= CAPACITY {
                e.clear();
            }
            e.insert(key);
        }
    }

    fn clear(&self) {
        if let Ok(mut e) = self.entries.lock() {
            e.clear();
        }
    }

    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

/// Values parsed from exact collateral bytes (validity dates, TCB levels), kept so the next
/// quote does not parse the same JSON and CRLs again. Holds parse results only: every
/// decision made from them (time windows, TCB matching) is made again on each call.
pub(crate) struct Parsed<T> {
    entries: LazyLock<Mutex<HashMap<[u8; 32], Arc<T>>>>,
}

impl<T> Parsed<T> {
    pub(crate) const fn new() -> Parsed<T> {
        Parsed {
            entries: LazyLock::new(|| Mutex::new(HashMap::new())),
        }
    }

    /// The value for `key`, parsed with `parse` on a miss; parse errors are not kept.
    pub(crate) fn get_or_parse<E>(
        &self,
        key: [u8; 32],
        parse: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        if let Some(v) = self.entries.lock().ok().and_then(|e| e.get(&key).cloned()) {
            return Ok(v);
        }
        let v = Arc::new(parse()?);
        if let Ok(mut e) = self.entries.lock() {
            if e.len() >= CAPACITY / 8 {
                e.clear();
            }
            e.insert(key, Arc::clone(&v));
        }
        Ok(v)
    }

    fn clear(&self) {
        if let Ok(mut e) = self.entries.lock() {
            e.clear();
        }
    }
}

/// Digest of length-prefixed parts under a domain label (no two inputs share a key).
pub(crate) fn key(domain: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// DCAP collateral signatures (ECDSA P-256) verified so far.
static DCAP_SIGNATURES: VerifiedSet = VerifiedSet::new();
/// SNP certificate chains (ARK → ASK/ASVK → VEK, exact DER) verified so far.
pub(crate) static SNP_CHAINS: VerifiedSet = VerifiedSet::new();

/// Validity windows of DCAP collateral items, by exact content.
pub(crate) static DCAP_WINDOWS: Parsed<crate::dcap::Windows> = Parsed::new();
/// TCB levels and component names of DCAP TCB info and QE identity, by exact content.
pub(crate) static DCAP_LEVELS: Parsed<crate::standing::Levels> = Parsed::new();

/// Forgets every verified item and parse result (benchmarks and tests measure a cold start
/// with it).
pub fn clear() {
    DCAP_SIGNATURES.clear();
    SNP_CHAINS.clear();
    DCAP_WINDOWS.clear();
    DCAP_LEVELS.clear();
}

/// How many verified items are remembered (DCAP signatures, SNP chains).
pub fn sizes() -> (usize, usize) {
    (DCAP_SIGNATURES.len(), SNP_CHAINS.len())
}

thread_local! {
    /// The messages of the quote being verified on this thread, which are never cached;
    /// `None` outside a cached DCAP verification (the algorithm then only verifies).
    static PER_QUOTE: std::cell::RefCell<Option<Vec<Vec<u8>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Marks one DCAP verification on this thread: while it lives, collateral signatures are
/// cached and `per_quote` messages are always verified.
pub(crate) struct DcapCall(());

impl DcapCall {
    pub(crate) fn begin(per_quote: Vec<Vec<u8>>) -> DcapCall {
        PER_QUOTE.with(|p| *p.borrow_mut() = Some(per_quote));
        DcapCall(())
    }
}

impl Drop for DcapCall {
    fn drop(&mut self) {
        PER_QUOTE.with(|p| *p.borrow_mut() = None);
    }
}

/// ECDSA P-256 SHA-256 (ring, as dcap-qvl's default) that remembers successful checks of
/// collateral while a [`DcapCall`] is active.
#[derive(Debug)]
struct CachingP256;

static CACHING_P256: CachingP256 = CachingP256;

fn inner() -> &'static dyn SignatureVerificationAlgorithm {
    <dcap_qvl::crypto::RingCrypto as dcap_qvl::config::CryptoProvider>::sig_algo()
}

impl SignatureVerificationAlgorithm for CachingP256 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let cacheable = PER_QUOTE.with(|p| {
            p.borrow()
                .as_ref()
                .is_some_and(|own| !own.iter().any(|m| m.as_slice() == message))
        });
        if !cacheable {
            return inner().verify_signature(public_key, message, signature);
        }
        let k = key("dcap-p256", &[public_key, message, signature]);
        if DCAP_SIGNATURES.contains(&k) {
            return Ok(());
        }
        inner().verify_signature(public_key, message, signature)?;
        DCAP_SIGNATURES.insert(k);
        Ok(())
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        inner().public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        inner().signature_alg_id()
    }

    fn fips(&self) -> bool {
        inner().fips()
    }
}

/// dcap-qvl's ring crypto provider with the caching signature algorithm.
pub(crate) struct CachedCrypto;

impl dcap_qvl::config::CryptoProvider for CachedCrypto {
    fn sig_algo() -> &'static dyn SignatureVerificationAlgorithm {
        &CACHING_P256
    }

    fn sha256(data: &[u8]) -> [u8; 32] {
        <dcap_qvl::crypto::RingCrypto as dcap_qvl::config::CryptoProvider>::sha256(data)
    }

    fn sha384(data: &[u8]) -> [u8; 48] {
        <dcap_qvl::crypto::RingCrypto as dcap_qvl::config::CryptoProvider>::sha384(data)
    }
}

/// dcap-qvl's audited X.509 and signature-encoding backends with [`CachedCrypto`].
pub(crate) struct CachedConfig;

impl dcap_qvl::config::Config for CachedConfig {
    type X509 = dcap_qvl::x509::X509CertBackend;
    type SigEncoder = dcap_qvl::signature::DerSigEncoder;
    type Crypto = CachedCrypto;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_parts_and_domains() {
        assert_ne!(key("a", &[b"ab", b"c"]), key("a", &[b"a", b"bc"]));
        assert_ne!(key("a", &[b"x"]), key("b", &[b"x"]));
    }

    #[test]
    fn outside_a_call_and_for_the_quotes_own_messages_nothing_is_cached() {
        // A garbage signature is refused, and refusals leave nothing behind.
        let remembered =
            |msg: &[u8]| DCAP_SIGNATURES.contains(&key("dcap-p256", &[&[4; 65], msg, &[0; 8]]));
        assert!(CACHING_P256
            .verify_signature(&[4; 65], b"collateral", &[0; 8])
            .is_err());
        let _call = DcapCall::begin(vec![b"quote body".to_vec()]);
        assert!(CACHING_P256
            .verify_signature(&[4; 65], b"quote body", &[0; 8])
            .is_err());
        assert!(CACHING_P256
            .verify_signature(&[4; 65], b"collateral", &[0; 8])
            .is_err());
        assert!(!remembered(b"quote body") && !remembered(b"collateral"));
    }
}

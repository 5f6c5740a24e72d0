//! Collateral fetchers: a PCCS or Intel PCS base URL (API v4) and AMD KDS.
//!
//! Used only by a [`crate::collateral::CollateralCache`] that was given a [`Fetcher`]. Each
//! fetch runs on its own thread with its own small runtime, so callers may be synchronous or
//! inside an async runtime. Everything fetched is vendor-signed and verified later, so plain
//! `http://` is accepted for a local PCCS; `https://` uses rustls with ring and the web PKI
//! roots plus any configured extra roots.
use std::time::Duration;

use dcap_qvl::QuoteCollateralV3;

use crate::collateral::{DcapKey, SnpKey};
use crate::snp::SnpCollateral;
use crate::VerifyError;

/// Intel's Provisioning Certification Service.
pub const INTEL_PCS_URL: &str = "https://api.trustedservices.intel.com";
/// AMD's Key Distribution Service.
pub const AMD_KDS_URL: &str = "https://kdsintf.amd.com";
/// Where Intel publishes the SGX Root CA CRL (used when the PCS/PCCS has no `rootcacrl`).
const INTEL_ROOT_CRL_URL: &str =
    "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";
const TIMEOUT: Duration = Duration::from_secs(30);

/// Fetches collateral from configured vendor services.
#[derive(Clone)]
pub struct Fetcher {
    pcs: Option<String>,
    kds: Option<String>,
    tls: rustls::ClientConfig,
}

impl Fetcher {
    /// A fetcher for a PCCS/PCS base URL and/or an AMD KDS base URL; `extra_roots` (DER) are
    /// trusted in addition to the web PKI roots (e.g. a PCCS with its own certificate).
    pub fn new(
        pcs: Option<String>,
        kds: Option<String>,
        extra_roots: &[Vec<u8>],
    ) -> Result<Fetcher, VerifyError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for der in extra_roots {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.clone()))
                .map_err(|e| VerifyError::Collateral(format!("extra fetcher root: {e}")))?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| VerifyError::Collateral(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let trim = |u: Option<String>| u.map(|s| s.trim_end_matches('/').to_string());
        Ok(Fetcher {
            pcs: trim(pcs),
            kds: trim(kds),
            tls,
        })
    }

    /// Fetches and assembles DCAP collateral for `key`.
    pub fn dcap(&self, key: &DcapKey) -> Result<QuoteCollateralV3, VerifyError> {
        let base = self.pcs.clone().ok_or_else(|| {
            VerifyError::Collateral(format!("{key}: no PCCS/PCS URL is configured"))
        })?;
        let key = key.clone();
        self.run(move |http| async move {
            let tee = key.tee.as_str();
            let tcb = get(
                &http,
                &format!("{base}/{tee}/certification/v4/tcb?fmspc={}", key.fmspc),
            )
            .await?;
            let qe = get(&http, &format!("{base}/{tee}/certification/v4/qe/identity")).await?;
            let crl = get(
                &http,
                &format!(
                    "{base}/sgx/certification/v4/pckcrl?ca={}&encoding=der",
                    key.ca.as_str()
                ),
            )
            .await?;
            let root = match get(&http, &format!("{base}/sgx/certification/v4/rootcacrl")).await {
                Ok(r) => r,
                Err(_) => get(&http, INTEL_ROOT_CRL_URL).await?,
            };
            assemble(&tcb, &qe, &crl, &root)
        })
    }

    /// Fetches the VCEK for `key` and its product's ASK + ARK from AMD KDS.
    pub fn snp(&self, key: &SnpKey) -> Result<SnpCollateral, VerifyError> {
        if key.vlek {
            return Err(VerifyError::Collateral(format!(
                "{key}: VLEKs are installed by the cloud host and cannot be fetched from KDS"
            )));
        }
        let base = self.kds.clone().ok_or_else(|| {
            VerifyError::Collateral(format!("{key}: no AMD KDS URL is configured"))
        })?;
        let key = key.clone();
        self.run(move |http| async move {
            let t = key.reported_tcb;
            // Turin KDS URLs use the 8-byte hwID.
            let hwid = if key.product == "Turin" {
                key.chip_id.get(..16).unwrap_or(&key.chip_id).to_string()
            } else {
                key.chip_id.clone()
            };
            let mut url = format!(
                "{base}/vcek/v1/{}/{hwid}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
                key.product, t.bootloader, t.tee, t.snp, t.microcode
            );
            if let Some(fmc) = t.fmc {
                url.push_str(&format!("&fmcSPL={fmc}"));
            }
            let vcek = get(&http, &url).await?;
            let chain = get(&http, &format!("{base}/vcek/v1/{}/cert_chain", key.product)).await?;
            Ok(SnpCollateral {
                vek: quarry_api::bytes::encode_pem("CERTIFICATE", &vcek.body),
                ca_chain: Some(String::from_utf8_lossy(&chain.body).into_owned()),
            })
        })
    }

    fn run<T, F, Fut>(&self, job: F) -> Result<T, VerifyError>
    where
        T: Send + 'static,
        F: FnOnce(reqwest::Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, VerifyError>>,
    {
        let tls = self.tls.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| VerifyError::Collateral(format!("fetcher runtime: {e}")))?;
            let http = reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .timeout(TIMEOUT)
                .build()
                .map_err(|e| VerifyError::Collateral(format!("fetcher HTTP client: {e}")))?;
            rt.block_on(job(http))
        });
        handle
            .join()
            .map_err(|_| VerifyError::Collateral("the fetcher thread panicked".into()))?
    }
}

/// A fetched response: body and headers.
struct Response {
    body: Vec<u8>,
    headers: reqwest::header::HeaderMap,
}

impl Response {
    fn header(&self, names: &[&str]) -> Result<String, VerifyError> {
        for n in names {
            if let Some(v) = self.headers.get(*n).and_then(|v| v.to_str().ok()) {
                return Ok(percent_decode(v));
            }
        }
        Err(VerifyError::Collateral(format!(
            "the response has no {} header",
            names.join(" / ")
        )))
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Response, VerifyError> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| VerifyError::Collateral(format!("GET {url}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(VerifyError::Collateral(format!("GET {url}: HTTP {status}")));
    }
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .map_err(|e| VerifyError::Collateral(format!("GET {url}: {e}")))?
        .to_vec();
    Ok(Response { body, headers })
}

/// Builds `QuoteCollateralV3` from PCS responses, keeping the exact signed JSON bytes.
fn assemble(
    tcb: &Response,
    qe: &Response,
    crl: &Response,
    root: &Response,
) -> Result<QuoteCollateralV3, VerifyError> {
    let tcb_text = String::from_utf8_lossy(&tcb.body);
    let qe_text = String::from_utf8_lossy(&qe.body);
    let sig = |text: &str, what: &str| -> Result<Vec<u8>, VerifyError> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| VerifyError::Collateral(format!("{what} response is not JSON: {e}")))?;
        let hex_sig = v
            .get("signature")
            .and_then(|s| s.as_str())
            .ok_or_else(|| VerifyError::Collateral(format!("{what} response has no signature")))?;
        hex::decode(hex_sig)
            .map_err(|e| VerifyError::Collateral(format!("{what} signature is not hex: {e}")))
    };
    Ok(QuoteCollateralV3 {
        pck_crl_issuer_chain: crl.header(&["SGX-PCK-CRL-Issuer-Chain"])?,
        root_ca_crl: der_or_hex(&root.body),
        pck_crl: der_or_hex(&crl.body),
        tcb_info_issuer_chain: tcb
            .header(&["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"])?,
        tcb_info: raw_member(&tcb_text, "tcbInfo").ok_or_else(|| {
            VerifyError::Collateral("TCB info response has no tcbInfo object".into())
        })?,
        tcb_info_signature: sig(&tcb_text, "TCB info")?,
        qe_identity_issuer_chain: qe.header(&["SGX-Enclave-Identity-Issuer-Chain"])?,
        qe_identity: raw_member(&qe_text, "enclaveIdentity").ok_or_else(|| {
            VerifyError::Collateral("QE identity response has no enclaveIdentity object".into())
        })?,
        qe_identity_signature: sig(&qe_text, "QE identity")?,
        pck_certificate_chain: None,
    })
}

/// A CRL body that is DER, or hex text of DER (as some PCCS versions send it).
fn der_or_hex(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let t = text.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_hexdigit()) {
        if let Ok(b) = hex::decode(t) {
            return b;
        }
    }
    body.to_vec()
}

/// The exact source text of the object value of top-level member `name` (no re-serialisation:
/// the signature covers these bytes).
pub fn raw_member(text: &str, name: &str) -> Option<String> {
    let needle = format!("\"{name}\"");
    let start = text.find(&needle)? + needle.len();
    let rest = &text[start..];
    let colon = rest.find(':')?;
    let rest = &rest[colon + 1..];
    let open = rest.find('{')?;
    if !rest[..open].trim().is_empty() {
        return None;
    }
    let body = &rest[open..];
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, ch) in body.char_indices() {
        if in_str {
            match (esc, ch) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match ch {
            '"' => in_str = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(body[..=i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// Decodes `%XX` escapes (PCS issuer-chain headers are URL-encoded PEM).
pub fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_member_keeps_the_exact_signed_bytes() {
        let text = r#"{"tcbInfo":{"id":"TDX","s":"a}\"{","n":{"x":1}},"signature":"ab"}"#;
        assert_eq!(
            raw_member(text, "tcbInfo").as_deref(),
            Some(r#"{"id":"TDX","s":"a}\"{","n":{"x":1}}"#)
        );
        assert_eq!(raw_member(text, "missing"), None);
        assert_eq!(raw_member("{\"tcbInfo\": 5}", "tcbInfo"), None);
    }

    #[test]
    fn issuer_chain_headers_are_percent_decoded() {
        assert_eq!(
            percent_decode("-----BEGIN%20CERT%0A%zz%4"),
            "-----BEGIN CERT\n%zz%4"
        );
    }
}

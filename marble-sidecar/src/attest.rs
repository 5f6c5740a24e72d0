//! Authenticating the coordinator by its attestation (`--coordinator-policy`): fetch
//! `/api/v2/attestation` with a fresh nonce, verify the evidence against the policy, the
//! statement binding and the TLS chain, then pin the attested root CA for the activation.
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use quarry_api::attestation::{
    verify_attestation, AttestationResponse, CoordinatorPolicy, VerifyOptions,
};
use quarry_api::http::JSend;
use quarry_api::{Claims, Evidence};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::client::{ClientError, CONNECT_TIMEOUT, REQUEST_TIMEOUT};
use crate::identity::MarbleKey;

/// Verifies the coordinator at `base` against the policy file; returns the attested root CA.
pub async fn verify_coordinator(
    base: &reqwest::Url,
    policy_path: &Path,
    allow_simulation: bool,
    key: &MarbleKey,
) -> Result<Arc<rustls::RootCertStore>, ClientError> {
    let fail = |reason: String| ClientError::CoordinatorNotAuthenticated {
        url: base.to_string(),
        reason,
    };
    let bytes = std::fs::read(policy_path)
        .map_err(|e| fail(format!("coordinator policy {}: {e}", policy_path.display())))?;
    let policy = CoordinatorPolicy::parse(&bytes)
        .map_err(|e| fail(format!("coordinator policy {}: {e}", policy_path.display())))?;
    let recorder = Arc::new(Recorder::default());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_client_auth_cert(vec![key.cert_der()], key.private_key_der())
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    let mut nonce = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut nonce)
        .map_err(|_| ClientError::Setup("system RNG failed".into()))?;
    let url = base
        .join(&format!("/api/v2/attestation?nonce={}", hex::encode(nonce)))
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    let resp = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    let body: JSend<AttestationResponse> = resp
        .json()
        .await
        .map_err(|e| fail(format!("malformed attestation: {e}")))?;
    let att = body.into_result().map_err(fail)?;
    let chain = recorder.chain.lock().map(|c| c.clone()).unwrap_or_default();
    let mut verifiers = quarry_attestation::VerifierSet::hardware(None);
    if allow_simulation {
        if let Some(pem) = &policy.simulation_platform_ca {
            let platform = quarry_attestation::simulated::SimPlatform::from_ca_pem(pem)
                .map_err(|e| fail(format!("SimulationPlatformCA: {e}")))?;
            let v = quarry_attestation::simulated::SimVerifier::new(&[platform]).map_err(fail)?;
            verifiers = verifiers.dangerous_with_simulation(v);
        }
    }
    let package = policy.package.clone();
    let check = move |ev: &Evidence, now: SystemTime| -> Result<Claims, String> {
        use quarry_attestation::Verifier as _;
        let claims = verifiers.verify(ev, now).map_err(|e| e.to_string())?;
        quarry_attestation::check_package(&package, &claims).map_err(|e| e.to_string())?;
        Ok(claims)
    };
    let opts = VerifyOptions {
        nonce: Some(&nonce),
        manifest: None,
        allow_simulation,
        presented_chain: Some(&chain),
        log: None,
        now: SystemTime::now(),
    };
    let verified = verify_attestation(&att, &opts, &check).map_err(|e| fail(e.to_string()))?;
    if verified.statement.simulation {
        tracing::warn!("WARNING: the coordinator runs on a SIMULATED TEE (accepted by --allow-simulated-coordinator)");
    }
    tracing::info!(
        root_ca_sha256 = %verified.statement.root_ca_sha256,
        "coordinator attested against the policy; pinning its root CA"
    );
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(verified.root_ca_der))
        .map_err(|e| fail(format!("attested root CA unusable: {e}")))?;
    Ok(Arc::new(roots))
}

/// Accepts the server certificate for the attestation request only, recording the chain,
/// which the attestation then has to vouch for.
#[derive(Debug, Default)]
struct Recorder {
    chain: Mutex<Vec<Vec<u8>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut c) = self.chain.lock() {
            *c = std::iter::once(end_entity)
                .chain(intermediates.iter())
                .map(|c| c.to_vec())
                .collect();
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

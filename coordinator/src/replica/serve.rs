//! The listening side of the peer channel: a running replica answers key-sharing requests
//! (the DEK, to a replica whose evidence matches its own under the seal mode's rule) and log
//! head requests ([`super::heads`]). The protocol, framing and checks are [`super::exchange`];
//! this module is the part that reads the coordinator's state.
use std::sync::Arc;
use std::time::Duration;

use quarry_api::manifest::SealMode;
use quarry_api::Claims;
use quarry_trust::tls::AnyClientCert;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use super::exchange::{
    ephemeral_identity, peer_spki, read_msg, report_data, verify_peer, write_msg, DekResponse,
    PeerRequest, EXCHANGE_TIMEOUT,
};
use crate::state::{Core, Phase};

/// Serves the DEK to attested replicas on `listener` until the task is dropped.
pub async fn serve_peers(core: Arc<Core>, listener: tokio::net::TcpListener, own: Arc<Claims>) {
    let (cert, key, spki) = match ephemeral_identity() {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "key sharing disabled: no TLS identity");
            return;
        }
    };
    let config = quarry_trust::tls::server_builder().map(|b| {
        b.with_client_cert_verifier(Arc::new(AnyClientCert::new(true)))
            .with_single_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
            )
    });
    let config = match config {
        Ok(Ok(c)) => Arc::new(c),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "key sharing disabled: TLS configuration");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "key sharing disabled: TLS configuration");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let spki = Arc::new(spki);
    let busy = Arc::new(tokio::sync::Semaphore::new(8));
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "key sharing: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = busy.clone().try_acquire_owned() else {
            continue;
        };
        let (core, acceptor, spki, own) =
            (core.clone(), acceptor.clone(), spki.clone(), own.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = tokio::time::timeout(
                EXCHANGE_TIMEOUT,
                share_with(&core, acceptor, tcp, &spki, &own),
            )
            .await
            .unwrap_or_else(|_| Err("the exchange timed out".into()));
            match outcome {
                Ok(()) => {
                    tracing::info!(peer = %from, "data encryption key shared with an attested replica")
                }
                Err(e) => tracing::warn!(peer = %from, reason = %e, "key sharing refused"),
            }
        });
    }
}

async fn share_with(
    core: &Core,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    spki: &[u8],
    own: &Claims,
) -> Result<(), String> {
    let mut tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let client_spki = peer_spki(tls.get_ref().1)?;
    let body = read_msg(&mut tls)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    let req: PeerRequest =
        serde_json::from_slice(&body).map_err(|e| format!("malformed request: {e}"))?;
    if let Some(head) = req.head {
        return super::heads::answer(core, &mut tls, req.evidence, head, &client_spki, spki, own)
            .await;
    }
    let mode = match core.view().phase.as_ref() {
        Phase::Running(d) => d.manifest.config.seal_mode,
        _ => SealMode::ProductKey,
    };
    let checked = verify_peer(
        &core.tee,
        own,
        req.evidence,
        report_data("joiner", &client_spki, spki),
        mode,
        true,
    )
    .await;
    let answer = match (&checked, core.dek()) {
        (Err(e), _) => DekResponse {
            evidence: None,
            dek: None,
            error: Some(format!(
                "this replica does not match the coordinator ({} rule): {e}",
                mode.as_str()
            )),
        },
        (Ok(()), None) => DekResponse {
            evidence: None,
            dek: None,
            error: Some("this replica holds no data encryption key (Recovery)".into()),
        },
        (Ok(()), Some(dek)) => DekResponse {
            evidence: Some(
                core.tee
                    .provider
                    .evidence(&report_data("holder", spki, &client_spki))
                    .map_err(|e| format!("own evidence: {e}"))?,
            ),
            dek: Some(quarry_api::bytes::b64(dek.expose())),
            error: None,
        },
    };
    let bytes = Zeroizing::new(serde_json::to_vec(&answer).map_err(|e| e.to_string())?);
    drop(answer);
    write_msg(&mut tls, &bytes)
        .await
        .map_err(|e| format!("sending the answer: {e}"))?;
    let _ = tls.shutdown().await;
    checked
}

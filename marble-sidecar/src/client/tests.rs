use reqwest::StatusCode;

use super::*;

#[test]
fn root_ca_file_without_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "not a certificate").unwrap();
    let err = TrustAnchor::load(&CoordinatorTrust::PinnedRoot(path.clone())).unwrap_err();
    assert!(matches!(err, ClientError::RootCa { .. }), "{err:?}");
    let err =
        TrustAnchor::load(&CoordinatorTrust::PinnedRoot(dir.path().join("missing"))).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn interpret_maps_envelopes_and_statuses() {
    let ok: NonceResponse = interpret(
        StatusCode::OK,
        br#"{"status":"success","data":{"nonce":"ab"}}"#,
        "t",
    )
    .unwrap();
    assert_eq!(ok.nonce, "ab");
    let err = interpret::<NonceResponse>(
        StatusCode::SERVICE_UNAVAILABLE,
        br#"{"status":"error","message":"not accepting marbles"}"#,
        "t",
    )
    .unwrap_err();
    assert!(matches!(&err, ClientError::Refused { message } if message == "not accepting marbles"));
    let err = interpret::<NonceResponse>(StatusCode::OK, b"<html>", "t").unwrap_err();
    assert!(matches!(err, ClientError::Protocol { .. }));
    let err = interpret::<NonceResponse>(StatusCode::OK, br#"{"status":"success","data":{}}"#, "t")
        .unwrap_err();
    assert!(matches!(err, ClientError::Protocol { .. }));
    let long = "x".repeat(2000);
    assert_eq!(sanitize(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
}

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
    assert!(
        matches!(&err, ClientError::Refused { message, .. } if message == "not accepting marbles")
    );
    let err = interpret::<NonceResponse>(StatusCode::OK, b"<html>", "t").unwrap_err();
    assert!(matches!(err, ClientError::Protocol { .. }));
    let err = interpret::<NonceResponse>(StatusCode::OK, br#"{"status":"success","data":{}}"#, "t")
        .unwrap_err();
    assert!(matches!(err, ClientError::Protocol { .. }));
    let long = "x".repeat(2000);
    assert_eq!(sanitize(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
}

#[test]
fn a_typed_refusal_keeps_its_code_and_fields_and_prints_them() {
    let body = br#"{"status":"fail","message":"package web: evidence does not match the package: SecurityVersion: expected >= 3, found 2\u0007","data":{"code":"policy-mismatch","message":"package web: evidence does not match the package: SecurityVersion: expected >= 3, found 2\u0007","fields":[{"field":"SecurityVersion","expected":">= 3","found":"2\u0007"}]}}"#;
    let err = interpret::<NonceResponse>(StatusCode::FORBIDDEN, body, "t").unwrap_err();
    match &err {
        ClientError::Refused {
            code: Some(code),
            fields,
            message,
        } => {
            assert_eq!(code, "policy-mismatch");
            assert_eq!(fields.len(), 1);
            assert_eq!(fields[0].field, "SecurityVersion");
            // Control characters from the coordinator never reach a terminal.
            assert_eq!(fields[0].found, "2 ");
            assert!(message.starts_with("package web"), "{message}");
        }
        other => panic!("expected a typed refusal, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "activation refused by coordinator: refused [policy-mismatch] SecurityVersion: expected >= 3, found 2 "
    );
    // A code without fields prints the message; a body without data prints the message only.
    let err = interpret::<NonceResponse>(
        StatusCode::FORBIDDEN,
        br#"{"status":"fail","message":"unknown or already used nonce","data":{"code":"nonce","message":"unknown or already used nonce"}}"#,
        "t",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "activation refused by coordinator: refused [nonce] unknown or already used nonce"
    );
    let err = interpret::<NonceResponse>(
        StatusCode::FORBIDDEN,
        br#"{"status":"fail","message":"old coordinator","data":null}"#,
        "t",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "activation refused by coordinator: old coordinator"
    );
}

//! The mesh API client against a fake coordinator over real TLS 1.3: coordinator
//! authentication (invariant 10), the activation binding, refusals and retries.
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use marble_sidecar::client::{self, ClientError, MeshClient, RetryPolicy, TrustAnchor};
use marble_sidecar::config::{coordinator_url, CoordinatorTrust};
use marble_sidecar::identity::MarbleKey;
use quarry_api::http::Value;
use support::{Behaviour, Ca, FakeCoordinator, Fixture, Options};
use tokio::net::TcpListener;

fn marble_key() -> (uuid::Uuid, MarbleKey) {
    let id = uuid::Uuid::new_v4();
    (id, MarbleKey::generate(&id).unwrap())
}

fn mesh(trust: &TrustAnchor, key: &MarbleKey, host: &str, addr: SocketAddr) -> MeshClient {
    let url = coordinator_url(&format!("{host}:{}", addr.port())).unwrap();
    MeshClient::new(url, client::tls_config(trust, key).unwrap()).unwrap()
}

fn pinned(ca: &Ca, dir: &Path) -> TrustAnchor {
    TrustAnchor::load(&CoordinatorTrust::PinnedRoot(ca.write_pem(dir))).unwrap()
}

fn behaving(behaviour: Behaviour) -> Options {
    Options {
        behaviour,
        ..Options::default()
    }
}

const NO_RETRY: RetryPolicy = RetryPolicy {
    attempts: 1,
    initial_delay: Duration::from_millis(10),
    max_delay: Duration::from_millis(10),
};

#[tokio::test]
async fn pinned_root_accepts_the_right_coordinator_which_sees_the_marble_key() {
    let fx = Fixture::new();
    let root = Ca::new("deployment root");
    let coord = FakeCoordinator::start(&root, &fx.platform, Options::default()).await;
    let (_, key) = marble_key();
    let trust = pinned(&root, fx.dir.path());
    mesh(&trust, &key, "127.0.0.1", coord.addr)
        .nonce()
        .await
        .expect("a coordinator signed by the pinned root is accepted (IP SAN)");
    mesh(&trust, &key, "localhost", coord.addr)
        .nonce()
        .await
        .expect("a coordinator signed by the pinned root is accepted (DNS SAN)");
    let seen = coord.client_keys.lock().unwrap().clone();
    assert_eq!(seen, vec![key.spki_der().to_vec(), key.spki_der().to_vec()]);
}

#[tokio::test]
async fn pinned_root_refuses_a_coordinator_from_another_ca_without_retrying() {
    let fx = Fixture::new();
    let impostor = Ca::new("impostor root");
    let root = Ca::new("deployment root");
    let coord = FakeCoordinator::start(&impostor, &fx.platform, Options::default()).await;
    let (id, key) = marble_key();
    let mesh = mesh(&pinned(&root, fx.dir.path()), &key, "127.0.0.1", coord.addr);
    let slow_retries = RetryPolicy {
        attempts: 5,
        initial_delay: Duration::from_secs(2),
        max_delay: Duration::from_secs(2),
    };
    let started = Instant::now();
    let err = client::activate(&mesh, &key, &fx.provider(), "web", &id, &[], &slow_retries)
        .await
        .expect_err("the sidecar must refuse a coordinator it cannot authenticate");
    assert!(
        matches!(err, ClientError::CoordinatorNotAuthenticated { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "authentication failures are not retried"
    );
    assert!(coord.activations.lock().unwrap().is_empty());
}

#[tokio::test]
async fn pinned_root_refuses_a_certificate_for_another_name() {
    let fx = Fixture::new();
    let root = Ca::new("deployment root");
    let opts = Options {
        names: vec!["coordinator.example"],
        ..Options::default()
    };
    let coord = FakeCoordinator::start(&root, &fx.platform, opts).await;
    let (_, key) = marble_key();
    let err = mesh(&pinned(&root, fx.dir.path()), &key, "127.0.0.1", coord.addr)
        .nonce()
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::CoordinatorNotAuthenticated { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn insecure_mode_accepts_any_coordinator() {
    let fx = Fixture::new();
    let anyone = Ca::new("whatever");
    let opts = Options {
        names: vec!["elsewhere.example"],
        ..Options::default()
    };
    let coord = FakeCoordinator::start(&anyone, &fx.platform, opts).await;
    let (_, key) = marble_key();
    let trust = TrustAnchor::load(&CoordinatorTrust::DangerousAcceptAnyCoordinator).unwrap();
    mesh(&trust, &key, "127.0.0.1", coord.addr)
        .nonce()
        .await
        .unwrap();
}

#[tokio::test]
async fn activation_binds_key_and_nonce_and_returns_the_parameters() {
    let fx = Fixture::new();
    let root = Ca::new("deployment root");
    let coord = FakeCoordinator::start(&root, &fx.platform, Options::default()).await;
    let (id, key) = marble_key();
    let mesh = mesh(&pinned(&root, fx.dir.path()), &key, "127.0.0.1", coord.addr);
    let names = vec!["web.svc".to_string()];
    let response = client::activate(&mesh, &key, &fx.provider(), "web", &id, &names, &NO_RETRY)
        .await
        .unwrap();
    assert!(coord.failures.lock().unwrap().is_empty());
    assert_eq!(
        response.spiffe_id,
        format!("spiffe://quarry.local/marble/web/{id}")
    );
    assert_eq!(
        response.parameters.env["GREETING"],
        Value::data(b"hi".to_vec())
    );
    let requests = coord.activations.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].marble_type, "web");
    assert_eq!(requests[0].uuid, id.to_string());
    assert_eq!(requests[0].dns_names, names);
}

#[tokio::test]
async fn a_certificate_for_another_key_is_refused() {
    let fx = Fixture::new();
    let root = Ca::new("deployment root");
    let coord = FakeCoordinator::start(&root, &fx.platform, behaving(Behaviour::WrongKey)).await;
    let (id, key) = marble_key();
    let mesh = mesh(&pinned(&root, fx.dir.path()), &key, "127.0.0.1", coord.addr);
    let err = client::activate(&mesh, &key, &fx.provider(), "web", &id, &[], &NO_RETRY)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::LeafKeyMismatch), "{err:?}");
}

#[tokio::test]
async fn a_refusal_is_one_line_with_the_coordinator_message_and_is_not_retried() {
    let fx = Fixture::new();
    let root = Ca::new("deployment root");
    let coord = FakeCoordinator::start(&root, &fx.platform, behaving(Behaviour::Refuse)).await;
    let (id, key) = marble_key();
    let mesh1 = mesh(&pinned(&root, fx.dir.path()), &key, "127.0.0.1", coord.addr);
    let err = client::activate(
        &mesh1,
        &key,
        &fx.provider(),
        "web",
        &id,
        &[],
        &RetryPolicy::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "activation refused by coordinator: package web: SecurityVersion 1 < 2 second line"
    );
    // One nonce request and one activation: refusals are final.
    assert_eq!(coord.client_keys.lock().unwrap().len(), 2);

    let coord = FakeCoordinator::start(&root, &fx.platform, behaving(Behaviour::PlainError)).await;
    let mesh2 = mesh(&pinned(&root, fx.dir.path()), &key, "127.0.0.1", coord.addr);
    let err = client::activate(&mesh2, &key, &fx.provider(), "web", &id, &[], &NO_RETRY)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("HTTP 415"), "{err}");
}

#[tokio::test]
async fn a_coordinator_that_starts_late_is_reached_by_retrying() {
    let fx = Fixture::new();
    let root = Ca::new("deployment root");
    // Reserve a port, free it, and start the coordinator on it only after a while.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (id, key) = marble_key();
    let mesh = mesh(&pinned(&root, fx.dir.path()), &key, "127.0.0.1", port);
    let provider = fx.provider();
    let err = client::activate(&mesh, &key, &provider, "web", &id, &[], &NO_RETRY)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retryable());

    let retry = RetryPolicy {
        attempts: 40,
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(100),
    };
    let late = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let opts = Options {
            listener: Some(TcpListener::bind(port).await.unwrap()),
            ..Options::default()
        };
        FakeCoordinator::start(&root, &fx.platform, opts).await
    };
    let (result, _coord) = tokio::join!(
        client::activate(&mesh, &key, &provider, "web", &id, &[], &retry),
        late
    );
    result.expect("activation succeeds once the coordinator is up");
}

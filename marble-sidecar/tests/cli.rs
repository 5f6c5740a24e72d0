//! The `marble-sidecar` binary against a fake coordinator: exit codes, the one-line refusal,
//! files and environment handed to a real child, `activate --out`, signal forwarding.
mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use quarry_api::http::{KeyEncoding, Parameters, Segment, Value};
use quarry_attestation::simulated::SimVerifier;
use quarry_attestation::Verifier as _;
use support::{Behaviour, Ca, FakeCoordinator, Fixture, Options};

struct Env {
    fx: Fixture,
    root: Ca,
    work: PathBuf,
}

impl Env {
    fn new() -> Env {
        let fx = Fixture::new();
        let work = fx.dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        Env {
            fx,
            root: Ca::new("deployment root"),
            work,
        }
    }

    /// The sidecar with a clean environment, pinned root and simulated TEE, run in `work`.
    fn sidecar(&self, coord: &FakeCoordinator, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_marble-sidecar"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "error")
            .env("EDG_MARBLE_COORDINATOR_ADDR", coord.addr.to_string())
            .env("QUARRY_MARBLE_TYPE", "web")
            .env(
                "QUARRY_COORDINATOR_ROOT_CA",
                self.root.write_pem(self.fx.dir.path()),
            )
            .env("QUARRY_TEE", "simulated")
            .env("QUARRY_SIM_PLATFORM", &self.fx.platform_dir)
            .current_dir(&self.work)
            .kill_on_drop(true)
            .args(args);
        c
    }

    async fn coordinator(&self, opts: Options) -> FakeCoordinator {
        FakeCoordinator::start(&self.root, &self.fx.platform, opts).await
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_trust_option_exits_2_with_one_line_and_touches_nothing() {
    let env = Env::new();
    let coord = env.coordinator(Options::default()).await;
    let out = env
        .sidecar(&coord, &["run", "--", "/bin/true"])
        .env_remove("QUARRY_COORDINATOR_ROOT_CA")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("the coordinator cannot be authenticated"),
        "{err}"
    );
    assert!(!env.work.join("uuid").exists());
    assert!(coord.client_keys.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_tee_exits_2_and_never_falls_back_to_simulation() {
    let env = Env::new();
    let coord = env.coordinator(Options::default()).await;
    let out = env
        .sidecar(&coord, &["run", "--tee", "sgx", "--", "/bin/true"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // No /dev/attestation on this machine: the hardware provider fails at startup, on one
    // line, before any contact with the coordinator.
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("invalid --tee: TEE sgx configured but unavailable at /dev/attestation")
            && err.contains("refusing to start (there is no fallback to simulation)"),
        "{err}"
    );
    assert!(coord.client_keys.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_exits_1_with_the_reason_on_one_line_and_never_starts_the_service() {
    let env = Env::new();
    let coord = env
        .coordinator(Options {
            behaviour: Behaviour::Refuse,
            ..Options::default()
        })
        .await;
    let out = env
        .sidecar(&coord, &["run", "--", "sh", "-c", ": > started"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "activation refused by coordinator: package web: SecurityVersion 1 < 2 second line\n"
    );
    assert!(!env.work.join("started").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_coordinator_exits_1() {
    let env = Env::new();
    let impostor = Ca::new("impostor");
    let coord = FakeCoordinator::start(&impostor, &env.fx.platform, Options::default()).await;
    let out = env
        .sidecar(&coord, &["run", "--", "/bin/true"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("could not be authenticated"), "{err}");
    assert!(coord.activations.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_hands_files_env_and_argv_to_the_service_and_returns_its_exit_code() {
    let env = Env::new();
    let abs_key = env.fx.dir.path().join("secrets/key.pem");
    let mut files = BTreeMap::new();
    files.insert(
        "conf/app.conf".to_string(),
        Value::data(b"setting=1".to_vec()),
    );
    files.insert(
        abs_key.display().to_string(),
        Value(vec![Segment::MarblePrivateKey(KeyEncoding::Pem)]),
    );
    let mut vars = BTreeMap::new();
    vars.insert("GREETING".to_string(), Value::data(b"it's hi".to_vec()));
    let script = r#"printf '%s|%s' "$0" "$GREETING" > seen; printf '%s' "$MARBLE_PREDEFINED_PRIVATE_KEY" > env-key; exit 5"#;
    let opts = Options {
        parameters: Parameters {
            files,
            env: vars,
            argv: vec!["custom0".into(), "-c".into(), script.into()],
        },
        ..Options::default()
    };
    let coord = env.coordinator(opts).await;
    let out = env
        .sidecar(&coord, &["run", "--", "sh", "-c", "exit 99"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(coord.failures.lock().unwrap().is_empty());

    let w = &env.work;
    assert_eq!(
        std::fs::read_to_string(w.join("seen")).unwrap(),
        "custom0|it's hi"
    );
    assert_eq!(
        std::fs::read_to_string(w.join("conf/app.conf")).unwrap(),
        "setting=1"
    );
    assert_eq!(mode(&w.join("conf/app.conf")), 0o600);
    assert_eq!(mode(&w.join("conf")), 0o700);
    let key_file = std::fs::read_to_string(&abs_key).unwrap();
    assert!(key_file.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(mode(&abs_key), 0o600);
    assert_eq!(
        std::fs::read_to_string(w.join("env-key")).unwrap(),
        key_file
    );

    // The UUID file was created and is what the coordinator was told.
    let uuid = std::fs::read_to_string(w.join("uuid")).unwrap();
    assert_eq!(mode(&w.join("uuid")), 0o600);
    let activations = coord.activations.lock().unwrap().clone();
    assert_eq!(activations.len(), 1);
    assert_eq!(activations[0].uuid, uuid);
    // Simulated evidence measures the resolved executable that was run.
    let claims = SimVerifier::new(std::slice::from_ref(&env.fx.platform))
        .unwrap()
        .verify(&activations[0].evidence, SystemTime::now())
        .unwrap();
    let (_, digest) = quarry_attestation::measure::simulated_unique_id("sh").unwrap();
    assert_eq!(claims.identity.unique_id, Some(digest.to_vec()));

    // A restart reuses the UUID.
    let out = env
        .sidecar(&coord, &["run", "--", "sh", "-c", "exit 0"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(coord.activations.lock().unwrap()[1].uuid, uuid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_manifest_argv_passes_the_command_line() {
    let env = Env::new();
    let opts = Options::default();
    let coord = env.coordinator(opts).await;
    let out = env
        .sidecar(
            &coord,
            &[
                "run",
                "--",
                "sh",
                "-c",
                r#"printf '%s' "$1|$GREETING" > seen; exit 4"#,
                "zero",
                "one",
            ],
        )
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(env.work.join("seen")).unwrap(),
        "one|hi"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_writes_the_output_directory_and_exits_0() {
    let env = Env::new();
    let mut files = BTreeMap::new();
    files.insert("app/config".to_string(), Value::data(b"c".to_vec()));
    let opts = Options {
        parameters: Parameters {
            files,
            env: BTreeMap::new(),
            argv: vec!["app".into()],
        },
        ..Options::default()
    };
    let coord = env.coordinator(opts).await;
    let out_dir = env.fx.dir.path().join("shared");
    let out = env
        .sidecar(
            &coord,
            &[
                "activate",
                "--out",
                out_dir.to_str().unwrap(),
                "--sim-measure",
                "sh",
            ],
        )
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(mode(&out_dir), 0o700);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("app/config")).unwrap(),
        "c"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("argv.json")).unwrap(),
        r#"["app"]"#
    );
    let env_file = std::fs::read_to_string(out_dir.join("env")).unwrap();
    assert!(
        env_file.starts_with("export MARBLE_PREDEFINED_PRIVATE_KEY='-----BEGIN PRIVATE KEY-----")
    );
    assert_eq!(mode(&out_dir.join("env")), 0o600);
    assert_eq!(mode(&out_dir.join("marble-key.pem")), 0o600);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("root-ca.pem")).unwrap(),
        env.root.cert.pem()
    );
    // marble-key.pem is the key of the leaf in marble-cert.pem.
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(out_dir.join("marble-key.pem")).unwrap())
            .unwrap();
    let chain = std::fs::read_to_string(out_dir.join("marble-cert.pem")).unwrap();
    let leaf = pem::parse_many(&chain).unwrap().remove(0);
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf.contents()).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_sidecar_reaches_the_service_whose_exit_code_is_returned() {
    let env = Env::new();
    let coord = env.coordinator(Options::default()).await;
    let mut child = env
        .sidecar(
            &coord,
            &[
                "run",
                "--",
                "sh",
                "-c",
                r#"trap "exit 3" TERM; : > ready; sleep 10 & wait"#,
            ],
        )
        .spawn()
        .unwrap();
    let ready = env.work.join("ready");
    for _ in 0..1000 {
        if ready.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready.exists(), "the service never started");
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the sidecar must exit after forwarding SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(3));
}

impl Env {
    /// The sidecar as the injector starts it: every protected setting as a flag behind
    /// `--settings-from-args`, and an environment holding nothing of the sidecar's but logging.
    fn sidecar_from_args(&self, coord: &FakeCoordinator, sub: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_marble-sidecar"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "error")
            .env("QUARRY_LOG_FORMAT", "text")
            .current_dir(&self.work)
            .kill_on_drop(true)
            .arg(sub)
            .arg("--settings-from-args")
            .arg("--coordinator")
            .arg(coord.addr.to_string())
            .args(["--marble-type", "web", "--tee", "simulated"])
            .arg("--sim-platform")
            .arg(&self.fx.platform_dir)
            .arg("--coordinator-root-ca")
            .arg(self.root.write_pem(self.fx.dir.path()));
        c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_from_args_refuses_a_protected_variable_with_exit_2_naming_it() {
    let env = Env::new();
    let coord = env.coordinator(Options::default()).await;
    // What a ConfigMap through envFrom would bring: the webhook never sees these.
    for (name, value) in [
        ("QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY", "true"),
        ("QUARRY_COORDINATOR_ROOT_CA", "/elsewhere.pem"),
        ("EDG_MARBLE_COORDINATOR_ADDR", "evil.example:2001"),
        ("QUARRY_WORKLOAD_API", "unix:///tmp/steal/agent.sock"),
        ("QUARRY_SIM_MEASURE", ""),
    ] {
        let out = env
            .sidecar_from_args(&coord, "run")
            .args(["--", "sh", "-c", ": > started"])
            .env(name, value)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "{name} set in the environment, but with --settings-from-args"
            )),
            "{err}"
        );
        assert!(!env.work.join("started").exists());
        assert!(!env.work.join("uuid").exists());
    }
    assert!(
        coord.client_keys.lock().unwrap().is_empty(),
        "refused before any contact with the coordinator"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_from_args_runs_the_service_from_the_command_line_alone() {
    let env = Env::new();
    let coord = env.coordinator(Options::default()).await;
    let out = env
        .sidecar_from_args(&coord, "run")
        .args([
            "--",
            "sh",
            "-c",
            r#"printf '%s' "$GREETING" > seen; exit 6"#,
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(env.work.join("seen")).unwrap(),
        "hi"
    );
    assert_eq!(coord.activations.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_settings_from_args_the_environment_still_configures_the_sidecar() {
    let env = Env::new();
    let coord = env.coordinator(Options::default()).await;
    // The same variable that the flag refuses: here it is the documented way to configure
    // the sidecar (the pinned root is replaced by no verification at all).
    let out = env
        .sidecar(&coord, &["run", "--", "sh", "-c", ": > started"])
        .env_remove("QUARRY_COORDINATOR_ROOT_CA")
        .env("QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY", "true")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(env.work.join("started").exists());
}

use std::collections::HashMap;

use clap::{CommandFactory, Parser};

use super::*;

fn resolve(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut argv = vec!["marble-sidecar"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).expect("command line must parse");
    Config::resolve(cli, |k| env.get(k).cloned())
}

const SIM: [&str; 4] = ["--tee", "simulated", "--sim-platform", "/plat"];

fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run"];
    v.extend_from_slice(&SIM);
    v.extend_from_slice(extra);
    v.extend_from_slice(&["--", "/bin/true", "x"]);
    v
}

#[test]
fn flags_resolve_with_defaults() {
    let c = resolve(
        &run_args(&["--marble-type", "web", "--insecure-skip-coordinator-verify"]),
        &[],
    )
    .unwrap();
    assert_eq!(c.coordinator.as_str(), "https://localhost:2001/");
    assert_eq!(c.marble_type, "web");
    assert_eq!(c.uuid_file, PathBuf::from("uuid"));
    assert!(c.dns_names.is_empty());
    assert_eq!(c.trust, CoordinatorTrust::DangerousAcceptAnyCoordinator);
    assert_eq!(
        c.tee,
        Tee::Simulated(SimulatedTee {
            platform_dir: "/plat".into(),
            signer_id: [0; 32],
            product_id: 0,
            security_version: 0,
            debug: false,
        })
    );
    assert_eq!(
        c.mode,
        Mode::Run {
            command: vec!["/bin/true".into(), "x".into()]
        }
    );
}

#[test]
fn marblerun_aliases_are_honoured_when_quarry_variables_are_unset() {
    let c = resolve(
        &run_args(&["--coordinator-root-ca", "/ca.pem"]),
        &[
            ("EDG_MARBLE_COORDINATOR_ADDR", "coord.svc:2001"),
            ("EDG_MARBLE_TYPE", "db"),
            ("EDG_MARBLE_UUID_FILE", "/data/uuid"),
            ("EDG_MARBLE_DNS_NAMES", "db.svc, db ,,localhost"),
        ],
    )
    .unwrap();
    assert_eq!(c.coordinator.as_str(), "https://coord.svc:2001/");
    assert_eq!(c.marble_type, "db");
    assert_eq!(c.uuid_file, PathBuf::from("/data/uuid"));
    assert_eq!(c.dns_names, vec!["db.svc", "db", "localhost"]);
    assert_eq!(c.trust, CoordinatorTrust::PinnedRoot("/ca.pem".into()));
}

#[test]
fn flag_beats_quarry_variable_which_beats_edg_alias() {
    let env = [
        ("QUARRY_MARBLE_TYPE", "from-quarry"),
        ("EDG_MARBLE_TYPE", "from-edg"),
        ("QUARRY_COORDINATOR_ADDR", "quarry.example:7000"),
        ("EDG_MARBLE_COORDINATOR_ADDR", "edg.example:7001"),
        ("QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY", "true"),
    ];
    let c = resolve(&run_args(&[]), &env).unwrap();
    assert_eq!(c.marble_type, "from-quarry");
    assert_eq!(c.coordinator.as_str(), "https://quarry.example:7000/");
    let c = resolve(
        &run_args(&[
            "--marble-type",
            "from-flag",
            "--coordinator",
            "flag.example:7002",
        ]),
        &env,
    )
    .unwrap();
    assert_eq!(c.marble_type, "from-flag");
    assert_eq!(c.coordinator.as_str(), "https://flag.example:7002/");
    // An empty QUARRY_ variable counts as unset, so the alias applies.
    let c = resolve(
        &run_args(&["--insecure-skip-coordinator-verify"]),
        &[("QUARRY_MARBLE_TYPE", ""), ("EDG_MARBLE_TYPE", "from-edg")],
    )
    .unwrap();
    assert_eq!(c.marble_type, "from-edg");
}

#[test]
fn missing_trust_option_is_refused() {
    let err = resolve(&run_args(&["--marble-type", "web"]), &[]).unwrap_err();
    assert_eq!(err, ConfigError::MissingTrust);
    // "false" in the environment does not count as asking for insecurity.
    let err = resolve(
        &run_args(&["--marble-type", "web"]),
        &[("QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY", "false")],
    )
    .unwrap_err();
    assert_eq!(err, ConfigError::MissingTrust);
}

#[test]
fn both_trust_options_are_refused() {
    let err = resolve(
        &run_args(&["--marble-type", "web", "--insecure-skip-coordinator-verify"]),
        &[("QUARRY_COORDINATOR_ROOT_CA", "/ca.pem")],
    )
    .unwrap_err();
    assert_eq!(err, ConfigError::ConflictingTrust);
}

#[test]
fn unparsable_boolean_variable_is_refused() {
    let err = resolve(
        &run_args(&["--marble-type", "web"]),
        &[("QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY", "maybe")],
    )
    .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { origin, .. } if origin == "QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY"),
        "{err:?}"
    );
}

#[test]
fn unknown_tee_is_refused_not_simulated() {
    let args = [
        "run",
        "--marble-type",
        "web",
        "--insecure-skip-coordinator-verify",
        "--tee",
        "sgx",
        "--sim-platform",
        "/plat",
        "--",
        "/bin/true",
    ];
    // A hardware TEE is configured without touching the hardware (that happens at startup).
    let config = resolve(&args, &[]).unwrap();
    assert_eq!(
        config.tee,
        Tee::Hardware(HardwareTee {
            kind: quarry_api::TeeKind::Sgx,
            root: "/dev/attestation".into(),
            collateral: None,
        })
    );
    let config = resolve(
        &[
            "run",
            "--marble-type",
            "w",
            "--insecure-skip-coordinator-verify",
            "--",
            "x",
        ],
        &[
            ("QUARRY_TEE", "snp"),
            ("QUARRY_ATTESTATION_ROOT", "/prepared"),
            ("QUARRY_COLLATERAL", "/c.json"),
        ],
    )
    .unwrap();
    assert_eq!(
        config.tee,
        Tee::Hardware(HardwareTee {
            kind: quarry_api::TeeKind::Snp,
            root: "/prepared".into(),
            collateral: Some("/c.json".into()),
        })
    );
    let err = resolve(
        &[
            "run",
            "--marble-type",
            "w",
            "--insecure-skip-coordinator-verify",
            "--tee",
            "sev",
            "--",
            "x",
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(err, ConfigError::UnavailableTee("sev".into()));
    assert_eq!(
        err.to_string(),
        "TEE provider sev is not known (available: gramine-sgx, tdx, snp, auto, simulated)"
    );
}

#[test]
fn tee_auto_detects_gramine_and_refuses_when_nothing_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_string();
    let args = [
        "run",
        "--marble-type",
        "w",
        "--insecure-skip-coordinator-verify",
        "--tee",
        "auto",
        "--attestation-root",
        &root,
        "--",
        "x",
    ];
    let err = resolve(&args, &[]).unwrap_err();
    assert!(
        matches!(&err, ConfigError::NoTeeDetected { gramine, .. } if gramine == &root),
        "{err}"
    );
    assert!(err.to_string().contains("no fallback to simulation"));
    std::fs::write(dir.path().join("attestation_type"), "dcap").unwrap();
    let config = resolve(&args, &[]).unwrap();
    assert_eq!(
        config.tee,
        Tee::Hardware(HardwareTee {
            kind: quarry_api::TeeKind::Sgx,
            root: root.clone().into(),
            collateral: None,
        })
    );
}

#[test]
fn missing_tee_is_refused() {
    let err = resolve(
        &[
            "run",
            "--marble-type",
            "w",
            "--insecure-skip-coordinator-verify",
            "--",
            "x",
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(err, ConfigError::MissingTee);
}

#[test]
fn missing_marble_type_is_refused() {
    let err = resolve(&run_args(&["--insecure-skip-coordinator-verify"]), &[]).unwrap_err();
    assert_eq!(err, ConfigError::MissingMarbleType);
}

#[test]
fn simulated_identity_flags_and_variables_parse() {
    let signer = "ab".repeat(32);
    let c = resolve(
        &run_args(&[
            "--marble-type",
            "w",
            "--insecure-skip-coordinator-verify",
            "--sim-signer",
            &signer,
            "--sim-svn",
            "4",
        ]),
        &[("QUARRY_SIM_PRODUCT_ID", "9"), ("QUARRY_SIM_DEBUG", "1")],
    )
    .unwrap();
    let Tee::Simulated(sim) = c.tee else {
        panic!("expected the simulated TEE")
    };
    assert_eq!(sim.signer_id, [0xab; 32]);
    assert_eq!(sim.product_id, 9);
    assert_eq!(sim.security_version, 4);
    assert!(sim.debug);

    let err = resolve(
        &run_args(&[
            "--marble-type",
            "w",
            "--insecure-skip-coordinator-verify",
            "--sim-signer",
            "abcd",
        ]),
        &[],
    )
    .unwrap_err();
    assert!(matches!(&err, ConfigError::Invalid { origin, .. } if origin == "--sim-signer"));
    let err = resolve(
        &run_args(&["--marble-type", "w", "--insecure-skip-coordinator-verify"]),
        &[("QUARRY_SIM_SVN", "-1")],
    )
    .unwrap_err();
    assert!(matches!(&err, ConfigError::Invalid { origin, .. } if origin == "QUARRY_SIM_SVN"));
}

#[test]
fn simulated_tee_needs_a_platform() {
    let err = resolve(
        &[
            "run",
            "--marble-type",
            "w",
            "--insecure-skip-coordinator-verify",
            "--tee",
            "simulated",
            "--",
            "x",
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(err, ConfigError::MissingSimPlatform);
}

#[test]
fn activate_with_simulation_needs_something_to_measure() {
    let base = [
        "activate",
        "--out",
        "/out",
        "--marble-type",
        "w",
        "--insecure-skip-coordinator-verify",
        "--tee",
        "simulated",
        "--sim-platform",
        "/plat",
    ];
    assert_eq!(
        resolve(&base, &[]).unwrap_err(),
        ConfigError::MissingSimMeasure
    );
    let c = resolve(&base, &[("QUARRY_SIM_MEASURE", "/usr/bin/app")]).unwrap();
    assert_eq!(
        c.mode,
        Mode::Activate {
            out: "/out".into(),
            measure: Some("/usr/bin/app".into())
        }
    );
}

#[test]
fn run_without_a_command_is_a_usage_error() {
    let r = Cli::try_parse_from(["marble-sidecar", "run", "--marble-type", "w"]);
    assert!(r.is_err());
    // Arguments before `--` are not taken as the command.
    let r = Cli::try_parse_from(["marble-sidecar", "run", "app"]);
    assert!(r.is_err());
}

#[test]
fn coordinator_addresses_parse() {
    let ok = [
        ("localhost:2001", "https://localhost:2001/"),
        ("coord", "https://coord:2001/"),
        ("127.0.0.1:9", "https://127.0.0.1:9/"),
        ("[::1]:2001", "https://[::1]:2001/"),
        ("[::1]", "https://[::1]:2001/"),
        ("https://coord.svc:443/", "https://coord.svc/"),
    ];
    for (input, want) in ok {
        assert_eq!(coordinator_url(input).unwrap().as_str(), want, "{input}");
    }
    for bad in [
        "http://coord:2001",
        "::1:2001",
        ":2001",
        "coord:0",
        "coord:http",
        "coord:2001/path",
        "user@coord:2001",
        "[::1",
        "",
    ] {
        assert!(coordinator_url(bad).is_err(), "{bad} must be refused");
    }
}

#[test]
fn help_documents_every_flag_with_its_environment_variable() {
    let mut cmd = Cli::command();
    for sub in ["run", "activate"] {
        let help = cmd
            .find_subcommand_mut(sub)
            .expect("subcommand exists")
            .render_long_help()
            .to_string();
        for needle in [
            "--coordinator ",
            "QUARRY_COORDINATOR_ADDR",
            "EDG_MARBLE_COORDINATOR_ADDR",
            "localhost:2001",
            "--marble-type",
            "QUARRY_MARBLE_TYPE",
            "EDG_MARBLE_TYPE",
            "--uuid-file",
            "QUARRY_MARBLE_UUID_FILE",
            "EDG_MARBLE_UUID_FILE",
            "--dns-names",
            "QUARRY_MARBLE_DNS_NAMES",
            "EDG_MARBLE_DNS_NAMES",
            "--tee",
            "QUARRY_TEE",
            "--sim-platform",
            "QUARRY_SIM_PLATFORM",
            "--sim-signer",
            "QUARRY_SIM_SIGNER",
            "--sim-product-id",
            "QUARRY_SIM_PRODUCT_ID",
            "--sim-svn",
            "QUARRY_SIM_SVN",
            "--sim-debug",
            "QUARRY_SIM_DEBUG",
            "--coordinator-root-ca",
            "QUARRY_COORDINATOR_ROOT_CA",
            "--insecure-skip-coordinator-verify",
            "QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY",
            "--settings-from-args",
        ] {
            assert!(help.contains(needle), "`{sub} --help` lacks {needle}");
        }
    }
    let help = cmd
        .find_subcommand_mut("activate")
        .expect("subcommand exists")
        .render_long_help()
        .to_string();
    for needle in [
        "--out",
        "--sim-measure",
        "QUARRY_SIM_MEASURE",
        "marble-key.pem",
        "export",
    ] {
        assert!(help.contains(needle), "`activate --help` lacks {needle}");
    }
    cmd.debug_assert();
}

/// The flags the injector writes: every protected setting on the command line.
fn from_args(sub: &str) -> Vec<&str> {
    let mut v = vec![
        sub,
        "--settings-from-args",
        "--coordinator",
        "coord.svc:2001",
        "--marble-type",
        "web",
        "--uuid-file",
        "/quarry/id/uuid",
        "--coordinator-root-ca",
        "/quarry/trust/root-ca.pem",
    ];
    v.extend_from_slice(&SIM);
    v
}

#[test]
fn settings_from_args_refuses_every_protected_variable_naming_it() {
    let mut args = from_args("run");
    args.extend_from_slice(&["--", "/bin/true"]);
    for name in PROTECTED_ENV {
        // Empty counts too: the pod tried to set it.
        for value in ["true", ""] {
            let err = resolve(&args, &[("RUST_LOG", "debug"), (name, value)]).unwrap_err();
            assert_eq!(err, ConfigError::ProtectedEnvSet(vec![name.to_string()]));
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("{name} set in the environment"))
                    && message.contains("--settings-from-args")
                    && message.contains("envFrom"),
                "{message}"
            );
        }
    }
    let err = resolve(
        &args,
        &[
            ("QUARRY_WORKLOAD_API", "unix:/tmp/x.sock"),
            ("QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY", "true"),
        ],
    )
    .unwrap_err();
    assert_eq!(
        err,
        ConfigError::ProtectedEnvSet(vec![
            "QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY".into(),
            "QUARRY_WORKLOAD_API".into()
        ]),
        "all of them are named, in PROTECTED_ENV order"
    );
}

#[test]
fn settings_from_args_takes_every_setting_from_the_command_line() {
    let mut args = from_args("proxy");
    args.extend_from_slice(&[
        "--dns-names",
        "web,web.ns",
        "--sim-measure",
        "/bin/sh",
        "--workload-api",
        "unix:///quarry/spiffe/agent/agent.sock",
        "--crl-interval",
        "5s",
    ]);
    // Variables nobody protects stay; they configure nothing here.
    let c = resolve(
        &args,
        &[("RUST_LOG", "debug"), ("QUARRY_LOG_FORMAT", "json")],
    )
    .unwrap();
    assert_eq!(c.coordinator.as_str(), "https://coord.svc:2001/");
    assert_eq!(c.marble_type, "web");
    assert_eq!(c.uuid_file, PathBuf::from("/quarry/id/uuid"));
    assert_eq!(c.dns_names, ["web", "web.ns"]);
    assert_eq!(
        c.trust,
        CoordinatorTrust::PinnedRoot("/quarry/trust/root-ca.pem".into())
    );
    assert_eq!(
        c.mode,
        Mode::Proxy {
            measure: Some("/bin/sh".into())
        }
    );
    assert_eq!(
        c.workload_api,
        Some(PathBuf::from("/quarry/spiffe/agent/agent.sock"))
    );
    assert_eq!(c.crl_interval, std::time::Duration::from_secs(5));
}

#[test]
fn without_settings_from_args_the_same_variables_still_configure_the_sidecar() {
    let c = resolve(
        &run_args(&[]),
        &[
            ("QUARRY_MARBLE_TYPE", "web"),
            ("QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY", "true"),
        ],
    )
    .unwrap();
    assert_eq!(c.trust, CoordinatorTrust::DangerousAcceptAnyCoordinator);
    // With the flag, a setting missing from the command line is missing, whatever the
    // environment would have said (here it says nothing protected, so this is not the
    // presence check speaking).
    let err = resolve(
        &[
            "run",
            "--settings-from-args",
            "--tee",
            "simulated",
            "--",
            "/bin/true",
        ],
        &[("QUARRY_LOG_FORMAT", "json")],
    )
    .unwrap_err();
    assert_eq!(err, ConfigError::MissingMarbleType);
}

#[test]
fn every_variable_the_resolver_reads_is_protected() {
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    let read = RefCell::new(BTreeSet::new());
    // No flags, so every setting is looked up; QUARRY_* names of aliased settings answer
    // nothing so that the EDG_* alias is read too.
    type Vars = [(&'static str, &'static str)];
    let answer = |values: &'static Vars| {
        let read = &read;
        move |name: &str| {
            read.borrow_mut().insert(name.to_string());
            values
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let configs: [(&[&str], &'static Vars); 3] = [
        (
            &["run", "--", "/bin/true"],
            &[
                ("EDG_MARBLE_TYPE", "web"),
                ("QUARRY_TEE", "simulated"),
                ("QUARRY_SIM_PLATFORM", "/plat"),
                ("QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY", "true"),
            ],
        ),
        (
            &["proxy"],
            &[
                ("EDG_MARBLE_TYPE", "web"),
                ("QUARRY_TEE", "tdx"),
                ("QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY", "true"),
            ],
        ),
        (
            &["activate", "--out", "/out"],
            &[
                ("EDG_MARBLE_TYPE", "web"),
                ("QUARRY_TEE", "snp"),
                ("QUARRY_COORDINATOR_POLICY", "/policy.json"),
            ],
        ),
    ];
    for (args, values) in configs {
        let mut argv = vec!["marble-sidecar"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).expect("command line must parse");
        Config::resolve(cli, answer(values)).expect("resolves");
    }
    let protected: BTreeSet<String> = PROTECTED_ENV.iter().map(|n| n.to_string()).collect();
    let read = read.into_inner();
    let unprotected: Vec<&String> = read.difference(&protected).collect();
    assert!(
        unprotected.is_empty(),
        "read but not in PROTECTED_ENV (decide, and add it there or to the loggers'): {unprotected:?}"
    );
    let unread: Vec<&String> = protected.difference(&read).collect();
    assert!(unread.is_empty(), "listed but never read: {unread:?}");
    // And with --settings-from-args nothing is read at all.
    let cli = Cli::try_parse_from(["marble-sidecar"].into_iter().chain({
        let mut a = from_args("run");
        a.extend_from_slice(&["--", "/bin/true"]);
        a
    }))
    .expect("command line must parse");
    let reads = RefCell::new(Vec::new());
    Config::resolve(cli, |name| {
        reads.borrow_mut().push(name.to_string());
        None
    })
    .expect("resolves");
    let reads = reads.into_inner();
    assert!(
        reads.iter().all(|n| PROTECTED_ENV.contains(&n.as_str()))
            && reads.len() == PROTECTED_ENV.len(),
        "only the presence check reads the environment: {reads:?}"
    );
}

use quarry_api::http::{KeyEncoding, Parameters, Segment};

use super::*;

fn key() -> MarbleKey {
    MarbleKey::generate(&uuid::Uuid::new_v4()).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

fn files(entries: &[(&str, &[u8])]) -> BTreeMap<String, Value> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), Value::data(v.to_vec())))
        .collect()
}

#[test]
fn files_are_written_0600_in_new_directories_0700() {
    let dir = tempfile::tempdir().unwrap();
    let abs = dir.path().join("etc/app/secret.pem");
    let key = key();
    let mut map = files(&[
        (abs.to_str().unwrap(), b"top secret"),
        ("rel/dir/config", b"cfg"),
    ]);
    map.insert(
        "keyfile".into(),
        Value(vec![
            Segment::Data(b"hex:".to_vec()),
            Segment::MarblePrivateKey(KeyEncoding::Hex),
        ]),
    );
    let written = write_files(&map, Some(dir.path()), &key).unwrap();
    assert_eq!(written.len(), 3);
    assert_eq!(std::fs::read(&abs).unwrap(), b"top secret");
    assert_eq!(mode(&abs), 0o600);
    assert_eq!(mode(&dir.path().join("etc")), 0o700);
    assert_eq!(mode(&dir.path().join("etc/app")), 0o700);
    let rel = dir.path().join("rel/dir/config");
    assert_eq!(std::fs::read(&rel).unwrap(), b"cfg");
    assert_eq!(mode(&rel), 0o600);
    assert_eq!(mode(&dir.path().join("rel/dir")), 0o700);
    let keyfile = std::fs::read_to_string(dir.path().join("keyfile")).unwrap();
    assert_eq!(keyfile, format!("hex:{}", hex::encode(key.pkcs8_der())));
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("etc/app"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("secret.pem")]);
}

#[test]
fn parent_dir_components_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    for bad in [
        "../escape",
        "a/../../escape",
        "/etc/../tmp/x",
        "a/..",
        "a\0b",
        "",
        "dir/",
    ] {
        let map = files(&[(good.to_str().unwrap(), b"x"), (bad, b"y")]);
        let err =
            write_files(&map, Some(dir.path()), &key()).expect_err("unsafe paths must be refused");
        assert!(
            matches!(&err, MaterialiseError::UnsafePath { path, .. } if path == bad),
            "{bad:?}: {err:?}"
        );
        assert!(
            !good.exists(),
            "nothing may be written when one path is refused"
        );
    }
    assert!(!dir.path().parent().unwrap().join("escape").exists());
}

#[test]
fn existing_loose_file_and_symlink_are_replaced_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let loose = dir.path().join("loose");
    std::fs::write(&loose, b"old").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"untouched").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();

    write_file(&loose, b"new", SECRET_FILE_MODE).unwrap();
    assert_eq!(std::fs::read(&loose).unwrap(), b"new");
    assert_eq!(mode(&loose), 0o600);
    write_file(&link, b"secret", SECRET_FILE_MODE).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    assert!(!std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&link).unwrap(), b"secret");
}

#[test]
fn private_key_variable_is_added_only_when_missing() {
    let key = key();
    let env = environment(&BTreeMap::new(), &key).unwrap();
    assert_eq!(env.len(), 1);
    assert_eq!(env[0].0, PRIVATE_KEY_VAR);
    assert_eq!(env[0].1.as_slice(), key.private_key_pem().as_bytes());

    let mut given = BTreeMap::new();
    given.insert(
        PRIVATE_KEY_VAR.to_string(),
        Value(vec![Segment::MarblePrivateKey(KeyEncoding::Pem)]),
    );
    given.insert("APP_MODE".to_string(), Value::data(b"prod".to_vec()));
    let env = environment(&given, &key).unwrap();
    assert_eq!(env.len(), 2);
    let names: Vec<_> = env.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["APP_MODE", PRIVATE_KEY_VAR]);
    assert_eq!(env[1].1.as_slice(), key.private_key_pem().as_bytes());
}

#[test]
fn unusable_environment_entries_are_refused_by_name() {
    let key = key();
    for (name, value, reason) in [
        ("A=B", &b"v"[..], "the name contains '=' or NUL"),
        ("", b"v", "empty name"),
        ("NUL_VALUE", b"a\0b", "the value contains NUL"),
    ] {
        let mut env = BTreeMap::new();
        env.insert(name.to_string(), Value::data(value.to_vec()));
        let err = environment(&env, &key).unwrap_err();
        assert!(
            matches!(&err, MaterialiseError::InvalidEnv { name: n, reason: r } if n == name && *r == reason),
            "{err:?}"
        );
        assert!(!err.to_string().contains("a\0b"));
    }
}

#[test]
fn env_file_quotes_values_so_a_shell_reads_them_back_exactly() {
    let tricky = "it's $HOME `id` \"q\" \\n\nsecond line '' end'";
    let env: Environment = vec![
        ("TRICKY".into(), Zeroizing::new(tricky.as_bytes().to_vec())),
        ("EMPTY".into(), Zeroizing::new(Vec::new())),
    ];
    let text = env_file(&env).unwrap();
    let text = std::str::from_utf8(&text).unwrap();
    assert!(text.starts_with("export TRICKY='it'\\''s $HOME"), "{text}");
    assert!(text.ends_with("export EMPTY=''\n"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#". "$1" && printf '%s|%s' "$TRICKY" "$EMPTY""#)
        .arg("sh")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{tricky}|"));
}

#[test]
fn env_file_refuses_names_a_shell_cannot_export() {
    for name in ["1ABC", "A-B", "A B", "a.b"] {
        let env: Environment = vec![(name.into(), Zeroizing::new(b"v".to_vec()))];
        let err = env_file(&env).unwrap_err();
        assert!(matches!(&err, MaterialiseError::InvalidEnv { name: n, .. } if n == name));
    }
}

#[test]
fn activation_dir_holds_env_certificates_key_and_argv() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let key = key();
    let mut env = BTreeMap::new();
    env.insert("GREETING".to_string(), Value::data(b"hello".to_vec()));
    let response = ActivateResponse {
        certificate_chain: "LEAF+MESH".into(),
        root_ca: "ROOT".into(),
        spiffe_id: "spiffe://quarry.local/marble/web/x".into(),
        parameters: Parameters {
            files: files(&[("conf/app.toml", b"x = 1")]),
            env,
            argv: vec!["app".into(), "--serve".into()],
        },
        simulation: true,
        mesh: None,
    };
    write_activation_dir(&out, &response, &key).unwrap();
    assert_eq!(mode(&out), 0o700);
    assert_eq!(std::fs::read(out.join("conf/app.toml")).unwrap(), b"x = 1");
    assert_eq!(mode(&out.join("conf/app.toml")), 0o600);
    let env_text = std::fs::read_to_string(out.join(ENV_FILE)).unwrap();
    assert!(env_text.contains("export GREETING='hello'\n"));
    assert!(env_text.contains("export MARBLE_PREDEFINED_PRIVATE_KEY='-----BEGIN PRIVATE KEY-----"));
    assert_eq!(mode(&out.join(ENV_FILE)), 0o600);
    assert_eq!(
        std::fs::read_to_string(out.join(CERT_FILE)).unwrap(),
        "LEAF+MESH"
    );
    assert_eq!(
        std::fs::read_to_string(out.join(ROOT_CA_FILE)).unwrap(),
        "ROOT"
    );
    assert_eq!(mode(&out.join(CERT_FILE)), 0o644);
    assert_eq!(
        std::fs::read_to_string(out.join(KEY_FILE)).unwrap(),
        key.private_key_pem().as_str()
    );
    assert_eq!(mode(&out.join(KEY_FILE)), 0o600);
    assert_eq!(
        std::fs::read_to_string(out.join(ARGV_FILE)).unwrap(),
        r#"["app","--serve"]"#
    );
}

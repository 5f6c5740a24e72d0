//! `examples/xfsc-ocm/manifest.json`: refused while its placeholders are in place (naming the
//! field), and accepted by the real manifest parser once they are replaced with valid values.
//! The substitutes are test material: `fixtures/ocm/` holds a throwaway operator certificate and
//! recovery public key (regenerate with `openssl req -x509 -newkey ec …` and `openssl genrsa`).
use serde_json::Value;

fn example() -> Value {
    let path = format!(
        "{}/../examples/xfsc-ocm/manifest.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("the example manifest is readable");
    serde_json::from_str(&text).expect("the example manifest is JSON")
}

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/ocm/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).expect("fixture readable")
}

/// Replace every `<replace …>` string with a valid value for its field.
fn substitute(value: &mut Value, key: &str) {
    match value {
        Value::String(s) if s.starts_with("<replace") => {
            *s = match key {
                "Measurement" => "ab".repeat(48),
                "HostData" => "cd".repeat(32),
                "Certificate" | "/quarry/run/operator.pem" => fixture("operator.crt.pem"),
                "ocm-recovery" => fixture("recovery-key.pub.pem"),
                other => panic!("no substitute for placeholder at {other}"),
            }
        }
        Value::Object(map) => map.iter_mut().for_each(|(k, v)| substitute(v, k)),
        Value::Array(items) => items.iter_mut().for_each(|v| substitute(v, key)),
        _ => {}
    }
}

#[test]
fn the_ocm_manifest_with_placeholders_is_refused_naming_the_field() {
    let bytes = serde_json::to_vec(&example()).expect("serialisable");
    let err = quarry_api::manifest::parse(&bytes).expect_err("placeholders must be refused");
    let text = err.to_string();
    assert!(
        text.starts_with('/') && text.contains(": placeholder"),
        "names the field: {text}"
    );
    assert!(text.contains("must be replaced"), "{text}");
}

#[test]
fn the_ocm_manifest_loads_once_placeholders_are_replaced() {
    let mut manifest = example();
    substitute(&mut manifest, "");
    let bytes = serde_json::to_vec(&manifest).expect("serialisable");
    let checked = match quarry_api::manifest::parse(&bytes) {
        Ok(c) => c,
        Err(e) => panic!("the OCM manifest is refused: {e}"),
    };
    let m = &checked.manifest;
    for t in [
        "issuance-service",
        "credential-retrieval-service",
        "credential-verification-service",
        "well-known-service",
        "pre-authorization-bridge",
        "dummycontentsigner",
        "storage-service",
        "status-list-service",
        "signer",
        "signer-crypto-engine",
        "sd-jwt-service",
        "didcomm-connector",
        "universal-resolver",
        "gateway",
        "nats",
        "cassandra",
        "postgres",
        "redis",
        "vault",
    ] {
        assert!(m.marbles.contains_key(t), "marble {t} missing");
    }
    assert!(
        checked.warnings.is_empty(),
        "warnings: {:?}",
        checked.warnings
    );
    // No shared superuser and no dev-mode token: every credential is generated or user-defined.
    for (name, spec) in &m.secrets {
        let user_defined = name.starts_with("vault_");
        assert_eq!(spec.user_defined, user_defined, "secret {name}");
    }
}

#[test]
fn every_mesh_edge_names_an_existing_marble_and_is_allowed_by_its_server() {
    let manifest = example();
    let marbles = manifest["Marbles"].as_object().expect("Marbles");
    let mut edges = 0;
    for (client, m) in marbles {
        for out in m["Mesh"]["Outbound"].as_array().into_iter().flatten() {
            let server = out["Marble"].as_str().expect("Marble");
            let target = marbles
                .get(server)
                .unwrap_or_else(|| panic!("{client} → unknown {server}"));
            let port: u16 = out["Address"]
                .as_str()
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
                .expect("Address HOST:PORT");
            let inbound = target["Mesh"]["Inbound"]
                .as_array()
                .and_then(|ins| ins.iter().find(|i| i["Port"] == port))
                .unwrap_or_else(|| panic!("{client} → {server}:{port}: no inbound on that port"));
            let allowed = inbound["AllowFrom"].as_array().expect("AllowFrom");
            assert!(
                allowed.iter().any(|a| a == client.as_str()),
                "{client} → {server} not allowed"
            );
            edges += 1;
        }
        for inbound in m["Mesh"]["Inbound"].as_array().into_iter().flatten() {
            let allowed = inbound["AllowFrom"]
                .as_array()
                .expect("AllowFrom is explicit");
            assert!(
                !allowed.is_empty(),
                "{client}: an empty AllowFrom admits every marble"
            );
            for peer in allowed.iter().filter_map(Value::as_str) {
                if peer == "*external*" {
                    assert_eq!(client, "gateway", "only the gateway faces external clients");
                    continue;
                }
                assert!(marbles.contains_key(peer), "{client} allows unknown {peer}");
                let calls = marbles[peer]["Mesh"]["Outbound"]
                    .as_array()
                    .is_some_and(|outs| outs.iter().any(|o| o["Marble"] == client.as_str()));
                assert!(
                    calls,
                    "{client} allows {peer}, which has no edge to it (allow lists stay minimal)"
                );
            }
        }
    }
    assert!(edges >= 39, "{edges} edges");
    assert!(
        marbles["storage-service"]["Mesh"].get("Inbound").is_none(),
        "storage-service's unauthenticated DIRECT API has no mesh port by default"
    );
}

/// A generated secret that two marbles both use (a server's password in its config, the same
/// password in a client's env) must be `Shared`: a private secret is derived per marble UUID,
/// so server and client would get different values and every new pod another one.
#[test]
fn every_generated_secret_used_by_two_marbles_is_shared() {
    let manifest = example();
    let secrets = manifest["Secrets"].as_object().expect("Secrets");
    let marbles = manifest["Marbles"].as_object().expect("Marbles");
    let mut checked = 0;
    for (name, spec) in secrets {
        if spec["UserDefined"] == true {
            continue;
        }
        let reference = format!(".Secrets.{name} ");
        let reference_end = format!(".Secrets.{name}}}");
        let users: Vec<&String> = marbles
            .iter()
            .filter(|(_, m)| {
                let params = m["Parameters"].to_string();
                params.contains(&reference) || params.contains(&reference_end)
            })
            .map(|(t, _)| t)
            .collect();
        if users.len() >= 2 {
            assert_eq!(
                spec["Shared"], true,
                "secret {name} is used by {users:?} but not Shared: each would get its own value"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} secrets are used by two marbles"
    );
}

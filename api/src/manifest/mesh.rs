//! `Marbles.<type>.Mesh`: the sidecar proxies of a marble (contract §5, §9). Conversion checks
//! types, addresses and port clashes; [`check`] checks references to the rest of the manifest.
//! Peers are identified by the SPIFFE ID in their certificate, never by address.
use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;

use super::error::{ManifestError, Ptr, Warning};
use super::fields::Obj;
use super::model::Manifest;

/// The `AllowFrom` entry that admits external TLS clients without client certificates.
pub const EXTERNAL_CLIENTS: &str = "*external*";

/// `Marbles.<type>.Mesh`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mesh {
    /// Mesh ports this marble's sidecar serves (mTLS in, plaintext to the service).
    pub inbound: Vec<MeshInbound>,
    /// Loopback ports this marble's service connects to (plaintext in, mTLS to a marble).
    pub outbound: Vec<MeshOutbound>,
}

/// `Mesh.Inbound[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshInbound {
    /// Port the sidecar listens on (all interfaces).
    pub port: u16,
    /// Where accepted connections go, in plaintext.
    pub forward: SocketAddr,
    /// Who may connect.
    pub allow: AllowFrom,
}

/// Who may connect to an inbound port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowFrom {
    /// `AllowFrom` empty or absent: any marble of this deployment.
    AnyMarble,
    /// Marbles of these types only.
    Marbles(Vec<String>),
    /// `["*external*"]`: TLS clients without client certificates, served with a certificate
    /// secret.
    External {
        /// Name of the certificate secret (`Cert`).
        cert: String,
    },
}

/// `Mesh.Outbound[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshOutbound {
    /// Loopback address the sidecar listens on.
    pub listen: SocketAddr,
    /// Marble type the server must be.
    pub marble: String,
    /// `host:port` of the server's mesh port.
    pub address: String,
}

/// Converts `Mesh` (already an object or null) at `ptr`.
pub(super) fn convert(value: &Value, ptr: Ptr) -> Result<Mesh, ManifestError> {
    let o = Obj::new(value, ptr)?;
    let mut mesh = Mesh::default();
    // Port number -> pointer of the entry that binds it first.
    let mut bound: BTreeMap<u16, Ptr> = BTreeMap::new();
    for (i, v) in array(&o, "Inbound")?.iter().enumerate() {
        let at = o.at("Inbound").join(i);
        let entry = inbound(v, at.clone())?;
        claim_port(&mut bound, entry.port, at.join("Port"))?;
        mesh.inbound.push(entry);
    }
    for (i, v) in array(&o, "Outbound")?.iter().enumerate() {
        let at = o.at("Outbound").join(i);
        let entry = outbound(v, at.clone())?;
        claim_port(&mut bound, entry.listen.port(), at.join("Listen"))?;
        mesh.outbound.push(entry);
    }
    Ok(mesh)
}

/// Checks the references of `marble_type`'s mesh: marble types and the `Cert` secret exist.
pub(super) fn check(
    m: &Manifest,
    mesh: &Mesh,
    ptr: &Ptr,
    warnings: &mut Vec<Warning>,
) -> Result<(), ManifestError> {
    for (i, entry) in mesh.inbound.iter().enumerate() {
        let at = ptr.join("Inbound").join(i);
        match &entry.allow {
            AllowFrom::AnyMarble => {}
            AllowFrom::Marbles(types) => super::validate::check_defined(
                types,
                &m.marbles,
                &at.join("AllowFrom"),
                "marble type",
                "Marbles",
            )?,
            AllowFrom::External { cert } => {
                super::validate::check_cert_secret(m, cert, &at.join("Cert"))?;
            }
        }
        if !entry.forward.ip().is_loopback() {
            warnings.push(at.join("Forward").warn(
                "forwards plaintext to a non-loopback address; the traffic leaves the sidecar unprotected",
            ));
        }
    }
    for (i, entry) in mesh.outbound.iter().enumerate() {
        let at = ptr.join("Outbound").join(i).join("Marble");
        let Some(target) = m.marbles.get(&entry.marble) else {
            return Err(at.err(format!(
                "marble type {:?} is not defined in Marbles",
                entry.marble
            )));
        };
        if target.mesh.as_ref().is_none_or(|t| t.inbound.is_empty()) {
            warnings.push(at.warn(format!(
                "marble type {:?} has no Mesh Inbound port; its sidecar will not accept this connection",
                entry.marble
            )));
        }
    }
    Ok(())
}

fn array<'v>(o: &Obj<'v>, key: &str) -> Result<&'v [Value], ManifestError> {
    match o.get(key) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(o.at(key).err("must be an array")),
    }
}

fn claim_port(bound: &mut BTreeMap<u16, Ptr>, port: u16, at: Ptr) -> Result<(), ManifestError> {
    if let Some(first) = bound.get(&port) {
        return Err(at.err(format!(
            "port {port} is already used by {} of this marble",
            first.as_str()
        )));
    }
    bound.insert(port, at);
    Ok(())
}

fn inbound(value: &Value, ptr: Ptr) -> Result<MeshInbound, ManifestError> {
    let o = Obj::new(value, ptr)?;
    let port = port_field(&o, "Port")?.ok_or_else(|| o.at("Port").err("Port is required"))?;
    let forward_text = o
        .nonempty_str("Forward")?
        .ok_or_else(|| o.at("Forward").err("Forward is required"))?;
    let forward = socket_addr(forward_text).map_err(|m| o.at("Forward").err(m))?;
    let types = o.strings("AllowFrom")?;
    let cert = o.nonempty_str("Cert")?;
    let external = types.iter().position(|t| t == EXTERNAL_CLIENTS);
    let allow = match (external, cert) {
        (Some(_), Some(cert)) if types.len() == 1 => AllowFrom::External {
            cert: cert.to_string(),
        },
        (Some(i), Some(_)) => {
            return Err(o.at("AllowFrom").join(i).err(format!(
                "{EXTERNAL_CLIENTS} must be the only entry of AllowFrom (external clients and marbles need separate ports)"
            )))
        }
        (Some(i), None) => {
            return Err(o.at("AllowFrom").join(i).err(format!(
                "{EXTERNAL_CLIENTS} needs a Cert: the certificate secret served to external clients"
            )))
        }
        (None, Some(_)) => {
            return Err(o.at("Cert").err(format!(
                "Cert is only used with AllowFrom [\"{EXTERNAL_CLIENTS}\"]; marbles are served the marble certificate"
            )))
        }
        (None, None) if types.is_empty() => AllowFrom::AnyMarble,
        (None, None) => {
            for (i, t) in types.iter().enumerate() {
                if t.is_empty() || t.contains('/') {
                    return Err(o
                        .at("AllowFrom")
                        .join(i)
                        .err(format!("{t:?} is not a marble type")));
                }
                if types[..i].contains(t) {
                    return Err(o
                        .at("AllowFrom")
                        .join(i)
                        .err(format!("marble type {t:?} is listed twice")));
                }
            }
            AllowFrom::Marbles(types)
        }
    };
    Ok(MeshInbound {
        port,
        forward,
        allow,
    })
}

fn outbound(value: &Value, ptr: Ptr) -> Result<MeshOutbound, ManifestError> {
    let o = Obj::new(value, ptr)?;
    let listen_text = o
        .nonempty_str("Listen")?
        .ok_or_else(|| o.at("Listen").err("Listen is required"))?;
    let listen = socket_addr(listen_text).map_err(|m| o.at("Listen").err(m))?;
    if !listen.ip().is_loopback() {
        return Err(o.at("Listen").err(format!(
            "{listen} is not a loopback address: egress ports accept plaintext and must only be reachable from inside the pod (use 127.0.0.1:PORT)"
        )));
    }
    let marble = o
        .nonempty_str("Marble")?
        .ok_or_else(|| o.at("Marble").err("Marble is required"))?
        .to_string();
    let address = o
        .nonempty_str("Address")?
        .ok_or_else(|| o.at("Address").err("Address is required"))?;
    check_host_port(address).map_err(|m| o.at("Address").err(m))?;
    Ok(MeshOutbound {
        listen,
        marble,
        address: address.to_string(),
    })
}

/// A port given as a number or a decimal string (as MarbleRun's TLS tags), 1–65535.
fn port_field(o: &Obj<'_>, key: &str) -> Result<Option<u16>, ManifestError> {
    let bad = || o.at(key).err("must be a port number from 1 to 65535");
    let n = match o.get(key) {
        None => return Ok(None),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(bad)?,
        Some(Value::String(s)) => s.trim().parse::<u64>().map_err(|_| bad())?,
        Some(_) => return Err(bad()),
    };
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(Some(p)),
        _ => Err(bad()),
    }
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IP:PORT address such as 127.0.0.1:8080"))?;
    if addr.port() == 0 {
        return Err(format!("{text:?} has port 0"));
    }
    Ok(addr)
}

/// `host:port` with a DNS name, an IPv4 address or a bracketed IPv6 address, port 1–65535.
pub(crate) fn check_host_port(text: &str) -> Result<(), String> {
    let bad = || format!("{text:?} is not HOST:PORT (e.g. nats.ocm.svc:14222 or [::1]:14222)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(bad()),
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| bad());
    }
    let dns_ok = !host.is_empty() && host.len() <= 253 && host.split('.').all(is_dns_label);
    if dns_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// One label of a DNS name: 1–63 letters, digits, `-` or `_`, not starting or ending in `-`.
pub(super) fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::{parse, CheckedManifest, ManifestError};
    use super::*;

    const UID: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn base() -> Value {
        json!({
            "Packages": {"pkg": {"UniqueID": UID}},
            "Marbles": {
                "server": {"Package": "pkg", "Mesh": {
                    "Inbound": [{"Port": 18080, "Forward": "127.0.0.1:8080", "AllowFrom": ["app"]}]
                }},
                "app": {"Package": "pkg", "Mesh": {
                    "Outbound": [{"Listen": "127.0.0.1:7001", "Marble": "server", "Address": "server.ocm.svc:18080"}]
                }},
                "intruder": {"Package": "pkg"}
            },
            "Secrets": {"web_cert": {"Type": "cert-ecdsa", "Size": 256}}
        })
    }

    /// `base()` with the existing `/Marbles/{marble}/Mesh{field}` set to `value`.
    fn base_with(marble: &str, field: &str, value: Value) -> Value {
        let mut v = base();
        *v.pointer_mut(&format!("/Marbles/{marble}/Mesh{field}"))
            .expect("an existing field") = value;
        v
    }

    fn load(v: &Value) -> Result<CheckedManifest, ManifestError> {
        parse(&serde_json::to_vec(v).expect("serialise"))
    }

    #[track_caller]
    fn assert_refused(v: &Value, path: &str, needle: &str) {
        let err = load(v).expect_err("must be refused");
        assert_eq!(err.path, path, "{err}");
        assert!(
            err.message.contains(needle),
            "{err:?} must mention {needle:?}"
        );
    }

    #[test]
    fn mesh_section_becomes_typed_entries() {
        let m = load(&base()).expect("loads").manifest;
        let server = m.marbles["server"].mesh.as_ref().expect("mesh");
        assert_eq!(
            server.inbound,
            vec![MeshInbound {
                port: 18080,
                forward: "127.0.0.1:8080".parse().expect("addr"),
                allow: AllowFrom::Marbles(vec!["app".into()]),
            }]
        );
        let app = m.marbles["app"].mesh.as_ref().expect("mesh");
        assert_eq!(app.outbound[0].listen.port(), 7001);
        assert_eq!(app.outbound[0].marble, "server");
        assert!(m.marbles["intruder"].mesh.is_none());
    }

    #[test]
    fn empty_allow_from_means_any_marble_and_external_needs_a_cert_secret() {
        let mut v = base();
        v["Marbles"]["server"]["Mesh"]["Inbound"][0]["AllowFrom"] = json!([]);
        v["Marbles"]["server"]["Mesh"]["Inbound"][0]["Port"] = json!("18080");
        let m = load(&v).expect("loads").manifest;
        let inbound = &m.marbles["server"].mesh.as_ref().expect("mesh").inbound[0];
        assert_eq!(inbound.allow, AllowFrom::AnyMarble);
        assert_eq!(inbound.port, 18080);

        let mut v = base();
        v["Marbles"]["server"]["Mesh"]["Inbound"][0]["AllowFrom"] = json!([EXTERNAL_CLIENTS]);
        v["Marbles"]["server"]["Mesh"]["Inbound"][0]["Cert"] = json!("web_cert");
        let m = load(&v).expect("loads").manifest;
        assert_eq!(
            m.marbles["server"].mesh.as_ref().expect("mesh").inbound[0].allow,
            AllowFrom::External {
                cert: "web_cert".into()
            }
        );
    }

    #[test]
    fn unknown_marble_types_are_refused() {
        assert_refused(
            &base_with("server", "/Inbound/0/AllowFrom", json!(["app", "gateway"])),
            "/Marbles/server/Mesh/Inbound/0/AllowFrom/1",
            "\"gateway\" is not defined",
        );
        assert_refused(
            &base_with("app", "/Outbound/0/Marble", json!("nats")),
            "/Marbles/app/Mesh/Outbound/0/Marble",
            "\"nats\" is not defined",
        );
    }

    #[test]
    fn ports_must_be_unique_per_marble() {
        let mut v = base();
        v["Marbles"]["server"]["Mesh"]["Inbound"]
            .as_array_mut()
            .expect("array")
            .push(json!({"Port": 18080, "Forward": "127.0.0.1:9090"}));
        assert_refused(
            &v,
            "/Marbles/server/Mesh/Inbound/1/Port",
            "port 18080 is already used by /Marbles/server/Mesh/Inbound/0/Port",
        );
        let mut v = base();
        v["Marbles"]["server"]["Mesh"]["Outbound"] =
            json!([{"Listen": "127.0.0.1:18080", "Marble": "app", "Address": "app:1"}]);
        assert_refused(&v, "/Marbles/server/Mesh/Outbound/0/Listen", "already used");
        // The same port on two different marbles is fine (they run in different pods).
        let mut v = base();
        v["Marbles"]["app"]["Mesh"]["Inbound"] =
            json!([{"Port": 18080, "Forward": "127.0.0.1:8080"}]);
        load(&v).expect("ports are per marble");
    }

    #[test]
    fn egress_listeners_must_be_loopback() {
        for bad in ["0.0.0.0:7001", "10.0.0.5:7001", "[::]:7001"] {
            assert_refused(
                &base_with("app", "/Outbound/0/Listen", json!(bad)),
                "/Marbles/app/Mesh/Outbound/0/Listen",
                "not a loopback address",
            );
        }
        load(&base_with("app", "/Outbound/0/Listen", json!("[::1]:7001")))
            .expect("IPv6 loopback is loopback");
    }

    #[test]
    fn addresses_and_ports_must_parse() {
        let cases = [
            ("/Inbound/0/Port", "server", json!(0), "1 to 65535"),
            ("/Inbound/0/Port", "server", json!(70000), "1 to 65535"),
            ("/Inbound/0/Port", "server", json!("http"), "1 to 65535"),
            (
                "/Inbound/0/Forward",
                "server",
                json!("localhost:8080"),
                "IP:PORT",
            ),
            (
                "/Inbound/0/Forward",
                "server",
                json!("127.0.0.1:0"),
                "port 0",
            ),
            (
                "/Outbound/0/Address",
                "app",
                json!("server.ocm.svc"),
                "HOST:PORT",
            ),
            (
                "/Outbound/0/Address",
                "app",
                json!("bad host:1"),
                "HOST:PORT",
            ),
            ("/Outbound/0/Address", "app", json!("[zz]:1"), "HOST:PORT"),
            ("/Outbound/0/Listen", "app", json!("127.0.0.1"), "IP:PORT"),
        ];
        for (field, marble, value, needle) in cases {
            let v = base_with(marble, field, value);
            assert_refused(&v, &format!("/Marbles/{marble}/Mesh{field}"), needle);
        }
        for ok in ["nats:4222", "10.1.2.3:14222", "[::1]:14222"] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn missing_fields_are_named() {
        let mut v = base();
        v["Marbles"]["server"]["Mesh"]["Inbound"][0] = json!({"Forward": "127.0.0.1:1"});
        assert_refused(&v, "/Marbles/server/Mesh/Inbound/0/Port", "required");
        let mut v = base();
        v["Marbles"]["server"]["Mesh"]["Inbound"][0] = json!({"Port": 1});
        assert_refused(&v, "/Marbles/server/Mesh/Inbound/0/Forward", "required");
        let mut v = base();
        v["Marbles"]["app"]["Mesh"]["Outbound"][0] =
            json!({"Listen": "127.0.0.1:1", "Marble": "server"});
        assert_refused(&v, "/Marbles/app/Mesh/Outbound/0/Address", "required");
    }

    #[test]
    fn external_clients_need_a_certificate_secret_and_a_port_of_their_own() {
        let set = |allow: Value, cert: Option<&str>| {
            let mut v = base();
            v["Marbles"]["server"]["Mesh"]["Inbound"][0]["AllowFrom"] = allow;
            if let Some(c) = cert {
                v["Marbles"]["server"]["Mesh"]["Inbound"][0]["Cert"] = json!(c);
            }
            v
        };
        let at = "/Marbles/server/Mesh/Inbound/0";
        assert_refused(
            &set(json!([EXTERNAL_CLIENTS]), None),
            &format!("{at}/AllowFrom/0"),
            "needs a Cert",
        );
        assert_refused(
            &set(json!(["app", EXTERNAL_CLIENTS]), Some("web_cert")),
            &format!("{at}/AllowFrom/1"),
            "only entry",
        );
        assert_refused(
            &set(json!(["app"]), Some("web_cert")),
            &format!("{at}/Cert"),
            "only used with",
        );
        assert_refused(
            &set(json!([EXTERNAL_CLIENTS]), Some("nope")),
            &format!("{at}/Cert"),
            "not defined in Secrets",
        );
        let mut v = set(json!([EXTERNAL_CLIENTS]), Some("web_cert"));
        v["Secrets"]["web_cert"] = json!({"Type": "symmetric-key", "Size": 128});
        assert_refused(&v, &format!("{at}/Cert"), "not a certificate");
        assert_refused(
            &set(json!(["app", "app"]), None),
            &format!("{at}/AllowFrom/1"),
            "listed twice",
        );
    }

    #[test]
    fn outbound_to_a_marble_without_inbound_ports_warns() {
        let mut v = base();
        v["Marbles"]["app"]["Mesh"]["Outbound"][0]["Marble"] = json!("intruder");
        let checked = load(&v).expect("loads");
        assert!(
            checked
                .warnings
                .iter()
                .any(|w| w.path == "/Marbles/app/Mesh/Outbound/0/Marble"),
            "{:?}",
            checked.warnings
        );
    }

    #[test]
    fn mesh_must_be_an_object_with_arrays() {
        let mut v = base();
        v["Marbles"]["server"]["Mesh"] = json!([]);
        assert!(load(&v).is_err());
        let mut v = base();
        v["Marbles"]["server"]["Mesh"]["Inbound"] = json!({"Port": 1});
        assert!(load(&v)
            .expect_err("refused")
            .path
            .starts_with("/Marbles/server/Mesh/Inbound"));
    }
}

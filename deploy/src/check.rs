//! The properties a rendered Gramine manifest must have, checked on the parsed TOML.
use std::collections::BTreeMap;

use toml::{Table, Value};

/// Libraries that Gramine's own patched glibc provides under its runtime directory (mounted
/// at `/lib`); every other library a binary needs must be a trusted file of its own.
const GRAMINE_GLIBC: &[&str] = &[
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libutil.so.1",
    "libresolv.so.2",
    "libnss_dns.so.2",
    "libnss_files.so.2",
];

/// What a given template must provide beyond the properties common to all of them.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// The debug variant (`sgx.debug = true`, `insecure__` options allowed) or production.
    pub debug: bool,
    /// Value `loader.env.QUARRY_TEE` must have.
    pub tee: &'a str,
    /// In-enclave directory that must be an encrypted mount.
    pub data_path: &'a str,
    /// The `key_name` that mount must use.
    pub data_key: &'a str,
    /// In-enclave files that must be trusted besides the entrypoint and argv paths.
    pub trusted_paths: &'a [&'a str],
    /// Environment variables the host may pass through; any other passthrough is a problem.
    pub passthrough_allowed: &'a [&'a str],
    /// Shared libraries (file names, from `ldd`) the binaries need.
    pub libraries: &'a [String],
    /// Smallest acceptable `sgx.enclave_size`, bytes.
    pub min_enclave_size: u64,
    /// Smallest acceptable `sgx.max_threads`.
    pub min_threads: u64,
}

/// One property the manifest lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// An `insecure__` option in a production manifest.
    InsecureOption {
        /// Dotted key.
        key: String,
    },
    /// `sgx.debug` is not what the variant requires.
    DebugFlag {
        /// The value the variant requires.
        expected: bool,
        /// The manifest's value (`None`: absent).
        actual: Option<bool>,
    },
    /// `sgx.remote_attestation` is not `"dcap"`.
    RemoteAttestation {
        /// The manifest's value.
        actual: Option<String>,
    },
    /// A production manifest relaxes `sgx.file_check_policy`.
    FileCheckPolicy {
        /// The manifest's value.
        actual: String,
    },
    /// A production manifest logs more than errors (Gramine: may leak data).
    LogLevel {
        /// The manifest's value.
        actual: String,
    },
    /// A required key is absent.
    Missing {
        /// Dotted key.
        key: String,
    },
    /// An in-enclave file that must be measured is not covered by `sgx.trusted_files`.
    NotTrusted {
        /// In-enclave path (or PAL URI for the loader).
        path: String,
        /// The host URI it resolves to (`None`: no mount covers it).
        uri: Option<String>,
    },
    /// A needed shared library is not a trusted file.
    LibraryNotTrusted {
        /// Library file name.
        library: String,
    },
    /// The data directory is not an encrypted mount.
    DataNotEncrypted {
        /// In-enclave path.
        path: String,
        /// Type of the mount covering it (`None`: no mount).
        actual: Option<String>,
    },
    /// The data mount uses another sealing key.
    SealingKey {
        /// In-enclave path.
        path: String,
        /// Required key name.
        expected: String,
        /// The mount's key name.
        actual: Option<String>,
    },
    /// An allowed (unprotected) file overlaps a trusted or encrypted one.
    AllowedOverlap {
        /// The allowed URI.
        allowed: String,
        /// The protected URI it overlaps.
        protected: String,
    },
    /// An environment variable that must be fixed has another value or is passed through.
    Env {
        /// Variable name.
        name: String,
        /// Required value.
        expected: String,
        /// The manifest's value, rendered (`None`: absent).
        actual: Option<String>,
    },
    /// The host may set a variable that is not on the allow-list.
    Passthrough {
        /// Variable name.
        name: String,
    },
    /// `sgx.enclave_size` is too small, not a power of two, or unparsable.
    EnclaveSize {
        /// The manifest's value.
        actual: String,
        /// Required minimum, bytes.
        minimum: u64,
    },
    /// `sgx.max_threads` is too small.
    Threads {
        /// The manifest's value.
        actual: i64,
        /// Required minimum.
        minimum: u64,
    },
}

/// Every property of `expect` and of all Quarry enclaves that `doc` lacks (empty: all hold).
pub fn check(doc: &Table, expect: &Expect<'_>) -> Vec<Problem> {
    let flat = flatten(doc);
    let mut problems = Vec::new();
    let get_str = |key: &str| flat.get(key).and_then(Value::as_str).map(str::to_string);

    if !expect.debug {
        problems.extend(
            flat.keys()
                .filter(|k| k.split('.').any(|part| part.starts_with("insecure__")))
                .map(|k| Problem::InsecureOption { key: k.clone() }),
        );
        if let Some(p) = get_str("sgx.file_check_policy").filter(|p| p != "strict") {
            problems.push(Problem::FileCheckPolicy { actual: p });
        }
        if let Some(l) = get_str("loader.log_level").filter(|l| l != "error" && l != "none") {
            problems.push(Problem::LogLevel { actual: l });
        }
        if !flat.contains_key("loader.argv") {
            problems.push(Problem::Missing {
                key: "loader.argv".into(),
            });
        }
    }
    let debug = flat.get("sgx.debug").and_then(Value::as_bool);
    if debug != Some(expect.debug) {
        problems.push(Problem::DebugFlag {
            expected: expect.debug,
            actual: debug,
        });
    }
    let ra = get_str("sgx.remote_attestation");
    if ra.as_deref() != Some("dcap") {
        problems.push(Problem::RemoteAttestation { actual: ra });
    }

    let mounts = mounts(doc);
    let trusted = trusted_uris(doc);
    let is_trusted = |uri: &str| {
        trusted
            .iter()
            .any(|t| t == uri || (t.ends_with('/') && uri.starts_with(t.as_str())))
    };
    let mut must_trust: Vec<String> = Vec::new();
    match get_str("libos.entrypoint") {
        Some(e) => must_trust.push(e),
        None => problems.push(Problem::Missing {
            key: "libos.entrypoint".into(),
        }),
    }
    if let Some(argv) = flat.get("loader.argv").and_then(Value::as_array) {
        must_trust.extend(
            argv.iter()
                .filter_map(Value::as_str)
                .filter(|a| a.starts_with('/'))
                .map(str::to_string),
        );
    }
    must_trust.extend(expect.trusted_paths.iter().map(|p| p.to_string()));
    let mut seen = std::collections::BTreeSet::new();
    must_trust.retain(|p| seen.insert(p.clone()));
    for path in must_trust {
        let uri = resolve(&mounts, &path)
            .filter(|(m, _)| m.kind == "chroot")
            .map(|(_, u)| u);
        if !uri.as_deref().is_some_and(is_trusted) {
            problems.push(Problem::NotTrusted { path, uri });
        }
    }
    match get_str("loader.entrypoint") {
        Some(l) if is_trusted(&l) => {}
        Some(l) => problems.push(Problem::NotTrusted { path: l, uri: None }),
        None => problems.push(Problem::Missing {
            key: "loader.entrypoint".into(),
        }),
    }

    let runtime_uri = mounts
        .iter()
        .find(|m| m.path == "/lib")
        .map(|m| m.uri.clone());
    let lib_dirs: Vec<String> = get_str("loader.env.LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    for lib in expect.libraries {
        let ok = lib_dirs.iter().any(|dir| {
            let Some((m, uri)) = resolve(&mounts, &format!("{dir}/{lib}")) else {
                return false;
            };
            let from_runtime = runtime_uri.as_deref() == Some(m.uri.as_str());
            if from_runtime != GRAMINE_GLIBC.contains(&lib.as_str()) {
                return false;
            }
            if from_runtime {
                is_trusted(&uri)
            } else {
                trusted.contains(&uri)
            }
        });
        if !ok {
            problems.push(Problem::LibraryNotTrusted {
                library: lib.clone(),
            });
        }
    }

    match resolve(&mounts, expect.data_path) {
        Some((m, _)) if m.kind == "encrypted" && m.path == expect.data_path => {
            if m.key_name.as_deref() != Some(expect.data_key) {
                problems.push(Problem::SealingKey {
                    path: expect.data_path.into(),
                    expected: expect.data_key.into(),
                    actual: m.key_name.clone(),
                });
            }
        }
        other => problems.push(Problem::DataNotEncrypted {
            path: expect.data_path.into(),
            actual: other.map(|(m, _)| m.kind.clone()),
        }),
    }

    let protected: Vec<String> = trusted
        .iter()
        .cloned()
        .chain(
            mounts
                .iter()
                .filter(|m| m.kind == "encrypted")
                .map(|m| m.uri.clone()),
        )
        .collect();
    for allowed in allowed_uris(doc) {
        for p in &protected {
            let dir = |s: &str| format!("{}/", s.trim_end_matches('/'));
            if p.starts_with(&dir(&allowed)) || allowed.starts_with(&dir(p)) || *p == allowed {
                problems.push(Problem::AllowedOverlap {
                    allowed: allowed.clone(),
                    protected: p.clone(),
                });
            }
        }
    }

    let env = nested(doc, "loader", "env")
        .and_then(Value::as_table)
        .cloned()
        .unwrap_or_default();
    let tee = env.get("QUARRY_TEE").and_then(Value::as_str);
    if tee != Some(expect.tee) {
        problems.push(Problem::Env {
            name: "QUARRY_TEE".into(),
            expected: expect.tee.into(),
            actual: env.get("QUARRY_TEE").map(|v| v.to_string()),
        });
    }
    for (name, value) in &env {
        let passthrough = value
            .get("passthrough")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if passthrough && !expect.passthrough_allowed.contains(&name.as_str()) {
            problems.push(Problem::Passthrough { name: name.clone() });
        }
    }
    if flat.contains_key("loader.env_src_file") {
        problems.push(Problem::Passthrough {
            name: "loader.env_src_file".into(),
        });
    }

    let size = get_str("sgx.enclave_size").unwrap_or_default();
    match parse_size(&size) {
        Some(n) if n.is_power_of_two() && n >= expect.min_enclave_size => {}
        _ => problems.push(Problem::EnclaveSize {
            actual: size,
            minimum: expect.min_enclave_size,
        }),
    }
    let threads = flat
        .get("sgx.max_threads")
        .and_then(Value::as_integer)
        .unwrap_or(0);
    if u64::try_from(threads).map_or(true, |t| t < expect.min_threads) {
        problems.push(Problem::Threads {
            actual: threads,
            minimum: expect.min_threads,
        });
    }
    problems
}

/// Every leaf of `doc` under its dotted key; arrays are leaves.
pub fn flatten(doc: &Table) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, table: &Table, out: &mut BTreeMap<String, Value>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Table(t) => walk(&key, t, out),
                other => {
                    out.insert(key, other.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", doc, &mut out);
    out
}

/// One entry of `fs.mounts`.
#[derive(Debug, Clone)]
struct Mount {
    kind: String,
    path: String,
    uri: String,
    key_name: Option<String>,
}

fn mounts(doc: &Table) -> Vec<Mount> {
    let list = nested(doc, "fs", "mounts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    list.iter()
        .filter_map(|m| {
            let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
            Some(Mount {
                kind: s("type").unwrap_or_else(|| "chroot".into()),
                path: s("path")?,
                uri: s("uri").unwrap_or_default(),
                key_name: s("key_name"),
            })
        })
        .collect()
}

/// The mount that serves `path` (the longest matching mount path) and the host URI of `path`.
fn resolve<'m>(mounts: &'m [Mount], path: &str) -> Option<(&'m Mount, String)> {
    mounts
        .iter()
        .filter(|m| {
            let base = m.path.trim_end_matches('/');
            path == base || path.starts_with(&format!("{base}/"))
        })
        .max_by_key(|m| m.path.len())
        .map(|m| {
            let rest = &path[m.path.trim_end_matches('/').len()..];
            (m, format!("{}{rest}", m.uri.trim_end_matches('/')))
        })
}

/// `doc[section][key]`, when both exist.
fn nested<'d>(doc: &'d Table, section: &str, key: &str) -> Option<&'d Value> {
    doc.get(section).and_then(|s| s.get(key))
}

fn uri_list(doc: &Table, key: &str) -> Vec<String> {
    nested(doc, "sgx", key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Table(t) => t.get("uri").and_then(Value::as_str).map(str::to_string),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn trusted_uris(doc: &Table) -> Vec<String> {
    uri_list(doc, "trusted_files")
}

fn allowed_uris(doc: &Table) -> Vec<String> {
    uri_list(doc, "allowed_files")
}

/// Gramine sizes: a number with an optional K, M or G suffix (powers of 1024).
fn parse_size(s: &str) -> Option<u64> {
    let (digits, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

//! The coordinator's modules import each other one way (docs/ARCHITECTURE.md, "Imports go
//! one way"): this test reads the sources, builds the module graph from the paths they name
//! (`crate::…`, `super::…`, declared child modules, `pub use` re-exports followed to the
//! module that defines the item) and fails on any import circle but the one pair the
//! architecture names. A new circle is a design change to make on purpose, not by accident.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Circles the architecture accepts: the file store's log and its rollback evidence share
/// one writer.
const ACCEPTED: &[&[&str]] = &[&["store::file", "store::head"]];

/// Module path (`state::startup`) → file, for every non-test source file of the library.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("reads the source folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).expect("below src");
            let rel = rel.to_string_lossy().replace('\\', "/");
            let Some(stem) = rel.strip_suffix(".rs") else {
                continue;
            };
            if stem.ends_with("tests") || stem == "lib" || stem == "main" {
                continue;
            }
            let module = stem.strip_suffix("/mod").unwrap_or(stem).replace('/', "::");
            out.insert(module, path);
        }
    }
    out
}

/// The code of a file without its test module and without comment lines.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("reads a source file");
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths that follow `prefix` in `code`, with one `{a, b::c}` group expanded.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        // `x::crate::` is no path of ours; `self::child::` is.
        let before = rest[..at].strip_suffix("self::").unwrap_or(&rest[..at]);
        let preceded_by_ident = before
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        rest = &rest[at + prefix.len()..];
        if preceded_by_ident {
            continue;
        }
        let head: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let after = &rest[head.len()..];
        if after.starts_with('{') {
            let group = &after[1..after.find('}').unwrap_or(after.len())];
            for item in group.split(',') {
                let item: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                if !item.is_empty() && item != "self" {
                    out.push(format!("{head}{item}"));
                }
            }
            if head.is_empty() {
                continue;
            }
        }
        out.push(head.trim_end_matches(':').to_string());
    }
    out
}

/// The module a `pub use child::…Name…;` of `module` re-exports `name` from, if any.
fn reexporter(codes: &BTreeMap<String, String>, module: &str, name: &str) -> Option<String> {
    let code = codes.get(module)?;
    code.split("pub use ").skip(1).find_map(|stmt| {
        let stmt = stmt.split(';').next()?;
        let stmt = stmt.strip_prefix("self::").unwrap_or(stmt);
        let (child, items) = stmt.split_once("::")?;
        let names_it = items
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == name);
        let target = format!("{module}::{child}");
        (names_it && codes.contains_key(&target)).then_some(target)
    })
}

/// The module graph: module → the modules its code names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = modules(src);
    let codes: BTreeMap<String, String> = files.iter().map(|(m, p)| (m.clone(), code(p))).collect();
    let mut edges = BTreeMap::new();
    for (module, code) in &codes {
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        let within = |p: &str| {
            if parent.is_empty() {
                p.to_string()
            } else {
                format!("{parent}::{p}")
            }
        };
        let mut named: Vec<String> = paths_after(code, "crate::");
        named.extend(paths_after(code, "super::").iter().map(|p| within(p)));
        for line in code.lines() {
            let line = line.trim_start();
            let decl = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
                .or_else(|| line.strip_prefix("mod "));
            if let Some(child) = decl.and_then(|d| d.strip_suffix(';')) {
                for p in paths_after(code, &format!("{child}::")) {
                    named.push(format!("{module}::{child}::{p}"));
                }
            }
        }
        let mut to = BTreeSet::new();
        for path in named {
            let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
            for len in (1..=parts.len()).rev() {
                let candidate = parts[..len].join("::");
                if !codes.contains_key(&candidate) {
                    continue;
                }
                let target = parts
                    .get(len)
                    .and_then(|name| reexporter(&codes, &candidate, name))
                    .unwrap_or(candidate);
                if target != *module && !module.starts_with(&format!("{target}::")) {
                    to.insert(target);
                }
                break;
            }
        }
        edges.insert(module.clone(), to);
    }
    edges
}

/// Strongly connected components of more than one module (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.insert(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.out.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.out
}

#[test]
fn the_coordinator_has_no_import_circle_but_the_accepted_one() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    assert!(
        edges.len() > 40,
        "the source walk found the modules: {edges:?}"
    );
    let state_deps = &edges["state"];
    assert!(
        state_deps.contains("state::startup") && state_deps.contains("translog"),
        "the graph sees child modules and crate paths: {state_deps:?}"
    );
    let unexpected: Vec<String> = circles(&edges)
        .into_iter()
        .filter(|c| {
            !ACCEPTED
                .iter()
                .any(|a| a.iter().copied().eq(c.iter().map(String::as_str)))
        })
        .map(|c| {
            let lines: Vec<String> = c
                .iter()
                .map(|m| {
                    let inside: Vec<&str> = edges[m]
                        .iter()
                        .filter(|t| c.contains(*t))
                        .map(String::as_str)
                        .collect();
                    format!("  {m} -> {}", inside.join(", "))
                })
                .collect();
            format!("{} modules:\n{}", c.len(), lines.join("\n"))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "import circles in coordinator/src (split the part that reads the state from the part the state reads):\n{}",
        unexpected.join("\n")
    );
}

#[test]
fn the_walk_finds_a_circle_when_there_is_one() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a", "d"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_string(), to.into_iter().map(String::from).collect()))
    .collect();
    let found = circles(&edges);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0],
        ["a", "b", "c"].into_iter().map(String::from).collect()
    );
    assert_eq!(
        paths_after("use crate::{a::B, c};\nlet x = crate::d::e();", "crate::"),
        vec!["a::B", "c", "d::e"]
    );
}

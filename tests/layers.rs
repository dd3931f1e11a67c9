//! The layers have no cycle: no top-level module (`fs`, `upload`, `cache`, `s3`, `key`, …, a
//! file or a directory under `src/`) reaches, through `crate::` paths, one that reaches it back.
//! Paths within one top-level module do not count (a facade and its parts, `fs` and
//! `fs::namespace`, are one layer), nor does test code (`tests.rs`, `*_tests.rs`, `mod tests`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`fs::namespace`) of every source file under `src/`, with its non-test text.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, base, out);
                continue;
            }
            let rel = p.strip_prefix(base).unwrap().to_str().unwrap().to_owned();
            let Some(stem) = rel.strip_suffix(".rs") else {
                continue;
            };
            let file = p.file_name().unwrap().to_str().unwrap();
            if file == "tests.rs" || file.ends_with("_tests.rs") || stem == "main" {
                continue;
            }
            let name = stem
                .trim_end_matches("/mod")
                .trim_end_matches("lib")
                .replace('/', "::");
            let text = std::fs::read_to_string(&p).unwrap();
            // (a `mod tests` block is the end of a file's product code)
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            out.insert(name, code);
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&src, &src, &mut out);
    out
}

/// The longest known module a `crate::a::b::c` path names.
fn target(path: &str, known: &BTreeMap<String, String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| known.contains_key(m))
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap()
}

/// Which top-level modules each top-level module names through `crate::`.
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, code) in mods {
        if m.is_empty() {
            continue; // lib.rs: declares the modules
        }
        let to = graph.entry(top(m).to_owned()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let path = rest[..end].trim_end_matches(':');
            // (`use crate::{a, b}` names several: take each)
            let names: Vec<String> = if rest[end..].starts_with('{') && path.is_empty() {
                let close = rest.find('}').unwrap_or(rest.len());
                rest[end + 1..close]
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .collect()
            } else {
                vec![path.to_owned()]
            };
            for n in names {
                if let Some(t) = target(&n, mods) {
                    if !t.is_empty() && top(&t) != top(m) {
                        to.insert(top(&t).to_owned());
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mods = modules();
    assert!(
        mods.contains_key("fs") && mods.contains_key("s3::aws"),
        "{:?}",
        mods.keys()
    );
    let graph = edges(&mods);
    // depth-first search for a cycle, reporting its path
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!(
                "a cycle between modules: {}\nthe graph: {graph:#?}",
                cycle.join(" -> ")
            );
        }
    }
}

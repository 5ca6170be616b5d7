//! docs/architecture.md states which top-level module of the core may use which, and
//! which crate depends on which. This reads the code's own imports and manifests and
//! fails when they differ from the document either way (an edge the code has and the
//! document does not, or the reverse), or when the core's modules import each other
//! in a circle.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The fenced block tagged `name` in docs/architecture.md: lines `a → b, c`.
fn documented(name: &str) -> Graph {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let fence = format!("```{name}\n");
    let start = doc
        .find(&fence)
        .unwrap_or_else(|| panic!("docs/architecture.md has no ```{name} block"))
        + fence.len();
    let block = &doc[start..start + doc[start..].find("```").unwrap()];
    let mut graph = Graph::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (from, to) = line
            .split_once('→')
            .unwrap_or_else(|| panic!("not `a → b, c`: {line}"));
        graph.entry(from.trim().to_owned()).or_default().extend(
            to.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        );
    }
    graph
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The core's top-level modules and the others each one names as `crate::<module>`
/// outside comments. Conformance suites (`testkit.rs`, feature `testkit`) are test
/// support and may use anything.
fn core_imports() -> Graph {
    let src = root().join("crates/core/src");
    let mut graph = Graph::new();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || file.file_name().unwrap() == "testkit.rs" {
            continue;
        }
        let uses = graph.entry(module.clone()).or_default();
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let code = line.split("//").next().unwrap();
            for (i, _) in code.match_indices("crate::") {
                let before = code[..i].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue; // `pgproof_crate::`, not ours
                }
                let name: String = code[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
            assert!(
                !code.contains("use crate::{"),
                "{}: import modules one per `use`, so this check sees them: {line}",
                relative.display()
            );
        }
    }
    graph
}

/// Each workspace crate and the workspace crates it depends on.
fn crate_dependencies() -> Graph {
    let mut graph = Graph::new();
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path().join("Cargo.toml"))
        .collect();
    manifests.push(root().join("examples/Cargo.toml"));
    for manifest in manifests {
        let text = std::fs::read_to_string(&manifest).unwrap();
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .unwrap()
            .trim_matches('"')
            .to_owned();
        let deps = graph.entry(name.clone()).or_default();
        let mut in_dependencies = false;
        for line in text.lines() {
            if line.starts_with('[') {
                in_dependencies = line == "[dependencies]";
            } else if in_dependencies && line.starts_with("pgproof-") {
                deps.insert(line.split([' ', '=', '.']).next().unwrap().to_owned());
            }
        }
    }
    graph
}

fn differences(documented: &Graph, found: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    let names: BTreeSet<&String> = documented.keys().chain(found.keys()).collect();
    let none = BTreeSet::new();
    for name in names {
        let (doc, code) = (
            documented.get(name).unwrap_or(&none),
            found.get(name).unwrap_or(&none),
        );
        if !documented.contains_key(name) {
            out.push(format!("{name} is missing from the document"));
        }
        if !found.contains_key(name) {
            out.push(format!("{name} is in the document but not in the code"));
        }
        for extra in code.difference(doc) {
            out.push(format!(
                "{name} → {extra} is in the code but not in the document"
            ));
        }
        for gone in doc.difference(code) {
            out.push(format!(
                "{name} → {gone} is in the document but not in the code"
            ));
        }
    }
    out
}

/// A circle in `graph`, if there is one.
fn circle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_core_modules_import_each_other_as_documented_and_in_no_circle() {
    let found = core_imports();
    let wrong = differences(&documented("core-modules"), &found);
    assert!(
        wrong.is_empty(),
        "docs/architecture.md and the core's imports differ:\n{}",
        wrong.join("\n")
    );
    if let Some(circle) = circle(&found) {
        panic!(
            "the core's modules import each other in a circle: {}",
            circle.join(" → ")
        );
    }
}

#[test]
fn the_crates_depend_on_each_other_as_documented() {
    let found = crate_dependencies();
    let wrong = differences(&documented("crates"), &found);
    assert!(
        wrong.is_empty(),
        "docs/architecture.md and the crates' manifests differ:\n{}",
        wrong.join("\n")
    );
    assert!(circle(&found).is_none());
}

#[test]
fn the_check_sees_a_circle_and_an_undocumented_edge() {
    let mut graph = Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("a".into());
    assert_eq!(circle(&graph).unwrap(), ["a", "b", "a"]);
    let mut doc = Graph::new();
    doc.entry("a".into()).or_default().insert("b".into());
    doc.entry("b".into()).or_default();
    assert_eq!(
        differences(&doc, &graph),
        ["b → a is in the code but not in the document"]
    );
}

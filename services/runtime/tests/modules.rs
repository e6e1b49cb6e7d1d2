//! The runtime's and the config crate's top-level modules import each other without a cycle:
//! a newcomer can read them bottom-up, and a module can move to a crate of its own without
//! dragging its neighbours along. Read from the sources (`crate::<module>` in code, not in
//! comments), checked with the same graph that refuses service dependency cycles.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use mesh_config::graph::DependencyGraph;

/// Every `.rs` file below `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level module a file belongs to (`control` for `src/control/plane.rs`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

/// The modules named after `crate::` in `code`, also inside `use crate::{a::.., b::..}`.
fn imports(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find("};").unwrap_or(group.len())];
            group
                .split(',')
                .filter_map(|item| item.trim().split("::").next())
                .collect()
        } else {
            rest.split("::").next().into_iter().collect()
        };
        found.extend(
            names
                .into_iter()
                .map(|n| n.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_'))
                .filter(|n| modules.contains(*n))
                .map(str::to_owned),
        );
    }
    found
}

fn module_graph(src: &Path) -> DependencyGraph {
    let files = sources(src);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(src, f))
        .filter(|m| m != "lib")
        .collect();
    let mut graph = DependencyGraph::default();
    for file in &files {
        let from = module_of(src, file);
        let text = std::fs::read_to_string(file).unwrap();
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for to in imports(&code, &modules) {
            if to != from && from != "lib" {
                graph.add(&from, &to);
            }
        }
    }
    graph
}

#[test]
fn no_two_modules_import_each_other() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for src in [here.join("src"), here.join("../config/src")] {
        let graph = module_graph(&src);
        if let Err(cycle) = graph.check_acyclic() {
            panic!("{}: {cycle}\n{graph}", src.display());
        }
    }
}

#[test]
fn a_cycle_between_modules_is_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lib.rs"), "mod a; mod b;").unwrap();
    std::fs::write(dir.path().join("a.rs"), "use crate::b::B;").unwrap();
    std::fs::write(
        dir.path().join("b.rs"),
        "// crate::a in a comment is no import\nuse crate::{a::A, lib};",
    )
    .unwrap();
    let cycle = module_graph(dir.path()).check_acyclic().unwrap_err();
    assert_eq!(cycle.path, ["a", "b", "a"]);
}

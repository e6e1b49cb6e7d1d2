//! The runtime is four crates stacked one way (the request path, the front door, the
//! supervisor, the control plane: each depends only on those below it, read from their
//! `Cargo.toml`s), and inside each crate (and the config crate) the top-level modules import
//! each other without a cycle: a newcomer reads them bottom-up. Modules are read from the
//! sources (`crate::<module>` in code, not in comments); both graphs are checked with the one
//! that refuses service dependency cycles.

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

/// The top-level module a file belongs to (`plane` for `src/plane/lifecycle.rs`).
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

/// The runtime's crates, bottom-up.
const LAYERS: [&str; 4] = ["stack", "front-door", "supervisor", "control"];

#[test]
fn no_two_modules_import_each_other() {
    let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in LAYERS.iter().chain(&["config"]) {
        let src = services.join(dir).join("src");
        let graph = module_graph(&src);
        if let Err(cycle) = graph.check_acyclic() {
            panic!("{}: {cycle}\n{graph}", src.display());
        }
    }
}

/// The `mesh-*` crates a manifest depends on (dev-dependencies left out).
fn mesh_dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    manifest
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|deps| {
            deps.keys()
                .filter_map(|name| name.strip_prefix("mesh-"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_runtime_crates_depend_one_way() {
    let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut graph = DependencyGraph::default();
    for (level, dir) in LAYERS.iter().enumerate() {
        let deps = mesh_dependencies(&services.join(dir).join("Cargo.toml"));
        for dep in &deps {
            graph.add(dir, dep);
        }
        // only crates below it: never one above, never the facade or a service
        let allowed: BTreeSet<String> = LAYERS[..level]
            .iter()
            .chain(&["config", "contract", "telemetry"])
            .map(|s| s.to_string())
            .collect();
        let above: Vec<&String> = deps.difference(&allowed).collect();
        assert!(above.is_empty(), "mesh-{dir} depends on {above:?}");
    }
    graph.check_acyclic().unwrap();
    // each builds on the one below
    for pair in LAYERS.windows(2) {
        let deps = mesh_dependencies(&services.join(pair[1]).join("Cargo.toml"));
        assert!(
            deps.contains(pair[0]),
            "mesh-{} without mesh-{}",
            pair[1],
            pair[0]
        );
    }
    // the facade holds no code of its own
    let facade = std::fs::read_to_string(services.join("runtime/src/lib.rs")).unwrap();
    assert!(
        facade
            .lines()
            .filter(|l| !l.trim_start().starts_with("//") && !l.trim().is_empty())
            .all(|l| l.starts_with("pub use ") || l.starts_with("    ") || l == "};"),
        "services/runtime/src/lib.rs re-exports only"
    );
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

/// Every `.rs` file of product code (services, ops, codegen; tests and benches aside).
fn product_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for top in ["services", "ops", "codegen"] {
        let mut dirs = vec![root.join(top)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if path.is_dir() {
                    if !matches!(name.as_str(), "tests" | "target" | "fixture") {
                        dirs.push(path);
                    }
                } else if name.ends_with(".rs") && name != "tests.rs" {
                    files.push(path);
                }
            }
        }
    }
    files
}

/// A newcomer reads a file in one sitting: none of product code is over 800 lines unless its
/// first line says why (`// Long on purpose: ...`).
#[test]
fn no_product_file_is_over_800_lines() {
    let long: Vec<String> = product_sources()
        .into_iter()
        .filter_map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            let lines = text.lines().count();
            let said_why = text.starts_with("// Long on purpose:");
            (lines > 800 && !said_why).then(|| format!("{} ({lines} lines)", file.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by job: {long:#?}");
    assert!(product_sources().len() > 100, "the walk found the sources");
}

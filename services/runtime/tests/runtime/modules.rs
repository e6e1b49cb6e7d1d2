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

/// A newcomer reads a file in one sitting: no file of product code is over 600 lines (its
/// unit tests aside) unless its first line says why (`// Long on purpose: ...`), and none is
/// over 800.
#[test]
fn no_product_file_is_over_600_lines_without_a_reason() {
    let long: Vec<String> = product_sources()
        .into_iter()
        .filter_map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text
                .split("\n#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            let lines = code.lines().count();
            let said_why = text.starts_with("// Long on purpose:");
            let too_long = lines > 800 || (lines > 600 && !said_why);
            too_long.then(|| format!("{} ({lines} lines)", file.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by job: {long:#?}");
    assert!(product_sources().len() > 100, "the walk found the sources");
}

/// `code` with its comments, strings and character literals blanked out (newlines kept), so
/// braces and `fn` are only the code's own.
fn code_only(code: &str) -> String {
    let bytes = code.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let blank = |out: &mut Vec<u8>, text: &[u8]| {
        out.extend(text.iter().map(|&b| if b == b'\n' { b'\n' } else { b' ' }))
    };
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let after_ident = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let end = if rest.starts_with(b"//") {
            rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            rest.windows(2)
                .position(|w| w == b"*/")
                .map_or(rest.len(), |p| p + 2)
        } else if !after_ident && (rest.starts_with(b"r\"") || rest.starts_with(b"r#")) {
            // a raw string: r"..", r#".."#
            let hashes = rest[1..].iter().take_while(|&&b| b == b'#').count();
            if rest.get(1 + hashes) != Some(&b'"') {
                out.push(bytes[i]);
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"').chain(vec![b'#'; hashes]).collect();
            let body = 2 + hashes;
            rest[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| body + p + close.len())
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            j + 1
        } else if rest[0] == b'\'' {
            // a character literal ('a', '\n', '\u{1F600}'), not a lifetime ('a)
            let close = if rest.get(1) == Some(&b'\\') {
                rest.iter().skip(2).position(|&b| b == b'\'').map(|p| p + 3)
            } else {
                // byte i is `'`: the next byte starts a character
                let width = code[i + 1..].chars().next().map_or(1, char::len_utf8);
                (rest.get(1 + width) == Some(&b'\'')).then_some(2 + width)
            };
            match close {
                Some(end) => end,
                None => {
                    out.push(bytes[i]);
                    i += 1;
                    continue;
                }
            }
        } else {
            out.push(bytes[i]);
            i += 1;
            continue;
        };
        let end = end.min(rest.len());
        blank(&mut out, &rest[..end]);
        i += end;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Each function of `code` (outside `#[cfg(test)] mod tests`) with its length in lines, from
/// its `fn` to its closing brace.
fn function_lengths(code: &str) -> Vec<(String, usize, usize)> {
    let code = code_only(code);
    let code = match code.find("#[cfg(test)]\nmod tests") {
        Some(at) => &code[..at],
        None => &code[..],
    };
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = code[at..].find("fn ") {
        let start = at + offset;
        at = start + 3;
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let name: String = code[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        // the body's `{`, unless a `;` comes first (a declaration in a trait)
        let Some(open) = code[at..].find(['{', ';']).map(|p| at + p) else {
            break;
        };
        if bytes[open] == b';' {
            continue;
        }
        let mut depth = 0usize;
        let mut close = open;
        for (i, &b) in bytes.iter().enumerate().skip(open) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let line = code[..start].matches('\n').count() + 1;
        let lines = code[start..=close].matches('\n').count() + 1;
        found.push((name, line, lines));
    }
    found
}

/// A function does one job a reader holds in mind: none of product code is over 120 lines.
#[test]
fn no_product_function_is_over_120_lines() {
    let long: Vec<String> = product_sources()
        .into_iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            function_lengths(&text)
                .into_iter()
                .filter(|(_, _, lines)| *lines > 120)
                .map(move |(name, line, lines)| {
                    format!("{}:{line} {name} ({lines} lines)", file.display())
                })
        })
        .collect();
    assert!(long.is_empty(), "split these by job: {long:#?}");
}

#[test]
fn function_lengths_count_code_not_strings_or_comments() {
    let code = r##"
fn short() { let brace = "}"; let c = '{'; }
// fn in_a_comment() {
fn long<'a>(x: &'a str) -> &'a str {
    let raw = r#"} {"#;
    /* } */
    x
}
trait T { fn declared(&self); }
"##;
    let found = function_lengths(code);
    let names: Vec<(&str, usize)> = found.iter().map(|(n, _, l)| (n.as_str(), *l)).collect();
    assert_eq!(names, [("short", 1), ("long", 5)]);
}

/// Every `.rs` file of the tests (their support code included).
fn test_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    let mut dirs = vec![
        root.join("services"),
        root.join("ops"),
        root.join("codegen"),
    ];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() && name != "target" {
                dirs.push(path);
            } else if name.ends_with(".rs") && path.components().any(|c| c.as_os_str() == "tests") {
                files.push(path);
            }
        }
    }
    files
}

/// The lines opening the (up to three) blocks around line `at`, innermost first.
fn enclosing_blocks(lines: &[&str], at: usize) -> Vec<String> {
    let mut found = Vec::new();
    let mut depth = 0usize;
    for line in lines[..at].iter().rev() {
        let code = code_only(line);
        for c in code.chars().rev() {
            match c {
                '}' => depth += 1,
                '{' if depth == 0 => found.push(line.trim().to_owned()),
                '{' => depth -= 1,
                _ => {}
            }
        }
        if found.len() >= 3 {
            break;
        }
    }
    found
}

/// Whether `line` holds a `//` comment (not a `//` inside a string, as in `"http://"`).
fn has_comment(line: &str) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return true,
            _ => {}
        }
    }
    false
}

/// Why a test's `sleep(` at line `at` waits, if it says: a comment on it or on the line above, or
/// it is the pause of a loop that polls or retries (the last statement of a `loop`, `while` or
/// `for` body: the condition it waits for is the loop's).
fn sleep_is_justified(lines: &[&str], at: usize) -> bool {
    let commented =
        has_comment(lines[at]) || at > 0 && lines[at - 1].trim_start().starts_with("//");
    let next = lines[at + 1..]
        .iter()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let ends_a_body = next.starts_with('}') || next.starts_with("continue");
    let in_a_loop = enclosing_blocks(lines, at).iter().any(|opener| {
        opener.ends_with("loop {")
            || opener.starts_with("while ")
            || opener.starts_with("for ")
            || opener.split_once(": ").is_some_and(|(_, rest)| {
                rest.starts_with("loop") || rest.starts_with("while ") || rest.starts_with("for ")
            })
    });
    commented || (ends_a_body && in_a_loop)
}

/// A test waits for what it needs (a line, a state, an answer), never a guessed time: each
/// `sleep(` in the tests polls in a loop, or a comment says why that long (a fault's duration,
/// the time something must not happen in, a load's pacing).
#[test]
fn every_sleep_in_the_tests_polls_or_says_why() {
    let mut bare = Vec::new();
    for file in test_sources() {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // a `sleep(` in a string or a comment is no wait
        let code = code_only(&text);
        for (at, line) in code.lines().enumerate() {
            if line.contains("sleep(") && !sleep_is_justified(&lines, at) {
                bare.push(format!("{}:{}", file.display(), at + 1));
            }
        }
    }
    assert!(
        bare.is_empty(),
        "wait for a condition, or say why: {bare:#?}"
    );
}

#[test]
fn a_poll_pause_and_a_commented_wait_pass_a_bare_wait_does_not() {
    let code = "
async fn t() {
    while !ready() {
        sleep(POLL).await;
    }
    // the outage lasts 10 s
    sleep(OUTAGE).await;
    sleep(GUESS).await;
    assert!(done());
}";
    let lines: Vec<&str> = code.lines().collect();
    let at = |what: &str| lines.iter().position(|l| l.contains(what)).unwrap();
    assert!(sleep_is_justified(&lines, at("POLL")));
    assert!(sleep_is_justified(&lines, at("OUTAGE")));
    assert!(!sleep_is_justified(&lines, at("GUESS")));
    // a `//` in a string is no comment
    let url = ["    sleep(GUESS).await; let at = \"http://host\";", "}"];
    assert!(!sleep_is_justified(&url, 0));
}

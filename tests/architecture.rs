//! The arrows between the parts, checked from the code itself (`use` lines and paths, and
//! the crates' manifests), so a change that adds a forbidden one fails here:
//!
//! - crates: the model description depends on no other mananera crate; the engine only on
//!   it; training on it (never on the engine or the bots); the bots only on the health
//!   helpers;
//! - inside the daemon crate: no import cycle between its top-level modules; nothing but the
//!   command line (`cli`, and `logging`, which writes through the progress bars) imports
//!   `commands`; nothing imports `cli`; the service core imports none
//!   of the parts built on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `mananera-*` crates a manifest's `[dependencies]` name.
fn mananera_dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    table
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| {
            d.keys()
                .filter(|k| k.starts_with("mananera"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// A file's code without comments (line comments only: the code has no block comments).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `text` names through `crate::`: `crate::a::b`, and the first
/// names of a group, `crate::{a::x, b}`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_alphanumeric() || c == '_') => {
                        out.insert(ident(&group[j..]));
                        start = false;
                    }
                    c if !c.is_whitespace() => start = false,
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The daemon crate's top-level modules and the ones each imports.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in sources(&src) {
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = Path::new(first)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let used = crate_paths(&code(&path));
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(used.into_iter().filter(|m| *m != module));
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
        start: &str,
    ) -> bool {
        let last = path.last().unwrap().clone();
        for next in graph.get(&last).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, path, seen, start) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, &mut path, &mut BTreeSet::new(), start).then_some(path)
}

#[test]
fn the_crates_depend_only_inward() {
    let deps = |dir: &str| mananera_dependencies(&root().join(dir).join("Cargo.toml"));
    let none = BTreeSet::new();
    let only = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        deps("model"),
        none,
        "the model description depends on no other part"
    );
    assert_eq!(
        deps("engine"),
        only(&["mananera-model"]),
        "the engine links no corpus code"
    );
    assert_eq!(
        deps("training"),
        only(&["mananera-model"]),
        "training knows no engine or bot"
    );
    assert_eq!(
        deps("bots"),
        only(&["mananera-health"]),
        "the bots know nothing of the model or the corpus"
    );
    assert_eq!(deps("health"), none);
    // And the engine's code does not reach around its manifest.
    for path in sources(&root().join("engine/src")) {
        let text = code(&path);
        for other in ["mananera_training", "mananera_bots", "mananera::"] {
            assert!(!text.contains(other), "{} uses {other}", path.display());
        }
    }
}

#[test]
fn the_daemon_modules_import_each_other_without_cycles() {
    let graph = module_graph();
    // The check sees the real imports (a sanity check on the parser).
    assert!(graph["cli"].contains("commands"), "{graph:?}");
    assert!(graph["nightly"].contains("live"), "{graph:?}");
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn nothing_below_the_command_line_imports_it_and_the_service_core_imports_no_part_above_it() {
    let graph = module_graph();
    for (module, uses) in &graph {
        assert!(!uses.contains("cli"), "{module} imports cli");
        if uses.contains("commands") {
            assert!(
                ["cli", "logging"].contains(&module.as_str()),
                "{module} imports commands"
            );
        }
    }
    let above = [
        "live",
        "nightly",
        "web",
        "chat_bots",
        "admin",
        "control",
        "commands",
        "cli",
    ];
    for part in above {
        assert!(
            !graph["service"].contains(part),
            "the service core imports {part}"
        );
    }
}

#[test]
fn the_import_reader_sees_groups_and_paths() {
    let found = crate_paths(
        "use crate::{admin::Status, config::{self, Config}, exit};\nlet x = crate::live::Live::new();",
    );
    let want: BTreeSet<String> = ["admin", "config", "exit", "live"].map(String::from).into();
    assert_eq!(found, want);
}

//! The source tree keeps the shape CONTRIBUTING.md describes: the pure
//! parts (`decide/`, `model.rs`, `secret.rs`) import nothing that does I/O,
//! and no module imports, through others, a module that imports it. Read
//! from the `use crate::…` paths of each file's code (comments and the
//! unit tests left out), the way a reviewer would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, relative to it.
fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src/").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    walk(&src, &mut all);
    let relative = all
        .iter()
        .map(|p| p.strip_prefix(&src).expect("under src").to_path_buf());
    relative.collect()
}

/// A file's module path: `libvirt/host/mod.rs` is `libvirt::host`.
fn module_of(file: &Path) -> String {
    let text = file.with_extension("").to_string_lossy().replace('/', "::");
    text.strip_suffix("::mod").unwrap_or(&text).to_owned()
}

/// The crate modules a file's code names (`crate::a::b::Item` names `a::b`
/// if that is a module, else `a`), without comments and unit tests.
fn imports(file: &Path, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(file);
    let text = std::fs::read_to_string(src).expect("read a source file");
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut found = BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("crate::") {
            let path: String = line[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
            // The longest prefix that is a module; none: an item of the
            // crate's root, lib.rs.
            let named = (1..=parts.len())
                .rev()
                .map(|n| parts[..n].join("::"))
                .find(|m| modules.contains(m));
            found.insert(named.unwrap_or_else(|| "lib".to_owned()));
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = sources();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        let mut uses = imports(file, &modules);
        // A module's own children and itself are not an arrow out.
        uses.retain(|m| *m != module && !m.starts_with(&format!("{module}::")));
        graph.insert(module, uses);
    }
    graph
}

#[test]
fn the_pure_parts_import_nothing_that_does_io() {
    let pure = |m: &str| m == "model" || m == "secret" || m.starts_with("decide");
    let mut arrows = Vec::new();
    for (module, uses) in graph().iter().filter(|(m, _)| pure(m)) {
        for used in uses.iter().filter(|u| !pure(u)) {
            arrows.push(format!("{module} -> {used}"));
        }
    }
    assert!(
        arrows.is_empty(),
        "arrows out of the pure parts: {arrows:?}"
    );
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let graph = graph();
    // Depth-first search; a module met again on the current path closes a
    // circle.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        circles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|m| *m == node) {
            circles.push(format!("{} -> {node}", path[at..].join(" -> ")));
            return;
        }
        if !done.insert(node) {
            return;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, circles);
        }
        path.pop();
    }
    let (mut done, mut circles) = (BTreeSet::new(), Vec::new());
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "import circles: {circles:?}");
}

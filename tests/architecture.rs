//! The shape of `src/`, checked: no import circle among its top-level modules, no file over 800
//! lines, no `super::` path that climbs out of its top-level module, and no production code after a
//! file's test items. A circle means two modules can only be understood together; this keeps the
//! layering drawn in `docs/architecture.md` true as the code grows. The last two close holes in the
//! first: the graph is read from `crate::` paths in the code before a file's first
//! `#[cfg(test)]`, so a `super::super::` import or code after the tests would hide an edge.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

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

/// The top-level module a file belongs to: `src/limits/local.rs` → `limits`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The code of a file without its test items (by this repository's convention at the end; see
/// [`code_after_tests`]).
fn production_code(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |at| &text[..at])
}

/// Lines after a file's first `#[cfg(test)]` that begin an item not marked `#[cfg(test)]`: code
/// the module graph would not see.
fn code_after_tests(text: &str) -> Vec<String> {
    let Some(at) = text.find("#[cfg(test)]") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut depth = 0i32;
    let mut test_attribute = false;
    for line in text[at..].lines() {
        let trimmed = line.trim();
        if depth == 0 && !trimmed.is_empty() && !trimmed.starts_with("//") {
            if trimmed.starts_with("#[cfg(test)]") {
                test_attribute = true;
            } else if trimmed.starts_with("#[") || trimmed.starts_with("#!") {
                // Another attribute of the same item.
            } else if test_attribute {
                test_attribute = false;
            } else {
                found.push(trimmed.to_owned());
            }
        }
        depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
    }
    found
}

/// How deep below the crate root a file's own module is: `src/a.rs` and `src/a/mod.rs` are 1,
/// `src/a/b.rs` is 2.
fn depth_of(src: &Path, file: &Path) -> usize {
    let rel = file.strip_prefix(src).unwrap();
    let parts = rel.components().count();
    if rel.file_name().is_some_and(|n| n == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// `super::` chains in production code that climb to the crate root or above: they name another
/// top-level module without a `crate::` path, so the graph would miss the edge.
fn escaping_super_paths(code: &str, depth: usize) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("super::") {
        // Count a whole chain once, from its first `super::`.
        if code[..at].ends_with("super::") {
            continue;
        }
        let climbs = code.as_bytes()[at..]
            .chunks(7)
            .take_while(|c| *c == b"super::")
            .count();
        if climbs >= depth {
            let line = code[..at].lines().count().max(1);
            found.push(format!(
                "line {line}: {}",
                &code[at..(at + 7 * climbs + 16).min(code.len())]
            ));
        }
    }
    found
}

/// Top-level modules named as `crate::name` in `code`, including `use crate::{a, b::c}`.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = edges.entry(module.clone()).or_default();
        for dep in referenced(production_code(&text)) {
            if dep != module {
                deps.insert(dep);
            }
        }
    }
    edges
}

/// One circle, if any: depth-first search with a stack of the path taken.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_import_circle_among_top_level_modules() {
    let edges = graph();
    assert!(edges.len() > 15, "the module graph was not read: {edges:?}");
    assert!(
        edges["http"].contains("service") && edges["service"].contains("limits"),
        "the reader misses known edges: {edges:?}"
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import circle: {}", cycle.join(" → "));
    }
}

#[test]
fn the_circle_finder_finds_circles() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    edges.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&edges).unwrap(), ["a", "b", "c", "a"]);
    edges.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&edges), None);
    assert_eq!(
        referenced("use crate::{a, b::c};\nlet x = crate::d::e();"),
        ["a", "b", "d"].into_iter().map(String::from).collect()
    );
}

#[test]
fn no_super_path_climbs_out_of_its_top_level_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut escaping = Vec::new();
    for file in &files {
        if module_of(&src, file).is_none() {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for path in escaping_super_paths(production_code(&text), depth_of(&src, file)) {
            escaping.push(format!("{}: {path}", file.display()));
        }
    }
    assert!(
        escaping.is_empty(),
        "use crate:: paths instead: {escaping:#?}"
    );
}

#[test]
fn no_production_code_after_test_items() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut late = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for line in code_after_tests(&text) {
            late.push(format!("{}: {line}", file.display()));
        }
    }
    assert!(late.is_empty(), "move these above the tests: {late:#?}");
}

#[test]
fn the_shape_checks_find_what_they_look_for() {
    let src = Path::new("/x/src");
    assert_eq!(depth_of(src, Path::new("/x/src/a.rs")), 1);
    assert_eq!(depth_of(src, Path::new("/x/src/a/mod.rs")), 1);
    assert_eq!(depth_of(src, Path::new("/x/src/a/b.rs")), 2);
    assert!(escaping_super_paths("use super::b::C;", 2).is_empty());
    assert_eq!(
        escaping_super_paths("use super::super::redis::X;", 2).len(),
        1
    );
    assert_eq!(escaping_super_paths("use super::limits::X;", 1).len(), 1);
    let tail = "fn a() {}\n#[cfg(test)]\nmod tests {\n    fn t() {}\n}\n";
    assert!(code_after_tests(tail).is_empty());
    let late = "#[cfg(test)]\nmod tests {}\n\npub fn hidden() {\n    crate::x::y();\n}\n";
    assert_eq!(code_after_tests(late), ["pub fn hidden() {"]);
    let attrs = "#[cfg(test)]\n#[allow(dead_code)]\nfn helper() {}\n";
    assert!(code_after_tests(attrs).is_empty());
}

#[test]
fn no_source_file_is_over_800_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these: {long:?}");
}

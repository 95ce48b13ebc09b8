//! The shape of the code, checked: no crate of the workspace has a file-level import cycle (two
//! files that import each other, directly or through others). A module's file imports another
//! when it names it in a `use` (or a `crate::…`/`super::…` path); a parent file declaring its
//! children (`mod x;`) does not, but a parent re-exporting them (`pub use x::…`) does, and so does
//! a child importing an item its parent defines or re-exports. A type both sides need belongs in
//! a leaf file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["shape", "writer"]`; `[]` for lib.rs) → file.
fn modules(root: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The source without line comments and test modules (`#[cfg(test)] mod x { … }` to the end
/// of the file, where they live by convention; `#[cfg(test)] mod x;` declarations).
fn code(src: &str) -> String {
    let mut s = src.to_string();
    if let Some(at) = find_test_module(&s) {
        s.truncate(at);
    }
    s.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn find_test_module(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find("#[cfg(test)]") {
        let at = from + i;
        let rest = s[at + "#[cfg(test)]".len()..].trim_start();
        if let Some(decl) = rest.strip_prefix("mod ") {
            let name_end = decl.find(|c: char| !c.is_alphanumeric() && c != '_')?;
            if decl[name_end..].trim_start().starts_with('{') {
                return Some(at);
            }
        }
        from = at + 1;
    }
    None
}

/// Expand `a::b::{c, d::{e, f}}` into paths.
fn expand(stmt: &str) -> Vec<String> {
    let stmt: String = stmt.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = stmt.find('{') else {
        return vec![stmt.split(" as ").next().unwrap_or("").to_string()];
    };
    let Some(close) = stmt.rfind('}') else {
        return Vec::new();
    };
    let prefix = &stmt[..open];
    let inner = &stmt[open + 1..close];
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
        .into_iter()
        .flat_map(|p| {
            if p == "self" {
                vec![prefix.trim_end_matches(':').to_string()]
            } else {
                expand(&format!("{prefix}{p}"))
            }
        })
        .collect()
}

/// The longest prefix of `path` that is a module.
fn resolve(mods: &BTreeMap<Vec<String>, PathBuf>, path: &[String]) -> Option<Vec<String>> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| mods.contains_key(p))
}

fn imports(mods: &BTreeMap<Vec<String>, PathBuf>, module: &[String]) -> BTreeSet<Vec<String>> {
    let src = code(&std::fs::read_to_string(&mods[module]).expect("read"));
    let mut out = BTreeSet::new();
    let mut add = |path: Vec<String>| {
        if let Some(t) = resolve(mods, &path) {
            if t != module {
                out.insert(t);
            }
        }
    };
    let absolute = |parts: &[&str]| -> Option<Vec<String>> {
        let mut base: Vec<String>;
        let mut rest = parts;
        match rest.first().copied() {
            Some("crate") => {
                base = Vec::new();
                rest = &rest[1..];
            }
            Some("super") => {
                base = module.to_vec();
                while rest.first() == Some(&"super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            Some("self") => {
                base = module.to_vec();
                rest = &rest[1..];
            }
            Some(first) => {
                let mut child = module.to_vec();
                child.push(first.to_string());
                if !mods.contains_key(&child) {
                    return None;
                }
                base = module.to_vec();
            }
            None => return None,
        }
        base.extend(rest.iter().map(|s| s.to_string()));
        Some(base)
    };
    // `use` statements (the statement may span lines).
    let mut at = 0;
    while let Some(i) = src[at..].find("use ") {
        let start = at + i;
        at = start + 4;
        let before = src[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = src[start..].find(';') else {
            break;
        };
        for path in expand(&src[start + 4..start + end]) {
            let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
            if let Some(p) = absolute(&parts) {
                add(p);
            }
        }
    }
    // Paths in code: `crate::a::b`, `super::a`.
    for prefix in ["crate::", "super::"] {
        let mut at = 0;
        while let Some(i) = src[at..].find(prefix) {
            let start = at + i;
            at = start + prefix.len();
            let tail: String = src[start..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if tail.ends_with("::") {
                // `crate::{a, b}` or a glob: the `use` statement above expanded it.
                continue;
            }
            let parts: Vec<&str> = tail.split("::").filter(|p| !p.is_empty()).collect();
            if let Some(p) = absolute(&parts) {
                add(p);
            }
        }
    }
    out
}

/// Strongly connected components of more than one module.
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<Vec<String>, usize>,
        low: BTreeMap<Vec<String>, usize>,
        stack: Vec<Vec<String>>,
        on: BTreeSet<Vec<String>>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: &Vec<String>) {
            self.index.insert(v.clone(), self.next);
            self.low.insert(v.clone(), self.next);
            self.next += 1;
            self.stack.push(v.clone());
            self.on.insert(v.clone());
            let edges: Vec<Vec<String>> = self.graph[v].iter().cloned().collect();
            for w in edges {
                if !self.index.contains_key(&w) {
                    self.visit(&w);
                    let l = self.low[v].min(self.low[&w]);
                    self.low.insert(v.clone(), l);
                } else if self.on.contains(&w) {
                    let l = self.low[v].min(self.index[&w]);
                    self.low.insert(v.clone(), l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(&w);
                    let done = &w == v;
                    comp.push(if w.is_empty() {
                        "lib".to_string()
                    } else {
                        w.join("/")
                    });
                    if done {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

fn crate_cycles(root: &str) -> Vec<Vec<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
    let mods = modules(&root);
    let graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = mods
        .keys()
        .map(|m| (m.clone(), imports(&mods, m)))
        .collect();
    cycles(&graph)
}

#[test]
fn no_crate_has_a_file_level_import_cycle() {
    let mut found = Vec::new();
    for root in ["src", "storage/src", "filter/src", "http1/src", "auth/src"] {
        if !Path::new(env!("CARGO_MANIFEST_DIR")).join(root).exists() {
            continue;
        }
        for c in crate_cycles(root) {
            found.push(format!("{root}: {}", c.join(" ↔ ")));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle() {
    // Two files that import each other, and a third that only imports one of them.
    let dir = tempfile::tempdir().expect("tempdir");
    let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
    w("lib.rs", "mod a;\nmod b;\nmod c;\n");
    w("a.rs", "use crate::b::B;\npub struct A;\n");
    w("b.rs", "use super::a::{A};\npub struct B;\n");
    w("c.rs", "use crate::a::A;\n");
    let mods = modules(dir.path());
    let graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = mods
        .keys()
        .map(|m| (m.clone(), imports(&mods, m)))
        .collect();
    assert_eq!(cycles(&graph), vec![vec!["a".to_string(), "b".to_string()]]);

    // Module lists in braces are imports of each module (not of the crate root), and a path
    // in code counts like a `use`.
    w("lib.rs", "mod d;\nmod e;\nmod f;\npub use d::D;\n");
    w("d.rs", "use crate::{e, f};\npub struct D;\n");
    w("e.rs", "pub struct E;\n");
    w("f.rs", "pub fn f() -> crate::d::D { crate::d::D }\n");
    for gone in ["a.rs", "b.rs", "c.rs"] {
        std::fs::remove_file(dir.path().join(gone)).expect("remove");
    }
    let mods = modules(dir.path());
    let d = vec!["d".to_string()];
    assert_eq!(
        imports(&mods, &d),
        BTreeSet::from([vec!["e".to_string()], vec!["f".to_string()]])
    );
    let graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = mods
        .keys()
        .map(|m| (m.clone(), imports(&mods, m)))
        .collect();
    assert_eq!(cycles(&graph), vec![vec!["d".to_string(), "f".to_string()]]);
}

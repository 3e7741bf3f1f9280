//! The house stays layered: no import cycle between any two files of `src`, no import that points
//! up the crate's layers ([`LAYERS`]), and within `src/ml` none that points up [`ML_LAYERS`].
//!
//! The graph is read from the source text, not from the compiler: every `use` declaration and
//! every path written `crate::…`, `super::…` or `self::…` in a file's code is an edge to the file
//! that defines the module it names. An import through a re-export (`crate::ml::Model`, which
//! `src/ml/mod.rs` re-exports from `src/ml/models/model.rs`) is an edge to the file the item
//! comes from, not to the façade. Comments, strings and `#[cfg(test)] mod … { … }` blocks are
//! left out: nothing imports a test module, so a test may reach any file without making a cycle.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The crate's layers, bottom first: a file may import files of its own layer or below, never
/// above. The pipeline flows source → syntax → compile → plan → engine → ops → ml, so each layer
/// imports the ones its input comes from and the ones it hands work to (engine runs ops, ops run
/// ml), and the store sits beside them, below compile (which fingerprints inputs with it).
const LAYERS: &[&[&str]] = &[
    // The crate root only declares modules; `#[macro_export]` macros (`crate::op_args!`) live there.
    &[
        "src/lib.rs",
        "src/text.rs",
        "src/say.rs",
        "src/process.rs",
        "src/source.rs",
        "src/keyword.rs",
    ],
    &["src/diagnostic.rs", "src/ml", "src/report"],
    &["src/value.rs", "src/registry", "src/syntax"],
    &["src/store", "src/data", "src/remote"],
    &["src/compile"],
    &["src/plan", "src/lockfile"],
    &["src/ops"],
    &["src/engine"],
    &["src/cli"],
    &["src/main.rs"],
];

/// `src/ml`'s layers, bottom first: a file may import files of its own layer or below, never
/// above. Paths are folders or files relative to the crate root; the first that matches wins.
const ML_LAYERS: &[&[&str]] = &[
    &["src/ml/kernels"],
    &["src/ml/models"],
    &["src/ml/compress", "src/ml/training"],
    &["src/ml/checkpoint.rs", "src/ml/inference.rs"],
    &["src/ml/mod.rs", "src/ml/testutil.rs"],
];

#[test]
fn no_import_cycles_between_files() {
    let cycles = Graph::read().cycles(&["src"]);
    assert!(cycles.is_empty(), "import cycles between files:\n{}", cycles.join("\n"));
}

#[test]
fn crate_imports_point_down() {
    assert_layered(&Graph::read(), LAYERS, "src");
}

#[test]
fn ml_imports_point_down() {
    assert_layered(&Graph::read(), ML_LAYERS, "src/ml");
}

/// Every file under `within_folder` is in a layer, and no import points from a layer to one above.
fn assert_layered(g: &Graph, layers: &[&[&str]], within_folder: &str) {
    let layer_of = |file: &str| layers.iter().position(|layer| layer.iter().any(|p| within(file, p)));
    let mut bad = Vec::new();
    for ((from, to), how) in &g.edges {
        let (Some(a), Some(b)) = (layer_of(&g.files[*from]), layer_of(&g.files[*to])) else {
            continue;
        };
        if b > a {
            bad.push(format!("{} imports {} ({how})", g.files[*from], g.files[*to]));
        }
    }
    for file in g.files.iter().filter(|f| within(f, within_folder)) {
        assert!(layer_of(file).is_some(), "{file} is in no layer");
    }
    assert!(bad.is_empty(), "imports pointing up the layers:\n{}", bad.join("\n"));
}

/// The reader itself, on a small made-up crate.
#[test]
fn the_reader_follows_uses_paths_and_re_exports() {
    let dir = tempfile::tempdir().unwrap();
    let put = |p: &str, text: &str| {
        let path = dir.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    put("src/lib.rs", "pub mod a;\npub mod b;\n");
    put("src/a/mod.rs", "pub mod low;\npub mod high;\npub use low::Thing;\n");
    put("src/a/low.rs", "// use crate::a::high;\npub struct Thing;\nconst S: &str = \"crate::a::high\";\n#[cfg(test)]\nmod tests {\n    use crate::a::high::f;\n    fn g() { let _ = '{'; }\n}\n#[cfg(test)]\npub(super) mod testing {\n    fn t() { crate::b::g() }\n}\n");
    put(
        "src/a/high.rs",
        "use super::{low::{self}, Thing};\npub fn f() { crate::b::g() }\n",
    );
    put("src/b.rs", "use crate::a::Thing;\npub fn g() {}\n");
    let g = Graph::from_dir(dir.path());
    let edges: BTreeSet<(String, String)> = g
        .edges
        .keys()
        .map(|(a, b)| (g.files[*a].clone(), g.files[*b].clone()))
        .collect();
    let e = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        edges,
        BTreeSet::from([
            e("src/a/mod.rs", "src/a/low.rs"),
            e("src/a/high.rs", "src/a/low.rs"),
            e("src/a/high.rs", "src/b.rs"),
            e("src/b.rs", "src/a/low.rs"),
        ])
    );
    assert!(g.cycles(&["src"]).is_empty());
    assert_layered(
        &g,
        &[&["src/a/low.rs"], &["src/b.rs"], &["src/a"], &["src/lib.rs"]],
        "src",
    );
    let upward = std::panic::catch_unwind(|| assert_layered(&g, &[&["src/b.rs"], &["src/a"], &["src/lib.rs"]], "src"));
    assert!(upward.is_err(), "b.rs imports a/low.rs, a layer above it");
    put("src/a/low.rs", "pub struct Thing;\nfn h() { super::high::f() }\n");
    let cycles = Graph::from_dir(dir.path()).cycles(&["src/a"]);
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(
        cycles[0].contains("src/a/high.rs -> src/a/low.rs -> src/a/high.rs"),
        "{}",
        cycles[0]
    );
}

/// Whether `file` is `prefix` or lies under the folder `prefix`.
fn within(file: &str, prefix: &str) -> bool {
    file == prefix || file.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// Files (by path relative to the crate root, `/`-separated) and the imports between them.
struct Graph {
    files: Vec<String>,
    /// (from, to) → the first path that makes the edge.
    edges: BTreeMap<(usize, usize), String>,
}

impl Graph {
    fn read() -> Self {
        Self::from_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
    }

    fn from_dir(root: &Path) -> Self {
        // Module path → file, for the library crate (src/main.rs is another crate).
        let mut files = Vec::new();
        collect_rs(&root.join("src"), &mut files);
        files.sort();
        let rel: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"))
            .collect();
        let mut modules: HashMap<Vec<String>, usize> = HashMap::new();
        let mut module_of: Vec<Option<Vec<String>>> = Vec::new();
        for (i, r) in rel.iter().enumerate() {
            let m = module_path(r);
            if let Some(m) = &m {
                modules.insert(m.clone(), i);
            }
            module_of.push(m);
        }
        // Each file's paths (from its `use` trees and its code) and its re-exports.
        let mut paths: Vec<Vec<(Vec<String>, String)>> = vec![Vec::new(); rel.len()];
        let mut reexports: Vec<HashMap<String, Vec<String>>> = vec![HashMap::new(); rel.len()];
        for (i, f) in files.iter().enumerate() {
            let Some(me) = &module_of[i] else { continue };
            let code = drop_test_modules(&strip(&std::fs::read_to_string(f).unwrap()));
            let (uses, rest) = split_uses(&code);
            for (public, tree) in uses {
                for (path, name) in expand(&tree) {
                    let Some(abs) = absolute(me, &path, &modules) else {
                        continue;
                    };
                    if public && name != "*" {
                        reexports[i].insert(name, abs.clone());
                    }
                    paths[i].push((abs, path.join("::")));
                }
            }
            for path in inline_paths(&rest) {
                if let Some(abs) = absolute(me, &path, &modules) {
                    paths[i].push((abs, path.join("::")));
                }
            }
        }
        let mut edges = BTreeMap::new();
        for (i, ps) in paths.iter().enumerate() {
            for (abs, text) in ps {
                if let Some(j) = resolve(abs, &modules, &reexports, 0) {
                    if j != i {
                        edges.entry((i, j)).or_insert_with(|| text.clone());
                    }
                }
            }
        }
        Graph { files: rel, edges }
    }

    /// One line per strongly connected set of files within `scope` (edges between two files of
    /// the scope only) that has more than one file: the files, and one cycle through them with
    /// the import that makes each step.
    fn cycles(&self, scope: &[&str]) -> Vec<String> {
        let inside: Vec<bool> = self.files.iter().map(|f| scope.iter().any(|s| within(f, s))).collect();
        let n = self.files.len();
        let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
        for &(a, b) in self.edges.keys() {
            if inside[a] && inside[b] {
                next[a].push(b);
            }
        }
        let mut out = Vec::new();
        for comp in strongly_connected(&next) {
            if comp.len() < 2 {
                continue;
            }
            let set: BTreeSet<usize> = comp.iter().copied().collect();
            let start = *set.iter().next().unwrap();
            let cycle = shortest_cycle(start, &next, &set);
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    format!(
                        "    {} -> {}  ({})",
                        self.files[w[0]],
                        self.files[w[1]],
                        self.edges[&(w[0], w[1])]
                    )
                })
                .collect();
            let names: Vec<&str> = cycle.iter().map(|&i| self.files[i].as_str()).collect();
            let all: Vec<&str> = set.iter().map(|&i| self.files[i].as_str()).collect();
            out.push(format!(
                "{}\n  files in the circle: {}\n{}",
                names.join(" -> "),
                all.join(", "),
                steps.join("\n")
            ));
        }
        out
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` → `[a, b]`, `src/a/mod.rs` → `[a]`, `src/lib.rs` → `[]`; `None` for `src/main.rs`.
fn module_path(rel: &str) -> Option<Vec<String>> {
    let inner = rel.strip_prefix("src/")?.strip_suffix(".rs")?;
    match inner {
        "lib" => return Some(Vec::new()),
        "main" => return None,
        _ => {}
    }
    let mut segs: Vec<String> = inner.split('/').map(str::to_string).collect();
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    Some(segs)
}

/// The source with comments, string and character literals blanked (newlines kept).
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(k).copied().unwrap_or('\0');
        if at(i) == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if at(i) == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if at(i) == 'r'
            && (at(i + 1) == '"' || (at(i + 1) == '#' && matches!(at(i + 2), '"' | '#')))
            && !(i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            // Raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (1..=hashes).all(|h| at(j + h) == '#') {
                    j += 1 + hashes;
                    break;
                }
                blank(&mut out, c[j]);
                j += 1;
            }
            i = j;
        } else if at(i) == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                }
                i += 1;
            }
            i += 1;
        } else if at(i) == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime ('a), left as it is.
            if at(i + 1) == '\\' {
                let mut j = i + 2;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The code without `#[cfg(test)] mod name { … }` blocks.
fn drop_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(pos) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + "#[cfg(test)]".len()..];
        let t = after.trim_start();
        let t = match t.strip_prefix("pub") {
            // `pub`, `pub(crate)`, `pub(super)`, `pub(in path)`
            Some(v) => match v.trim_start().strip_prefix('(') {
                Some(inner) => inner.split_once(')').map_or(v, |(_, after)| after),
                None => v,
            },
            None => t,
        }
        .trim_start();
        let block = t.strip_prefix("mod ").and_then(|m| {
            let brace = m.find(['{', ';'])?;
            (m.as_bytes()[brace] == b'{').then_some(&m[brace..])
        });
        match block {
            Some(b) => {
                let mut depth = 0;
                let mut end = b.len();
                for (k, ch) in b.char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &b[end..];
            }
            None => {
                out.push_str("#[cfg(test)]");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// The `use` declarations (whether re-exported, and the tree's text) and the code without them.
fn split_uses(code: &str) -> (Vec<(bool, String)>, String) {
    let mut uses = Vec::new();
    let mut rest = String::new();
    let mut i = 0;
    while i < code.len() {
        let starts = code[i..].starts_with("use")
            && (i == 0 || !is_ident(code[..i].chars().next_back().unwrap()))
            && code[i + 3..].starts_with(|ch: char| ch.is_whitespace());
        if starts {
            let end = code[i..].find(';').map_or(code.len(), |e| i + e);
            let before = code[..i].trim_end();
            let public = before.ends_with("pub")
                || (before.ends_with(')')
                    && before
                        .rfind("pub(")
                        .is_some_and(|p| !before[p..].contains([';', '{', '}'])));
            uses.push((public, code[i + 3..end].trim().to_string()));
            i = end + 1;
        } else {
            let ch = code[i..].chars().next().unwrap();
            rest.push(ch);
            i += ch.len_utf8();
        }
    }
    (uses, rest)
}

/// A use tree's leaves: each full path, and the name it brings into scope (`*` for a glob).
fn expand(tree: &str) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    expand_into(&[], tree, &mut out);
    out
}

fn expand_into(prefix: &[String], tree: &str, out: &mut Vec<(Vec<String>, String)>) {
    let tree = tree.trim().trim_start_matches("::");
    let segs_of = |t: &str| -> Vec<String> {
        t.split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    if let Some(open) = tree.find('{') {
        let mut base = prefix.to_vec();
        base.extend(segs_of(&tree[..open]));
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (k, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_into(&base, &inner[start..k], out);
                    start = k + 1;
                }
                _ => {}
            }
        }
        expand_into(&base, &inner[start..], out);
        return;
    }
    if tree.is_empty() {
        return;
    }
    let words: Vec<&str> = tree.split_whitespace().collect();
    let (path, alias) = match words.as_slice() {
        [p, "as", a] => (*p, Some(*a)),
        _ => (tree, None),
    };
    let mut segs = prefix.to_vec();
    segs.extend(segs_of(path));
    if segs.last().is_some_and(|s| s == "self") {
        segs.pop();
    }
    let name = alias
        .map(str::to_string)
        .or_else(|| segs.last().cloned())
        .unwrap_or_default();
    if segs.last().is_some_and(|s| s == "*") {
        segs.pop();
    }
    out.push((segs, name));
}

/// Paths written `crate::…`, `super::…` or `self::…` in code.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    let mut k = 0;
    while k < chars.len() {
        let (i, _) = chars[k];
        let prev_ok = k == 0 || !(is_ident(chars[k - 1].1) || chars[k - 1].1 == ':' || chars[k - 1].1 == '$');
        let head = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|h| code[i..].starts_with(h));
        if let (true, Some(_)) = (prev_ok, head) {
            let mut end = i;
            let rest = &code[i..];
            let mut segs = Vec::new();
            let mut s = rest;
            loop {
                let len = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
                if len == 0 {
                    break;
                }
                segs.push(s[..len].to_string());
                end += len;
                s = &s[len..];
                match s.strip_prefix("::") {
                    Some(t) if t.starts_with(is_ident) => {
                        s = t;
                        end += 2;
                    }
                    _ => break,
                }
            }
            out.push(segs);
            while k < chars.len() && chars[k].0 < end {
                k += 1;
            }
        } else {
            k += 1;
        }
    }
    out
}

/// A path as written in the file of module `me`, made absolute; `None` for other crates.
fn absolute(me: &[String], path: &[String], modules: &HashMap<Vec<String>, usize>) -> Option<Vec<String>> {
    let first = path.first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" => Vec::new(),
        "self" => me.to_vec(),
        "super" => {
            let mut b = me.to_vec();
            let mut segs = path.iter();
            while segs.clone().next().is_some_and(|s| s == "super") {
                b.pop();
                segs.next();
            }
            b.extend(segs.cloned());
            return Some(b);
        }
        _ => {
            let mut child = me.to_vec();
            child.push(first.clone());
            if !modules.contains_key(&child) {
                return None;
            }
            me.to_vec()
        }
    };
    let skip = usize::from(matches!(first.as_str(), "crate" | "self"));
    base.extend(path[skip..].iter().cloned());
    Some(base)
}

/// The file that defines what an absolute path names, through re-exports.
fn resolve(
    abs: &[String],
    modules: &HashMap<Vec<String>, usize>,
    reexports: &[HashMap<String, Vec<String>>],
    depth: usize,
) -> Option<usize> {
    let k = (0..=abs.len()).rev().find(|&k| modules.contains_key(&abs[..k]))?;
    let file = modules[&abs[..k]];
    if k < abs.len() && depth < 16 {
        if let Some(target) = reexports[file].get(&abs[k]) {
            let mut next = target.clone();
            next.extend(abs[k + 1..].iter().cloned());
            if next != abs {
                return resolve(&next, modules, reexports, depth + 1).or(Some(file));
            }
        }
    }
    Some(file)
}

/// Tarjan's strongly connected components.
fn strongly_connected(next: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        next: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.counter);
        s.low[v] = s.counter;
        s.counter += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.next[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            s.out.push(comp);
        }
    }
    let n = next.len();
    let mut s = State {
        next,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        counter: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

/// A shortest cycle through `start` inside `set` (breadth-first), as `start … start`.
fn shortest_cycle(start: usize, next: &[Vec<usize>], set: &BTreeSet<usize>) -> Vec<usize> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &next[v] {
            if !set.contains(&w) {
                continue;
            }
            if w == start {
                let mut path = vec![start];
                let mut x = v;
                while x != start {
                    path.push(x);
                    x = parent[&x];
                }
                path.push(start);
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    vec![start]
}

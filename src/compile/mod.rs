//! Evaluation of a pipeline file into stages: name resolution, `use`, functions, sweeps and checks.
//!
//! The language is evaluated completely at compile time: every expression is a value, and every
//! op call creates one stage. Stages are created in dependency order, so their order is a
//! topological order of the DAG.

mod args;
pub mod compat;
mod exprs;
mod items;
pub mod limits;
mod loading;
pub mod predictions;
mod stage_def;
mod stages;
pub mod stdlib;

use crate::diagnostic::{Diag, Kind};
use crate::source::{FileId, Sources, Span};
use crate::syntax::ast::FnDef;
use crate::value::{ModuleId, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use stage_def::StageDef;

/// The result of compiling one pipeline file.
#[derive(Debug)]
pub struct Compiled {
    /// Every file that was read, for diagnostics.
    pub sources: Sources,
    /// The stages, in a topological order (index = [`crate::value::StageId`]).
    pub stages: Vec<StageDef>,
    /// Everything that is wrong; empty when the file is clean.
    pub diags: Vec<Diag>,
    /// The directory relative paths are resolved against.
    pub root_dir: PathBuf,
}

/// Compiles the pipeline file at `path`.
pub fn compile_file(path: &Path) -> Compiled {
    let display = path.display().to_string();
    match limits::read_source(path) {
        Ok(text) => compile_source(&display, path, text),
        Err(e) => {
            let kind = if e.is_limit() { Kind::Limit } else { Kind::File };
            Compiled {
                sources: Sources::default(),
                stages: Vec::new(),
                diags: vec![Diag::global(kind, format!("cannot read {display}: {e}")).help(e.help())],
                root_dir: PathBuf::from("."),
            }
        }
    }
}

/// Compiles pipeline source text as if it were the file at `path` (which need not exist).
pub fn compile_source(display: &str, path: &Path, text: String) -> Compiled {
    compile_source_with(display, path, text, limits::Caps::default())
}

/// [`compile_source`] under the stage and loop-round limits `caps`.
fn compile_source_with(display: &str, path: &Path, text: String, caps: limits::Caps) -> Compiled {
    // Evaluation recurses along the syntax tree, whose depth the parser bounds; a large stack
    // makes that bound safe in unoptimised builds too.
    let (display, path) = (display.to_string(), path.to_path_buf());
    let worker = std::thread::Builder::new()
        .name("rkd-compile".into())
        .stack_size(256 << 20)
        .spawn(move || compile_on_this_thread(&display, &path, text, caps));
    match worker.map(|h| h.join()) {
        Ok(Ok(compiled)) => compiled,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => panic!("cannot start the compiler thread: {e}"),
    }
}

fn compile_on_this_thread(display: &str, path: &Path, text: String, caps: limits::Caps) -> Compiled {
    let canonical = path.canonicalize().unwrap_or_else(|_| absolute(path));
    let root_dir = canonical.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut c = Compiler::new(root_dir.clone());
    c.caps = caps;
    let file = c.sources.add(display.to_string(), Some(canonical.clone()), text);
    c.loading.push(ModKey::File(canonical));
    c.load_module(file, String::new(), String::new());
    let mut seen = HashSet::new();
    let mut diags: Vec<Diag> = std::mem::take(&mut c.diags)
        .into_iter()
        .filter(|d| {
            seen.insert((
                d.kind.name(),
                d.span.map(|s| (s.file, s.start, s.end)),
                d.message.clone(),
            ))
        })
        .collect();
    diags.sort_by_key(|d| d.span.map(|s| (s.file, s.start)));
    Compiled {
        sources: c.sources,
        stages: c.stages,
        diags,
        root_dir,
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// How a name came to be bound (decides which redeclarations are allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BindKind {
    Let,
    Stage,
    Fn,
    Param,
    Module,
    Import,
    LoopVar,
    /// A stage name inside a loop body before its declaration: the earlier iterations' stages.
    Accumulator,
}

/// A name in scope.
#[derive(Clone, Debug)]
struct Binding {
    value: Value,
    /// Where the name is declared.
    span: Span,
    /// For function parameters: where the argument was written at the call site.
    origin: Option<Span>,
    /// For a `..rest` parameter: where each collected argument was written at the call site.
    field_origins: HashMap<String, Span>,
    kind: BindKind,
}

/// Identifies a module so that each is loaded once and cycles are found.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ModKey {
    Std(String),
    File(PathBuf),
}

struct ModuleData {
    /// Top-level names, filled in as the module is evaluated.
    bindings: HashMap<String, Binding>,
    /// Names declared further down the module than evaluation has reached.
    later: HashMap<String, Span>,
    /// Prefix for labels of models declared in it (`bert::`).
    label_prefix: String,
    file: FileId,
}

struct FnEntry {
    def: Arc<FnDef>,
    module: ModuleId,
}

/// One lexical scope on the evaluation stack.
struct Frame {
    /// Names declared here; `None` for a module's top level (its names live in the module).
    vars: Option<HashMap<String, Binding>>,
    /// Names declared later in this scope; `None` for a module's top level.
    later: Option<HashMap<String, Span>>,
    /// A function's or module's scope: lookups continue in its module's top level, then stop.
    barrier: bool,
    module: ModuleId,
    /// Prepended to the names of stages declared here (`chain/`).
    prefix: String,
    /// Appended to the names of stages declared here (`[t=2.0]`).
    suffix: String,
}

struct Compiler {
    sources: Sources,
    diags: Vec<Diag>,
    stages: Vec<StageDef>,
    modules: Vec<ModuleData>,
    module_index: HashMap<ModKey, ModuleId>,
    loading: loading::Loading,
    fns: Vec<FnEntry>,
    frames: Vec<Frame>,
    dedup: HashMap<[u8; 32], crate::value::StageId>,
    names: HashSet<String>,
    counters: HashMap<String, u32>,
    root_dir: PathBuf,
    depth: usize,
    /// Set when recursion went too deep: calls return at once until the outermost one has.
    aborting: bool,
    /// The stage and loop-round limits.
    caps: limits::Caps,
    /// Loop rounds run so far, against `caps.rounds`.
    rounds: usize,
    /// Set when the pipeline went over the stage or loop limit: loops stop and make no stages.
    over_limit: bool,
    /// What is known about the models of the stages so far.
    compat: compat::Memo,
}

impl Compiler {
    fn new(root_dir: PathBuf) -> Compiler {
        Compiler {
            sources: Sources::default(),
            diags: Vec::new(),
            stages: Vec::new(),
            modules: Vec::new(),
            module_index: HashMap::new(),
            loading: loading::Loading::default(),
            fns: Vec::new(),
            frames: Vec::new(),
            dedup: HashMap::new(),
            names: HashSet::new(),
            counters: HashMap::new(),
            root_dir,
            depth: 0,
            aborting: false,
            caps: limits::Caps::default(),
            rounds: 0,
            over_limit: false,
            compat: compat::Memo::default(),
        }
    }

    fn error(&mut self, d: Diag) {
        self.diags.push(d);
    }

    fn frame(&self) -> &Frame {
        self.frames.last().expect("evaluation always has a frame")
    }

    fn vars_of(&self, i: usize) -> &HashMap<String, Binding> {
        let f = &self.frames[i];
        f.vars.as_ref().unwrap_or(&self.modules[f.module.0 as usize].bindings)
    }

    fn vars_of_mut(&mut self, i: usize) -> &mut HashMap<String, Binding> {
        let f = &mut self.frames[i];
        match f.vars.as_mut() {
            Some(v) => v,
            None => &mut self.modules[f.module.0 as usize].bindings,
        }
    }

    fn later_of_mut(&mut self, i: usize) -> &mut HashMap<String, Span> {
        let f = &mut self.frames[i];
        match f.later.as_mut() {
            Some(v) => v,
            None => &mut self.modules[f.module.0 as usize].later,
        }
    }

    /// Indices of the frames visible from the top, innermost first, and the module reached last.
    fn visible(&self) -> (Vec<usize>, Option<ModuleId>) {
        let mut out = Vec::new();
        for i in (0..self.frames.len()).rev() {
            out.push(i);
            let f = &self.frames[i];
            if f.barrier {
                return (out, f.vars.as_ref().map(|_| f.module));
            }
        }
        (out, None)
    }

    /// Looks a name up in the visible scopes.
    fn lookup(&self, name: &str) -> Option<&Binding> {
        let (frames, module) = self.visible();
        for i in frames {
            if let Some(b) = self.vars_of(i).get(name) {
                return Some(b);
            }
        }
        module.and_then(|m| self.modules[m.0 as usize].bindings.get(name))
    }

    /// Where a visible name is declared further down than evaluation has reached.
    fn declared_later(&self, name: &str) -> Option<Span> {
        let (frames, module) = self.visible();
        for i in frames {
            let f = &self.frames[i];
            let later = f.later.as_ref().unwrap_or(&self.modules[f.module.0 as usize].later);
            if let Some(s) = later.get(name) {
                return Some(*s);
            }
        }
        module.and_then(|m| self.modules[m.0 as usize].later.get(name).copied())
    }

    /// Every visible name, for suggestions.
    fn visible_names(&self) -> Vec<String> {
        let (frames, module) = self.visible();
        let mut names: Vec<String> = frames.iter().flat_map(|&i| self.vars_of(i).keys().cloned()).collect();
        if let Some(m) = module {
            names.extend(self.modules[m.0 as usize].bindings.keys().cloned());
        }
        names
    }

    /// Binds a name in the innermost scope, reporting duplicates and shadowing.
    fn declare(&mut self, name: &crate::syntax::ast::Ident, value: Value, kind: BindKind, origin: Option<Span>) {
        let top = self.frames.len() - 1;
        self.later_of_mut(top).remove(&name.name);
        // Modules live in their own namespace: `use std::bert` and the constructor `bert(...)` coexist.
        if let (Some(op), false) = (crate::registry::lookup(&name.name), kind == BindKind::Module) {
            let what = match op.kind {
                crate::registry::OpKind::Stage(_) => "op",
                crate::registry::OpKind::Function => "function",
                _ => "constructor",
            };
            self.error(
                Diag::new(
                    Kind::Shadowing,
                    name.span,
                    format!("`{}` is the name of a built-in {what}", name.name),
                )
                .label("this would hide it")
                .help("choose another name; `rkd ops` lists the built-in names"),
            );
            return;
        }
        if let Some(prev) = self.vars_of(top).get(&name.name) {
            if prev.kind != BindKind::Accumulator {
                let prev_span = prev.span;
                self.error(
                    Diag::new(
                        Kind::DuplicateName,
                        name.span,
                        format!("`{}` is declared twice", name.name),
                    )
                    .label("second declaration")
                    .note(prev_span, "first declared here")
                    .help("names are unique in their scope; rename one of them"),
                );
                return;
            }
        } else if kind != BindKind::Param {
            if let Some(outer) = self.lookup(&name.name) {
                let outer_span = outer.span;
                self.error(
                    Diag::new(
                        Kind::Shadowing,
                        name.span,
                        format!("`{}` would shadow a name from an enclosing scope", name.name),
                    )
                    .label("declared again here")
                    .note(outer_span, "already declared here")
                    .help("shadowing is not allowed; choose another name"),
                );
                return;
            }
        }
        let binding = Binding {
            value,
            span: name.span,
            origin,
            field_origins: HashMap::new(),
            kind,
        };
        self.vars_of_mut(top).insert(name.name.clone(), binding);
    }

    /// The full display name of a stage declared as `name` in the current scope.
    fn qualify(&self, name: &str) -> String {
        let f = self.frame();
        format!("{}{}{}", f.prefix, name, f.suffix)
    }

    /// A fresh `base#n` name in the current scope.
    fn fresh(&mut self, base: &str) -> String {
        let key = self.qualify(base);
        let n = self.counters.entry(key).or_insert(0);
        *n += 1;
        let n = *n;
        self.qualify(&format!("{base}#{n}"))
    }

    fn display_stage(&self, id: crate::value::StageId) -> String {
        self.stages[id.0 as usize].name.clone()
    }

    fn display(&self, v: &Value) -> String {
        v.display_with(&|id| self.display_stage(id))
    }

    /// A value as a stage name shows it, cut to [`limits::MAX_NAME_VALUE_CHARS`].
    fn display_in_name(&self, v: &Value) -> String {
        v.display_capped(limits::MAX_NAME_VALUE_CHARS, &|id| self.display_stage(id))
    }
}

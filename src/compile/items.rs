//! Items: modules and `use`, `let`, `stage`, `fn`, and the `sweep` and `for` blocks.

use super::{limits, stdlib, BindKind, Compiler, Frame, ModKey, ModuleData};
use crate::diagnostic::{suggestion, Diag, Kind};
use crate::source::{FileId, Span};
use crate::syntax::ast::{Arg, Binding as AstBinding, Expr, ExprKind, For, Ident, Item, Sweep, Use};
use crate::value::{ModuleId, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// One loop iteration: (variable, value, where the value was written) for each variable, and the
/// suffix its stages get.
type Iteration = (Vec<(Ident, Value, Span)>, String);

impl Compiler {
    /// Parses and evaluates a module's file; returns its id, or `None` if it does not parse.
    pub(super) fn load_module(&mut self, file: FileId, label_prefix: String, stage_prefix: String) -> Option<ModuleId> {
        let text = self.sources.get(file).text.clone();
        let ast = match crate::syntax::parse(file, &text) {
            Ok(ast) => ast,
            Err(d) => {
                self.error(d);
                return None;
            }
        };
        let id = ModuleId(self.modules.len() as u32);
        self.modules.push(ModuleData {
            bindings: HashMap::new(),
            later: HashMap::new(),
            label_prefix,
            file,
        });
        self.frames.push(Frame {
            vars: None,
            later: None,
            barrier: true,
            module: id,
            prefix: stage_prefix,
            suffix: String::new(),
        });
        self.eval_items(&ast.items);
        self.frames.pop();
        Some(id)
    }

    /// Evaluates a list of items in the current scope: functions first (they may be called before
    /// their definition), then the rest in order.
    pub(super) fn eval_items(&mut self, items: &[Item]) {
        let top = self.frames.len() - 1;
        let mut later = HashMap::new();
        for item in items {
            declared_names(item, &mut later);
        }
        self.later_of_mut(top).extend(later);
        for item in items {
            if let Item::Fn(def) = item {
                let id = crate::value::FnId(self.fns.len() as u32);
                self.fns.push(super::FnEntry {
                    def: Arc::new(def.clone()),
                    module: self.frame().module,
                });
                self.declare(&def.name, Value::Fn(id), BindKind::Fn, None);
            }
        }
        for item in items {
            self.eval_item(item);
        }
    }

    fn eval_item(&mut self, item: &Item) {
        match item {
            Item::Use(u) => self.eval_use(u),
            Item::Let(b) => {
                let value = self.eval_bound(b);
                let value = match value {
                    Value::Spec(spec) if spec.label.is_none() && matches!(b.value.kind, ExprKind::Call { .. }) => {
                        let prefix = &self.modules[self.frame().module.0 as usize].label_prefix;
                        let mut spec = (*spec).clone();
                        spec.label = Some(format!("{prefix}{}", b.name.name));
                        Value::Spec(Arc::new(spec))
                    }
                    v => v,
                };
                self.declare(&b.name, value, BindKind::Let, None);
            }
            Item::Stage(b) if seeds_arg(b).is_some() => self.eval_seeded(b),
            Item::Stage(b) => {
                let before = self.stages.len();
                let value = self.eval_bound(b);
                let value = match value {
                    Value::Stage(id) => {
                        let name = self.qualify(&b.name.name);
                        if (id.0 as usize) >= before {
                            self.rename_stage(id, name);
                        } else {
                            self.alias_stage(id, name);
                        }
                        Value::Stage(id)
                    }
                    Value::Poison => Value::Poison,
                    other => {
                        let what = other.type_name();
                        let help = if matches!(other, Value::List(_)) {
                            "a `stage` names one stage; bind a list of stages with `let`"
                        } else {
                            "a `stage` is an op call (train, distill, ...) or a function returning one; use `let` for other values"
                        };
                        self.error(
                            Diag::new(
                                Kind::NotAStage,
                                b.value.span,
                                format!("`stage {}` must be one stage, but this is {what}", b.name.name),
                            )
                            .label("not a stage")
                            .help(help),
                        );
                        Value::Poison
                    }
                };
                self.declare(&b.name, value, BindKind::Stage, None);
            }
            Item::Fn(_) => {}
            Item::Sweep(s) => self.eval_sweep(s),
            Item::For(f) => self.eval_for(f),
        }
    }

    /// Evaluates the value of `let`/`stage`, naming what a direct call creates after the binding.
    fn eval_bound(&mut self, b: &AstBinding) -> Value {
        match &b.value.kind {
            ExprKind::Call { callee, args } => self.eval_call(callee, args, b.value.span, Some(&b.name.name)).0,
            _ => self.eval(&b.value).0,
        }
    }

    fn eval_use(&mut self, u: &Use) {
        match u {
            Use::Std { path, group, span } => self.eval_use_std(path, group.as_deref(), *span),
            Use::File { path, path_span, alias } => {
                let value = match self.load_file_module(path, *path_span, &alias.name) {
                    Some(id) => Value::Module(id),
                    None => Value::Poison,
                };
                self.declare(alias, value, BindKind::Module, None);
            }
        }
    }

    fn eval_use_std(&mut self, path: &[Ident], group: Option<&[Ident]>, span: Span) {
        if path[0].name != "std" {
            let d = Diag::new(
                Kind::UnknownModule,
                path[0].span,
                format!("unknown module root `{}`", path[0].name),
            )
            .label("expected `std`")
            .help("standard modules are `use std::NAME`; local files are `use \"file.rkd\" as NAME`");
            self.error(d);
            return;
        }
        let Some(module_name) = path.get(1) else {
            let d = Diag::new(Kind::UnknownModule, span, "`use std` needs a module name")
                .label("which module?")
                .help(format!("the standard modules are {}", std_list()));
            self.error(d);
            return;
        };
        let Some(id) = self.load_std(module_name) else {
            self.bind_poison(module_name, group, path.get(2));
            return;
        };
        // `use std::bert::mini` imports one item; `use std::bert` the module.
        let items: Vec<&Ident> = match (group, path.get(2)) {
            (Some(g), None) => g.iter().collect(),
            (None, Some(item)) => vec![item],
            (None, None) => {
                self.declare(module_name, Value::Module(id), BindKind::Module, None);
                return;
            }
            (_, Some(extra)) => {
                let d = Diag::new(
                    Kind::UnknownModule,
                    extra.span,
                    format!("`std::{}` has no submodules", module_name.name),
                )
                .label("unexpected path segment");
                self.error(d);
                return;
            }
        };
        for item in items {
            let found = self.modules[id.0 as usize]
                .bindings
                .get(&item.name)
                .map(|b| b.value.clone());
            match found {
                Some(v) => self.declare(item, v, BindKind::Import, None),
                None => {
                    let names: Vec<String> = self.modules[id.0 as usize].bindings.keys().cloned().collect();
                    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
                    all.sort();
                    let d = Diag::new(
                        Kind::UnknownName,
                        item.span,
                        format!("`std::{}` has no `{}`", module_name.name, item.name),
                    )
                    .label("not in this module")
                    .maybe_help(
                        suggestion(&item.name, all.iter().copied())
                            .or_else(|| Some(format!("it has: {}", all.join(", ")))),
                    );
                    self.error(d);
                    self.declare(item, Value::Poison, BindKind::Import, None);
                }
            }
        }
    }

    fn bind_poison(&mut self, module: &Ident, group: Option<&[Ident]>, item: Option<&Ident>) {
        match (group, item) {
            (Some(g), _) => g
                .iter()
                .for_each(|i| self.declare(i, Value::Poison, BindKind::Import, None)),
            (None, Some(i)) => self.declare(i, Value::Poison, BindKind::Import, None),
            (None, None) => self.declare(module, Value::Poison, BindKind::Module, None),
        }
    }

    fn load_std(&mut self, name: &Ident) -> Option<ModuleId> {
        let key = ModKey::Std(name.name.clone());
        if let Some(id) = self.module_index.get(&key) {
            return Some(*id);
        }
        let Some(text) = stdlib::source(&name.name) else {
            let names: Vec<&str> = stdlib::MODULES.iter().map(|(n, _)| *n).collect();
            let d = Diag::new(
                Kind::UnknownModule,
                name.span,
                format!("there is no module `std::{}`", name.name),
            )
            .label("unknown module")
            .maybe_help(
                suggestion(&name.name, names).or_else(|| Some(format!("the standard modules are {}", std_list()))),
            );
            self.error(d);
            return None;
        };
        let file = self.sources.add(format!("std::{}", name.name), None, text.to_string());
        self.loading.push(key.clone());
        let id = self.load_module(file, format!("{}::", name.name), format!("{}::", name.name));
        self.loading.pop();
        if let Some(id) = id {
            self.module_index.insert(key, id);
        }
        id
    }

    fn load_file_module(&mut self, written: &str, span: Span, alias: &str) -> Option<ModuleId> {
        let here = self.modules[self.frame().module.0 as usize].file;
        let Some(dir) = self
            .sources
            .get(here)
            .path
            .as_ref()
            .and_then(|p| p.parent())
            .map(|p| p.to_path_buf())
        else {
            let d = Diag::new(Kind::UnknownModule, span, "standard modules cannot import files").label("here");
            self.error(d);
            return None;
        };
        let target = dir.join(written);
        let canonical = match target.canonicalize() {
            Ok(p) => p,
            Err(e) => {
                let d = Diag::new(Kind::File, span, format!("cannot read module \"{written}\": {e}"))
                    .label(format!("looked for {}", target.display()))
                    .help("paths in `use` are relative to the file that contains the `use`");
                self.error(d);
                return None;
            }
        };
        let key = ModKey::File(canonical.clone());
        if let Some(cycle) = self.loading.cycle(&key) {
            let chain: Vec<String> = cycle
                .iter()
                .chain(std::iter::once(&key))
                .map(|k| match k {
                    ModKey::File(p) => p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    ModKey::Std(n) => format!("std::{n}"),
                })
                .collect();
            let d = Diag::new(Kind::ImportCycle, span, format!("import cycle: {}", chain.join(" → ")))
                .label("this import closes the cycle")
                .help("move what both files need into a third file that imports neither");
            self.error(d);
            return None;
        }
        if let Some(id) = self.module_index.get(&key) {
            return Some(*id);
        }
        let text = match limits::read_source(&canonical) {
            Ok(t) => t,
            Err(e) => {
                let kind = if e.is_limit() { Kind::Limit } else { Kind::File };
                let d = Diag::new(kind, span, format!("cannot read module \"{written}\": {e}"))
                    .label(e.label())
                    .help(e.help());
                self.error(d);
                return None;
            }
        };
        let display = pathdiff(&canonical, &self.root_dir);
        let file = self.sources.add(display, Some(canonical), text);
        self.loading.push(key.clone());
        let id = self.load_module(file, format!("{alias}::"), format!("{alias}::"));
        self.loading.pop();
        if let Some(id) = id {
            self.module_index.insert(key, id);
        }
        id
    }

    /// `stage s = op(.., seeds: [1, 2, 3])`: the same as `sweep seed in [1, 2, 3] { stage s =
    /// op(.., seed: seed) }`, one stage per seed named `s[seed=1]`, …, and `s` the list of them.
    fn eval_seeded(&mut self, b: &AstBinding) {
        let (Some((at, seeds_name, seeds)), ExprKind::Call { callee, args }) = (seeds_arg(b), &b.value.kind) else {
            return;
        };
        if let Some(Arg::Named(given, _)) = args.iter().find(|a| matches!(a, Arg::Named(n, _) if n.name == "seed")) {
            self.error(
                Diag::new(Kind::Invalid, given.span, "give `seed:` or `seeds:`, not both")
                    .label("one seed")
                    .help("`seeds: [1, 2, 3]` makes one stage per seed; `seed: 1` one stage"),
            );
            self.declare(&b.name, Value::Poison, BindKind::Stage, None);
            return;
        }
        let var = Ident {
            name: "seed".into(),
            span: seeds_name.span,
        };
        let mut args = args.clone();
        args[at] = Arg::Named(
            var.clone(),
            Expr {
                kind: ExprKind::Path(vec![var.clone()]),
                span: seeds.span,
            },
        );
        let body = vec![Item::Stage(AstBinding {
            name: b.name.clone(),
            value: Expr {
                kind: ExprKind::Call {
                    callee: callee.clone(),
                    args,
                },
                span: b.value.span,
            },
            span: b.span,
        })];
        self.eval_sweep(&Sweep {
            vars: vec![(var, seeds.clone())],
            body,
            span: seeds_name.span,
        });
    }

    fn eval_sweep(&mut self, s: &Sweep) {
        match self.sweep_points(s) {
            Some(iterations) => self.run_block(&s.body, iterations),
            None => self.poison_block_names(&s.body),
        }
    }

    /// A sweep's points, each with its variables' values and its name suffix; `None` (reported)
    /// when a list is empty, holds an invalid value or repeats one, or the points are too many.
    fn sweep_points(&mut self, s: &Sweep) -> Option<Vec<Iteration>> {
        if self.over_limit {
            return None;
        }
        let mut lists = Vec::new();
        for (var, expr) in &s.vars {
            lists.push((var, self.loop_list(expr, "sweep")?));
        }
        let lengths: Vec<usize> = lists.iter().map(|(_, items)| items.len()).collect();
        if !self.take_rounds(&lengths, s.span, "sweep") {
            return None;
        }
        for (var, items) in &lists {
            self.distinct_values(var, items)?;
        }
        // The cartesian product, first variable outermost.
        let mut iterations: Vec<Iteration> = vec![(Vec::new(), String::new())];
        for (var, items) in &lists {
            let mut next = Vec::with_capacity(iterations.len() * items.len());
            for (bound, _) in &iterations {
                for (v, span) in items {
                    let mut b = bound.clone();
                    b.push(((*var).clone(), v.clone(), *span));
                    next.push((b, String::new()));
                }
            }
            iterations = next;
        }
        for it in &mut iterations {
            let parts: Vec<String> =
                it.0.iter()
                    .map(|(var, v, _)| format!("{}={}", var.name, self.display_in_name(v)))
                    .collect();
            it.1 = format!("[{}]", parts.join(","));
        }
        Some(iterations)
    }

    /// Reports the first value a sweep variable takes twice. `None` without a report when a
    /// value is invalid (reported where it was made): invalid values all show as `?`, and the
    /// sweep's points could not be told apart.
    fn distinct_values(&mut self, var: &Ident, items: &[(Value, Span)]) -> Option<()> {
        if items.iter().any(|(v, _)| v.is_poison()) {
            return None;
        }
        let mut seen = HashMap::new();
        for (v, span) in items {
            let shown = self.display(v);
            if let Some(first) = seen.insert(shown.clone(), *span) {
                let d = Diag::new(
                    Kind::Invalid,
                    *span,
                    format!("`{}` takes the value {shown} twice", var.name),
                )
                .label("repeated value")
                .note(first, "first here")
                .help("each sweep point must be distinct");
                self.error(d);
                return None;
            }
        }
        Some(())
    }

    fn eval_for(&mut self, f: &For) {
        let items = match self.over_limit {
            true => None,
            false => self.loop_list(&f.list, "for"),
        };
        let Some(items) = items.filter(|items| self.take_rounds(&[items.len()], f.span, "for")) else {
            self.poison_block_names(&f.body);
            return;
        };
        let iterations = items
            .into_iter()
            .enumerate()
            .map(|(i, (v, span))| (vec![(f.var.clone(), v, span)], format!("[{i}]")))
            .collect();
        self.run_block(&f.body, iterations);
    }

    /// Binds the stage names a loop that does not run would have exported, so that their uses
    /// are not reported again.
    fn poison_block_names(&mut self, body: &[Item]) {
        let mut exported = HashMap::new();
        for item in body {
            block_stage_names(item, &mut exported);
        }
        let mut order: Vec<(String, Span)> = exported.into_iter().collect();
        order.sort_by_key(|(_, s)| s.start);
        for (name, span) in order {
            self.declare(&Ident { name, span }, Value::Poison, BindKind::Stage, None);
        }
    }

    /// Counts a loop's rounds (`lengths` multiplied) against [`limits::MAX_LOOP_ROUNDS`] before
    /// the loop is expanded; reports it at `span` when they do not fit.
    fn take_rounds(&mut self, lengths: &[usize], span: Span, what: &str) -> bool {
        let left = self.caps.rounds - self.rounds;
        match limits::product(lengths) {
            Some(n) if n <= left => {
                self.rounds += n;
                true
            }
            n => {
                self.over_limit = true;
                let d = self.rounds_diag(lengths, n, span, what);
                self.error(d);
                false
            }
        }
    }

    /// The diagnostic for a loop of `n` rounds (`None`: past counting) that does not fit.
    fn rounds_diag(&self, lengths: &[usize], n: Option<usize>, span: Span, what: &str) -> Diag {
        let unit = if what == "sweep" { "points" } else { "rounds" };
        let total = n.map_or_else(|| "too many".to_string(), |n| limits::thousands(n as u64));
        let formula = match lengths {
            [_] => String::new(),
            _ => {
                let shown: Vec<String> = lengths.iter().map(|&l| limits::thousands(l as u64)).collect();
                format!(" ({})", shown.join(" × "))
            }
        };
        let before = match self.rounds {
            0 => String::new(),
            r => format!("; {} ran before this one", limits::thousands(r as u64)),
        };
        Diag::new(
            Kind::Limit,
            span,
            format!("this `{what}` has {total} {unit}{formula}, too many for one pipeline"),
        )
        .label(format!("{total} {unit}"))
        .help(format!(
            "the loops of a pipeline run at most {} rounds in all (sweep points and `for` iterations{before}), \
             and a pipeline has at most {} stages; loop over fewer values, or split the study into several files",
            limits::thousands(self.caps.rounds as u64),
            limits::thousands(self.caps.stages as u64),
        ))
    }

    /// Evaluates the list a loop runs over, with where each item was written.
    fn loop_list(&mut self, expr: &Expr, what: &str) -> Option<Vec<(Value, Span)>> {
        let (value, _) = self.eval(expr);
        match value {
            Value::List(xs) if xs.is_empty() && what == "sweep" => {
                let d = Diag::new(Kind::EmptySweep, expr.span, "sweep over an empty list")
                    .label("no values")
                    .help("a sweep needs at least one value per variable");
                self.error(d);
                None
            }
            Value::List(xs) => {
                let spans: Vec<Span> = match &expr.kind {
                    ExprKind::List(es) if es.len() == xs.len() => es.iter().map(|e| e.span).collect(),
                    _ => vec![expr.span; xs.len()],
                };
                Some(xs.iter().cloned().zip(spans).collect())
            }
            Value::Poison => None,
            other => {
                let d = Diag::new(
                    Kind::Type,
                    expr.span,
                    format!("`{what}` needs a list, but this is {}", other.type_name()),
                )
                .label("not a list")
                .help(format!("write the values as a list: `{what} x in [a, b]`"));
                self.error(d);
                None
            }
        }
    }

    /// Runs a loop body once per iteration; afterwards every stage name declared in the body
    /// names the flat list of its instances.
    fn run_block(&mut self, body: &[Item], iterations: Vec<Iteration>) {
        let mut exported = HashMap::new();
        for item in body {
            block_stage_names(item, &mut exported);
        }
        let mut order: Vec<(String, Span)> = exported.into_iter().collect();
        order.sort_by_key(|(_, s)| s.start);
        // Shared with the accumulator bindings; the frame holding them is dropped before each push,
        // so pushing does not copy the list (unless a stage kept a reference to it).
        let mut instances: Vec<Arc<Vec<Value>>> = (0..order.len()).map(|_| Arc::new(Vec::new())).collect();
        let (prefix, suffix, module) = {
            let f = self.frame();
            (f.prefix.clone(), f.suffix.clone(), f.module)
        };
        for (bound, it_suffix) in iterations {
            if self.over_limit {
                break;
            }
            self.frames.push(Frame {
                vars: Some(HashMap::new()),
                later: Some(HashMap::new()),
                barrier: false,
                module,
                prefix: prefix.clone(),
                suffix: format!("{suffix}{it_suffix}"),
            });
            for (var, value, span) in bound {
                self.declare(&var, value, BindKind::LoopVar, Some(span));
            }
            let top = self.frames.len() - 1;
            for ((name, span), so_far) in order.iter().zip(&instances) {
                let b = super::Binding {
                    value: Value::List(so_far.clone()),
                    span: *span,
                    origin: None,
                    field_origins: HashMap::new(),
                    kind: BindKind::Accumulator,
                };
                self.vars_of_mut(top).insert(name.clone(), b);
            }
            self.eval_items(body);
            let frame = self.frames.pop().expect("pushed above");
            let mut vars = frame.vars.expect("block frames have vars");
            let current: Vec<Option<Value>> = order
                .iter()
                .map(|(name, _)| {
                    vars.remove(name)
                        .filter(|b| b.kind != BindKind::Accumulator)
                        .map(|b| b.value)
                })
                .collect();
            drop(vars);
            for (value, list) in current.into_iter().zip(instances.iter_mut()) {
                match value {
                    Some(Value::List(xs)) => Arc::make_mut(list).extend(xs.iter().cloned()),
                    Some(v) => Arc::make_mut(list).push(v),
                    None => {}
                }
            }
        }
        for ((name, span), list) in order.into_iter().zip(instances) {
            let ident = Ident { name, span };
            self.declare(&ident, Value::List(list), BindKind::Stage, None);
        }
    }
}

/// The `seeds:` argument of a `stage NAME = op(...)` item: its position, name and value.
fn seeds_arg(b: &AstBinding) -> Option<(usize, &Ident, &Expr)> {
    let ExprKind::Call { args, .. } = &b.value.kind else {
        return None;
    };
    args.iter().enumerate().find_map(|(i, a)| match a {
        Arg::Named(name, value) if name.name == "seeds" => Some((i, name, value)),
        _ => None,
    })
}

/// Names an item declares in its scope (loop blocks export their stage names).
fn declared_names(item: &Item, out: &mut HashMap<String, Span>) {
    match item {
        Item::Let(b) | Item::Stage(b) => {
            out.entry(b.name.name.clone()).or_insert(b.name.span);
        }
        Item::Use(Use::File { alias, .. }) => {
            out.entry(alias.name.clone()).or_insert(alias.span);
        }
        Item::Sweep(_) | Item::For(_) => block_stage_names(item, out),
        Item::Use(Use::Std { .. }) | Item::Fn(_) => {}
    }
}

/// Stage names a loop block exports to its enclosing scope.
fn block_stage_names(item: &Item, out: &mut HashMap<String, Span>) {
    match item {
        Item::Stage(b) => {
            out.entry(b.name.name.clone()).or_insert(b.name.span);
        }
        Item::Sweep(Sweep { body, .. }) | Item::For(For { body, .. }) => {
            for i in body {
                block_stage_names(i, out);
            }
        }
        _ => {}
    }
}

fn std_list() -> String {
    stdlib::MODULES
        .iter()
        .map(|(n, _)| format!("std::{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `path` relative to `base` when it is inside it, else the full path.
fn pathdiff(path: &std::path::Path, base: &std::path::Path) -> String {
    path.strip_prefix(base).unwrap_or(path).display().to_string()
}

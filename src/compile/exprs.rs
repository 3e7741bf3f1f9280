//! Expressions: names, operators, indexing, and calls of functions, ops and constructors.

use super::limits::{self, MAX_CALL_DEPTH};
use super::{BindKind, Compiler, Frame};
use crate::diagnostic::{suggestion, Diag, Kind};
use crate::registry::{self, OpKind, OpSchema};
use crate::source::Span;
use crate::syntax::ast::{Arg, BinOp, Expr, ExprKind, Ident};
use crate::value::{FnId, Spec, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A call argument after evaluation: name, value, and where the value was written.
pub(super) type ArgValue = (Ident, Value, Span);

impl Compiler {
    /// Evaluates an expression; returns its value and the span its value was written at (for a
    /// function parameter, the argument at the call site).
    pub(super) fn eval(&mut self, e: &Expr) -> (Value, Span) {
        let v = match &e.kind {
            ExprKind::Int(i) => Value::Int(*i),
            ExprKind::BigInt(digits) => {
                let d = Diag::new(Kind::Range, e.span, format!("integer {digits} is out of range"))
                    .label("does not fit a 64-bit integer")
                    .help(format!(
                        "integers are 64-bit, from {} to {}; for a larger number write a float (`1e26`)",
                        i64::MIN,
                        i64::MAX
                    ));
                self.error(d);
                Value::Poison
            }
            ExprKind::Float(f) if f.is_finite() => Value::Float(*f),
            ExprKind::Float(_) => {
                let d = Diag::new(Kind::Range, e.span, "number is too large").label("not a finite number");
                self.error(d);
                Value::Poison
            }
            ExprKind::Str(s) => Value::str(s),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::Path(path) => return self.eval_path(path, e.span),
            ExprKind::List(items) => {
                let list = Value::list(items.iter().map(|x| self.eval(x).0).collect());
                self.within_limits(list, e.span, "this list")
            }
            ExprKind::Record(entries) => {
                let mut map = BTreeMap::new();
                for (k, x) in entries {
                    let v = self.eval(x).0;
                    if map.insert(k.name.clone(), v).is_some() {
                        let d = Diag::new(
                            Kind::DuplicateName,
                            k.span,
                            format!("field `{}` is given twice", k.name),
                        )
                        .label("again here");
                        self.error(d);
                    }
                }
                self.within_limits(Value::Record(Arc::new(map)), e.span, "this record")
            }
            ExprKind::Call { callee, args } => return self.eval_call(callee, args, e.span, None),
            ExprKind::Binary(op, a, b) => {
                let (x, _) = self.eval(a);
                let (y, _) = self.eval(b);
                self.binary(*op, x, y, e.span)
            }
            ExprKind::Neg(a) => match self.eval(a).0 {
                Value::Int(i) => match i.checked_neg() {
                    Some(n) => Value::Int(n),
                    None => {
                        self.error(
                            Diag::new(Kind::Range, e.span, "integer overflow").label("result does not fit in 64 bits"),
                        );
                        Value::Poison
                    }
                },
                Value::Float(f) => Value::Float(-f),
                Value::Poison => Value::Poison,
                other => {
                    let d = Diag::new(Kind::Type, a.span, format!("cannot negate {}", other.type_name()))
                        .label("not a number");
                    self.error(d);
                    Value::Poison
                }
            },
            ExprKind::Index(list, index) => {
                let (xs, _) = self.eval(list);
                let (i, _) = self.eval(index);
                self.index(xs, i, list.span, index.span)
            }
            ExprKind::Field(record, field) => {
                let (r, _) = self.eval(record);
                self.field(r, field)
            }
        };
        (v, e.span)
    }

    fn binary(&mut self, op: BinOp, x: Value, y: Value, span: Span) -> Value {
        use Value::*;
        let result = match (op, &x, &y) {
            (_, Poison, _) | (_, _, Poison) => return Poison,
            (BinOp::Add, List(_), List(_)) | (BinOp::Add, Str(_), Str(_)) => Some(self.concat(&x, &y, span)),
            (op, Int(a), Int(b)) => match op {
                BinOp::Add => a.checked_add(*b).map(Int),
                BinOp::Sub => a.checked_sub(*b).map(Int),
                BinOp::Mul => a.checked_mul(*b).map(Int),
                BinOp::Div if *b == 0 => {
                    self.error(Diag::new(Kind::Invalid, span, "division by zero").label("divides by 0"));
                    return Poison;
                }
                BinOp::Div => Some(Float(*a as f64 / *b as f64)),
            }
            .or_else(|| {
                self.error(Diag::new(Kind::Range, span, "integer overflow").label("result does not fit in 64 bits"));
                Some(Poison)
            }),
            (op, a, b) if a.as_f64().is_some() && b.as_f64().is_some() => {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                let r = match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                };
                if r.is_finite() {
                    Some(Float(r))
                } else {
                    self.error(Diag::new(Kind::Invalid, span, "the result is not a finite number").label("here"));
                    Some(Poison)
                }
            }
            _ => None,
        };
        result.unwrap_or_else(|| {
            let help = if op == BinOp::Add && (matches!(x, Stage(_)) || matches!(y, Stage(_))) {
                "to add a stage to a list, wrap it in brackets: `[stage] + list`"
            } else {
                "`+` adds numbers, joins strings and concatenates lists; `-`, `*`, `/` work on numbers"
            };
            let d = Diag::new(
                Kind::Type,
                span,
                format!(
                    "cannot apply `{}` to {} and {}",
                    op.symbol(),
                    x.type_name(),
                    y.type_name()
                ),
            )
            .label("mismatched operands")
            .help(help);
            self.error(d);
            Poison
        })
    }

    /// `x + y` for two lists or two strings, refused before allocating when the result would be
    /// over the size limits.
    fn concat(&mut self, x: &Value, y: &Value, span: Span) -> Value {
        let mut budget = limits::Budget::default();
        let (what, fits) = match (x, y) {
            (Value::Str(a), Value::Str(b)) => ("this string", budget.text_bytes(a.len().saturating_add(b.len()))),
            _ => ("this list", budget.take(x).and_then(|()| budget.take(y))),
        };
        if let Err(over) = fits {
            self.over_size(over, span, what);
            return Value::Poison;
        }
        match (x, y) {
            (Value::Str(a), Value::Str(b)) => Value::str(&format!("{a}{b}")),
            (Value::List(a), Value::List(b)) => Value::list(a.iter().chain(b.iter()).cloned().collect()),
            _ => unreachable!("concat is called with two lists or two strings"),
        }
    }

    /// `v`, or poison and a diagnostic at `span` when it is over the size limits.
    pub(super) fn within_limits(&mut self, v: Value, span: Span, what: &str) -> Value {
        match limits::check_size(&v) {
            Ok(()) => v,
            Err(over) => {
                self.over_size(over, span, what);
                Value::Poison
            }
        }
    }

    fn over_size(&mut self, over: limits::Over, span: Span, what: &str) {
        let d = Diag::new(Kind::Limit, span, over.message(what))
            .label("too large")
            .help(over.help());
        self.error(d);
    }

    /// Whether one more stage fits in the pipeline; reports the call at `span` when not.
    fn room_for_stage(&mut self, span: Span) -> bool {
        if self.stages.len() < self.caps.stages {
            return true;
        }
        self.over_limit = true;
        let max = limits::thousands(self.caps.stages as u64);
        let d = Diag::new(
            Kind::Limit,
            span,
            format!(
                "this call would make stage {} of a pipeline that may have {max}",
                limits::thousands(self.stages.len() as u64 + 1)
            ),
        )
        .label("one stage too many")
        .help("make fewer stages (fewer sweep values or loop rounds), or split the study into several pipeline files");
        self.error(d);
        false
    }

    fn index(&mut self, xs: Value, i: Value, list_span: Span, index_span: Span) -> Value {
        match (xs, i) {
            (Value::Poison, _) | (_, Value::Poison) => Value::Poison,
            (Value::List(xs), Value::Int(i)) => {
                let n = xs.len() as i64;
                let j = if i < 0 { n + i } else { i };
                if (0..n).contains(&j) {
                    xs[j as usize].clone()
                } else {
                    let d = Diag::new(
                        Kind::Index,
                        index_span,
                        format!(
                            "index {i} is out of range for a list of {n} item{}",
                            if n == 1 { "" } else { "s" }
                        ),
                    )
                    .label("out of range")
                    .help(match n {
                        0 => "the list is empty".to_string(),
                        1 => "the only valid indices are 0 and -1".to_string(),
                        _ => format!("valid indices are 0 to {}, or -{n} to -1 counting from the end", n - 1),
                    });
                    self.error(d);
                    Value::Poison
                }
            }
            (Value::List(_), other) => {
                let d = Diag::new(
                    Kind::Type,
                    index_span,
                    format!("a list index must be an integer, not {}", other.type_name()),
                )
                .label("not an integer");
                self.error(d);
                Value::Poison
            }
            (other, _) => {
                let d = Diag::new(Kind::Index, list_span, format!("cannot index {}", other.type_name()))
                    .label("not a list");
                self.error(d);
                Value::Poison
            }
        }
    }

    fn field(&mut self, r: Value, field: &Ident) -> Value {
        let fields = match &r {
            Value::Poison => return Value::Poison,
            Value::Record(m) => m.as_ref(),
            Value::Spec(s) => &s.params,
            other => {
                let help = if matches!(other, Value::Stage(_)) {
                    "a stage's results exist only once it has run; pass the stage itself to the next op"
                } else {
                    "fields exist on records and on model and dataset specs"
                };
                let d = Diag::new(Kind::Type, field.span, format!("{} has no fields", other.type_name()))
                    .label("no field here")
                    .help(help);
                self.error(d);
                return Value::Poison;
            }
        };
        match fields.get(&field.name) {
            Some(v) => v.clone(),
            None => {
                let names: Vec<&str> = fields.keys().map(String::as_str).collect();
                let help = suggestion(&field.name, names.iter().copied())
                    .unwrap_or_else(|| format!("fields: {}", names.join(", ")));
                let d = Diag::new(Kind::UnknownName, field.span, format!("no field `{}`", field.name))
                    .label("unknown field")
                    .help(help);
                self.error(d);
                Value::Poison
            }
        }
    }

    /// Resolves `name` or `module::name`.
    fn eval_path(&mut self, path: &[Ident], span: Span) -> (Value, Span) {
        let first = &path[0];
        let (mut value, origin) = match self.lookup(&first.name) {
            Some(b) => (b.value.clone(), b.origin.unwrap_or(span)),
            None => match registry::lookup(&first.name) {
                Some(op) if path.len() == 1 => (Value::Builtin(op), span),
                _ => {
                    self.unknown_name(first, path.len() > 1);
                    return (Value::Poison, span);
                }
            },
        };
        for seg in &path[1..] {
            value = match value {
                Value::Module(m) => match self.modules[m.0 as usize].bindings.get(&seg.name) {
                    Some(b) => b.value.clone(),
                    None => {
                        let mut names: Vec<&str> =
                            self.modules[m.0 as usize].bindings.keys().map(String::as_str).collect();
                        names.sort();
                        let help = suggestion(&seg.name, names.iter().copied())
                            .unwrap_or_else(|| format!("it has: {}", names.join(", ")));
                        let d = Diag::new(
                            Kind::UnknownName,
                            seg.span,
                            format!("module `{}` has no `{}`", first.name, seg.name),
                        )
                        .label("not in this module")
                        .help(help);
                        self.error(d);
                        return (Value::Poison, span);
                    }
                },
                Value::Poison => return (Value::Poison, span),
                other => {
                    let d = Diag::new(
                        Kind::Type,
                        seg.span,
                        format!(
                            "`::` needs a module on its left, but `{}` is {}",
                            first.name,
                            other.type_name()
                        ),
                    )
                    .label("not in a module")
                    .help("use `.` for fields of records");
                    self.error(d);
                    return (Value::Poison, span);
                }
            };
        }
        (value, if path.len() == 1 { origin } else { span })
    }

    fn unknown_name(&mut self, name: &Ident, is_module: bool) {
        if let Some(decl) = self.declared_later(&name.name) {
            let d = Diag::new(
                Kind::UsedBeforeDeclared,
                name.span,
                format!("`{}` is used before it is declared", name.name),
            )
            .label("used here")
            .note(decl, "declared here, later")
            .help("move the declaration above its first use");
            self.error(d);
            return;
        }
        let is_std = super::stdlib::source(&name.name).is_some();
        let python = match name.name.as_str() {
            "True" => Some("booleans are lowercase: `true`"),
            "False" => Some("booleans are lowercase: `false`"),
            "None" | "null" | "nil" => Some("there is no null value: leave the argument out to take its default"),
            _ => None,
        };
        let help = if let Some(h) = python {
            Some(h.to_string())
        } else if is_std {
            Some(format!(
                "`{0}` is a standard module: add `use std::{0}` at the top of the file",
                name.name
            ))
        } else {
            let names = self.visible_names();
            suggestion(&name.name, names.iter().map(String::as_str))
        };
        let what = if is_module || is_std { "module" } else { "name" };
        let d = Diag::new(Kind::UnknownName, name.span, format!("unknown {what} `{}`", name.name))
            .label("not found in this scope")
            .maybe_help(help);
        self.error(d);
    }

    /// Evaluates a call. `bind` is the name the call is bound to (`let NAME = f(...)`), which
    /// names the stages the call creates.
    pub(super) fn eval_call(
        &mut self,
        callee: &[Ident],
        args: &[Arg],
        span: Span,
        bind: Option<&str>,
    ) -> (Value, Span) {
        let unbound = match self.lookup(&callee[0].name) {
            None => true,
            Some(b) => matches!(b.value, Value::Module(_)) && callee.len() == 1,
        };
        let target = if callee.len() == 1 && unbound {
            match registry::lookup(&callee[0].name) {
                Some(op) => Value::Builtin(op),
                None => {
                    if self.declared_later(&callee[0].name).is_some() {
                        self.unknown_name(&callee[0], false);
                    } else {
                        let mut names: Vec<String> = registry::REGISTRY.iter().map(|s| s.name.to_string()).collect();
                        names.extend(self.visible_names());
                        let help = suggestion(&callee[0].name, names.iter().map(String::as_str))
                            .or_else(|| Some("`rkd ops` lists the ops and constructors".to_string()));
                        let d = Diag::new(
                            Kind::UnknownOp,
                            callee[0].span,
                            format!("unknown op or function `{}`", callee[0].name),
                        )
                        .label("not an op, constructor or function")
                        .maybe_help(help);
                        self.error(d);
                    }
                    self.eval_args(args);
                    return (Value::Poison, span);
                }
            }
        } else {
            let path_span = callee[0].span.to(callee[callee.len() - 1].span);
            self.eval_path(callee, path_span).0
        };
        let args = self.eval_args(args);
        let value = match target {
            Value::Builtin(op) => self.call_builtin(op, args, span, bind),
            Value::Fn(id) => self.call_fn(id, args, span, bind),
            Value::Poison => Value::Poison,
            other => {
                let name = callee.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join("::");
                let d = Diag::new(
                    Kind::Type,
                    span,
                    format!("`{name}` is {}, not something to call", other.type_name()),
                )
                .label("not callable");
                self.error(d);
                Value::Poison
            }
        };
        (value, span)
    }

    /// Evaluates arguments: keyword ones as they are, `..record` spread into keywords. Positional
    /// arguments are reported (calls take keywords only).
    fn eval_args(&mut self, args: &[Arg]) -> Option<Vec<ArgValue>> {
        let mut out = Vec::new();
        let mut ok = true;
        for a in args {
            match a {
                Arg::Named(name, e) => {
                    let (v, origin) = self.eval(e);
                    out.push((name.clone(), v, origin));
                }
                Arg::Spread(e) => match self.eval(e).0 {
                    Value::Record(fields) => {
                        // A spread `..rest` parameter remembers where each argument was written.
                        let origins = match &e.kind {
                            ExprKind::Path(p) if p.len() == 1 => {
                                self.lookup(&p[0].name).map(|b| b.field_origins.clone())
                            }
                            _ => None,
                        }
                        .unwrap_or_default();
                        for (k, v) in fields.iter() {
                            let origin = origins.get(k).copied().unwrap_or(e.span);
                            out.push((
                                Ident {
                                    name: k.clone(),
                                    span: origin,
                                },
                                v.clone(),
                                origin,
                            ));
                        }
                    }
                    Value::Poison => ok = false,
                    other => {
                        let d = Diag::new(
                            Kind::Type,
                            e.span,
                            format!("`..` spreads a record, but this is {}", other.type_name()),
                        )
                        .label("not a record");
                        self.error(d);
                        ok = false;
                    }
                },
                Arg::Positional(e) => {
                    self.eval(e);
                    let d = Diag::new(Kind::PositionalArg, e.span, "arguments must be named")
                        .label("no parameter name")
                        .help("write `name: value`; every op and function takes keyword arguments only");
                    self.error(d);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn call_builtin(
        &mut self,
        op: &'static OpSchema,
        args: Option<Vec<ArgValue>>,
        span: Span,
        bind: Option<&str>,
    ) -> Value {
        let Some(args) = args else {
            return Value::Poison;
        };
        let spans: BTreeMap<String, Span> = args.iter().map(|(n, _, s)| (n.name.clone(), *s)).collect();
        let Some(params) = self.check_args(op, args, span) else {
            return Value::Poison;
        };
        if matches!(op.kind, OpKind::Stage(_)) && (self.over_limit || !self.room_for_stage(span)) {
            return Value::Poison;
        }
        if matches!(op.kind, OpKind::Stage(_)) && !self.models_fit(op, &params, &spans, span) {
            return Value::Poison;
        }
        let params = match op.name {
            "distill" | "fuse" => self.add_predictions(op.name, params, &spans, span),
            _ => params,
        };
        match op.kind {
            OpKind::Stage(_) => Value::Stage(self.create_stage(op, params, spans, span, bind)),
            OpKind::Model | OpKind::Dataset => Value::Spec(Arc::new(Spec {
                ctor: op,
                params,
                label: None,
            })),
            OpKind::Function => self.call_function(op, params, &spans, span),
        }
    }

    fn call_function(
        &mut self,
        op: &'static OpSchema,
        params: crate::value::Params,
        spans: &BTreeMap<String, Span>,
        span: Span,
    ) -> Value {
        match op.name {
            "env" => {
                let name = params.get("name").map(|v| v.to_string()).unwrap_or_default();
                if !is_env_name(&name) {
                    let at = spans.get("name").copied().unwrap_or(span);
                    let d = Diag::new(
                        Kind::Invalid,
                        at,
                        format!(
                            "\"{}\" cannot be the name of an environment variable",
                            crate::text::cell(&name)
                        ),
                    )
                    .label("not a variable name")
                    .help("a variable's name is not empty and has no `=` or NUL character, e.g. `RKD_DATA`");
                    self.error(d);
                    return Value::Poison;
                }
                match (std::env::var(&name), params.get("default")) {
                    (Ok(v), _) => Value::str(&v),
                    // Set, but not text: a fallback would hide the mistake.
                    (Err(std::env::VarError::NotUnicode(raw)), _) => {
                        let at = spans.get("name").copied().unwrap_or(span);
                        let d = Diag::new(
                            Kind::Invalid,
                            at,
                            format!("environment variable `{name}` is set but is not valid UTF-8"),
                        )
                        .label("not UTF-8")
                        .help(format!(
                            "its value reads \"{}\" (� marks bytes that are not UTF-8); rkd reads variables as UTF-8 text",
                            crate::text::cell(&raw.to_string_lossy())
                        ));
                        self.error(d);
                        Value::Poison
                    }
                    (Err(_), Some(d)) => d.clone(),
                    (Err(_), None) => {
                        let at = spans.get("name").copied().unwrap_or(span);
                        let d = Diag::new(Kind::Invalid, at, format!("environment variable `{name}` is not set"))
                            .label("unset")
                            .help(format!(
                                "set it (`export {name}=...`) or give a fallback with `default:`"
                            ));
                        self.error(d);
                        Value::Poison
                    }
                }
            }
            "len" => match params.get("of") {
                Some(Value::List(xs)) => Value::Int(xs.len() as i64),
                _ => Value::Poison,
            },
            "range" => match (params.get("start"), params.get("end")) {
                (Some(Value::Int(s)), Some(Value::Int(e))) => Value::list((*s..*e).map(Value::Int).collect()),
                _ => Value::Poison,
            },
            other => unreachable!("built-in function `{other}` has no implementation"),
        }
    }

    fn call_fn(&mut self, id: FnId, args: Option<Vec<ArgValue>>, span: Span, bind: Option<&str>) -> Value {
        let Some(args) = args else {
            return Value::Poison;
        };
        let entry = &self.fns[id.0 as usize];
        let (def, module) = (entry.def.clone(), entry.module);
        if self.aborting {
            return Value::Poison;
        }
        if self.depth >= MAX_CALL_DEPTH {
            self.aborting = true;
            let d = Diag::new(Kind::Recursion, span, format!("calls of `{}` nest more than {MAX_CALL_DEPTH} deep", def.name.name))
                .label("too deep")
                .note(def.name.span, "function defined here")
                .help("a function that calls itself never stops: the language has no conditionals; use `for` over a list instead");
            self.error(d);
            return Value::Poison;
        }
        let prefix = match bind {
            Some(name) => format!("{}/", self.qualify(name)),
            None => format!("{}/", self.fresh(&def.name.name)),
        };
        let mut given: HashMap<String, (Ident, Value, Span)> = HashMap::new();
        let mut extra = BTreeMap::new();
        let mut extra_origins = HashMap::new();
        for (name, v, origin) in args {
            if def.params.iter().any(|p| p.name.name == name.name) {
                if given.contains_key(&name.name) {
                    let d = Diag::new(
                        Kind::DuplicateName,
                        name.span,
                        format!("argument `{}` is given twice", name.name),
                    )
                    .label("again here");
                    self.error(d);
                    continue;
                }
                given.insert(name.name.clone(), (name, v, origin));
            } else if def.rest.is_some() {
                extra_origins.insert(name.name.clone(), origin);
                if extra.insert(name.name.clone(), v).is_some() {
                    let d = Diag::new(
                        Kind::DuplicateName,
                        name.span,
                        format!("argument `{}` is given twice", name.name),
                    )
                    .label("again here");
                    self.error(d);
                }
            } else {
                let names: Vec<&str> = def.params.iter().map(|p| p.name.name.as_str()).collect();
                let help = suggestion(&name.name, names.iter().copied())
                    .unwrap_or_else(|| format!("`{}` takes: {}", def.name.name, names.join(", ")));
                let d = Diag::new(
                    Kind::UnknownParam,
                    name.span,
                    format!("`{}` has no parameter `{}`", def.name.name, name.name),
                )
                .label("unknown parameter")
                .note(def.name.span, "function defined here")
                .help(help);
                self.error(d);
            }
        }
        self.frames.push(Frame {
            vars: Some(HashMap::new()),
            later: Some(HashMap::new()),
            barrier: true,
            module,
            prefix,
            suffix: String::new(),
        });
        self.depth += 1;
        let mut missing = Vec::new();
        for p in &def.params {
            let (value, origin) = match given.remove(&p.name.name) {
                Some((_, v, origin)) => (v, Some(origin)),
                None => match &p.default {
                    Some(e) => (self.eval(e).0, None),
                    None => {
                        missing.push(p.name.name.clone());
                        (Value::Poison, None)
                    }
                },
            };
            self.declare(&p.name, value, BindKind::Param, origin);
        }
        if let Some(rest) = &def.rest {
            let collected = self.within_limits(Value::Record(Arc::new(extra)), span, "the record of other arguments");
            self.declare(rest, collected, BindKind::Param, None);
            let top = self.frames.len() - 1;
            if let Some(b) = self.vars_of_mut(top).get_mut(&rest.name) {
                b.field_origins = extra_origins;
            }
        }
        let result = if missing.is_empty() {
            self.eval_items(&def.body);
            self.eval(&def.result).0
        } else {
            let list = missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ");
            let d = Diag::new(
                Kind::MissingArg,
                span,
                format!(
                    "`{}` is missing {} {list}",
                    def.name.name,
                    if missing.len() == 1 { "argument" } else { "arguments" }
                ),
            )
            .label("in this call")
            .note(def.name.span, "function defined here")
            .help(format!(
                "add {}",
                missing
                    .iter()
                    .map(|m| format!("`{m}: ...`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            self.error(d);
            Value::Poison
        };
        self.depth -= 1;
        if self.depth == 0 {
            self.aborting = false;
        }
        self.frames.pop();
        result
    }
}

/// Whether an environment variable can have this name: not empty, no `=` and no NUL (the
/// environment cannot hold such a name, so `env` would report it unset whatever one did).
fn is_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

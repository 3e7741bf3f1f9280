//! Checking a call's keyword arguments against an op's schema: names, types, ranges, defaults.

use super::exprs::ArgValue;
use super::Compiler;
use crate::diagnostic::{suggestion, Diag, Kind};
use crate::registry::{OpKind, OpSchema, Output, ParamSchema, Range, Ty};
use crate::source::Span;
use crate::value::{Params, PathValue, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a value does not fit a type: the message, the label, and an optional hint.
struct Mismatch {
    message: String,
    help: Option<String>,
}

impl Compiler {
    /// Checks and completes the arguments of a call of `op`; `None` when something is wrong
    /// (the problems are reported).
    pub(super) fn check_args(&mut self, op: &'static OpSchema, args: Vec<ArgValue>, call: Span) -> Option<Params> {
        let mut params = Params::new();
        let mut spans: BTreeMap<&'static str, Span> = BTreeMap::new();
        let mut ok = true;
        for (name, value, origin) in args {
            let Some(param) = op.param(&name.name) else {
                let names: Vec<&str> = op.params.iter().map(|p| p.name).collect();
                let help = suggestion(&name.name, names.iter().copied())
                    .unwrap_or_else(|| format!("`{}` takes: {}", op.name, names.join(", ")));
                let d = Diag::new(
                    Kind::UnknownParam,
                    name.span,
                    format!("`{}` has no parameter `{}`", op.name, name.name),
                )
                .label("unknown parameter")
                .help(help);
                self.error(d);
                ok = false;
                continue;
            };
            if params.contains_key(param.name) {
                let d = Diag::new(
                    Kind::DuplicateName,
                    name.span,
                    format!("argument `{}` is given twice", name.name),
                )
                .label("again here");
                self.error(d);
                ok = false;
                continue;
            }
            if value.is_poison() {
                ok = false;
                continue;
            }
            match self.check_value(&param.ty, value, origin) {
                Ok(v) => {
                    if let Some(problem) = self.out_of_range(param, &v) {
                        let mut help = format!("{}: {}", param.name, param.doc);
                        if above_max(param, &v) {
                            help.push_str(
                                "; rkd bounds sizes so that a stage never overflows or asks for absurd memory",
                            );
                        }
                        let d = Diag::new(Kind::Range, origin, format!("`{}` {problem}", param.name))
                            .label("out of range")
                            .help(help);
                        self.error(d);
                        ok = false;
                    }
                    spans.insert(param.name, origin);
                    params.insert(param.name.to_string(), v);
                }
                Err(m) => {
                    let d = Diag::new(
                        Kind::Type,
                        origin,
                        format!("`{}` of `{}` {}", param.name, op.name, m.message),
                    )
                    .label(format!("expected {}", ty_phrase(&param.ty)))
                    .maybe_help(m.help);
                    self.error(d);
                    ok = false;
                }
            }
        }
        let missing: Vec<&ParamSchema> = op
            .params
            .iter()
            .filter(|p| matches!(p.default, crate::registry::Default::Required) && !params.contains_key(p.name))
            .collect();
        if !missing.is_empty() && ok {
            let list = missing
                .iter()
                .map(|p| format!("`{}`", p.name))
                .collect::<Vec<_>>()
                .join(", ");
            let help = missing
                .iter()
                .map(|p| format!("`{}: ...`, {}", p.name, p.doc))
                .collect::<Vec<_>>()
                .join("; ");
            let d = Diag::new(
                Kind::MissingArg,
                call,
                format!(
                    "`{}` is missing required {} {list}",
                    op.name,
                    if missing.len() == 1 { "argument" } else { "arguments" }
                ),
            )
            .label("in this call")
            .help(format!("add {help}"));
            self.error(d);
        }
        if !ok || !missing.is_empty() {
            return None;
        }
        // Defaults that depend on other arguments first (they see only what was given), then the
        // schema's defaults for the rest.
        if let Some(derive) = op.derive {
            derive(&mut params);
        }
        for p in op.params {
            if !params.contains_key(p.name) {
                if let Some(v) = Value::from_default(&p.default) {
                    params.insert(p.name.to_string(), v);
                }
            }
        }
        if let Some(check) = op.check {
            let problems = check(&params);
            for (param, message) in &problems {
                let at = spans.get(param).copied().unwrap_or(call);
                let d = Diag::new(Kind::Invalid, at, message.clone())
                    .label("does not fit the other arguments")
                    .help(format!("`rkd ops {}` documents the parameters", op.name));
                self.error(d);
            }
            if !problems.is_empty() {
                return None;
            }
        }
        Some(params)
    }

    fn out_of_range(&self, param: &ParamSchema, v: &Value) -> Option<String> {
        let range: Range = param.range?;
        match v {
            Value::List(xs) if !range.contains(xs.len() as f64) => Some(format!(
                "needs a list with length {}, got {} item{}",
                range.describe(),
                xs.len(),
                if xs.len() == 1 { "" } else { "s" }
            )),
            Value::Int(_) | Value::Float(_) => {
                let x = v.as_f64()?;
                (!range.contains(x)).then(|| format!("must be {}, got {}", describe_bound(&range), v))
            }
            _ => None,
        }
    }

    /// Checks one value against a type, converting where the language allows (int → float,
    /// string → path).
    fn check_value(&self, ty: &Ty, v: Value, origin: Span) -> Result<Value, Mismatch> {
        let got = |v: &Value| format!("expects {}, but got {}", ty_phrase(ty), self.describe_value(v));
        let plain = |v: &Value| {
            Err(Mismatch {
                message: got(v),
                help: None,
            })
        };
        match (ty, v) {
            (Ty::Any, v) => Ok(v),
            (Ty::Int, Value::Int(i)) => Ok(Value::Int(i)),
            (Ty::Int, Value::Float(f)) => Err(Mismatch {
                message: got(&Value::Float(f)),
                help: (f.fract() == 0.0 && f.abs() < 1e15).then(|| format!("write it without the decimal point: `{}`", f as i64)),
            }),
            (Ty::Float, Value::Int(i)) => Ok(Value::Float(i as f64)),
            (Ty::Float, Value::Float(f)) => Ok(Value::Float(if f == 0.0 { 0.0 } else { f })),
            (Ty::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
            (Ty::Str, Value::Str(s)) => Ok(Value::Str(s)),
            (Ty::Enum(options), Value::Str(s)) => {
                if options.contains(&s.as_ref()) {
                    Ok(Value::Str(s))
                } else {
                    Err(Mismatch {
                        message: format!("does not accept \"{s}\"; it takes {}", ty.describe()),
                        help: suggestion(&s, options.iter().copied()),
                    })
                }
            }
            (Ty::Path, Value::Str(s)) => {
                // `components()` drops `.` segments and trailing slashes.
                let resolved = self.root_dir.join(s.as_ref()).components().collect();
                Ok(Value::Path(Arc::new(PathValue {
                    written: s.to_string(),
                    resolved,
                    span: origin,
                })))
            }
            (Ty::Path, Value::Path(p)) => Ok(Value::Path(p)),
            (Ty::Record, Value::Record(r)) => match r.values().find(|x| !x.is_data()) {
                None => Ok(Value::Record(r)),
                Some(x) => Err(Mismatch {
                    message: format!("expects a record of plain values, but a field holds {}", x.type_name()),
                    help: Some("record fields hold numbers, strings, bools, lists, records, models, datasets or stages".into()),
                }),
            },
            (Ty::List(inner), Value::List(xs)) => {
                let mut out = Vec::with_capacity(xs.len());
                for (i, x) in xs.iter().enumerate() {
                    match self.check_value(inner, x.clone(), origin) {
                        Ok(v) => out.push(v),
                        Err(m) => {
                            return Err(Mismatch {
                                message: format!("expects {}, but item {i} is {}", ty_phrase(ty), self.describe_value(x)),
                                help: m.help,
                            })
                        }
                    }
                }
                Ok(Value::list(out))
            }
            (Ty::Model, Value::Stage(id)) => match self.stages[id.0 as usize].op.kind {
                OpKind::Stage(Output::Model) => Ok(Value::Stage(id)),
                OpKind::Stage(out) => Err(Mismatch {
                    message: format!("expects a trained model, but stage `{}` outputs {}", self.display_stage(id), out.name()),
                    help: Some("pass a stage made by train, distill, fuse, qlora or prune".into()),
                }),
                _ => plain(&Value::Stage(id)),
            },
            (Ty::Model, Value::Spec(s)) if s.ctor.kind == OpKind::Model => {
                if matches!(s.ctor.name, "pretrained" | "hf") {
                    Ok(Value::Spec(s))
                } else {
                    let shown = s.label.clone().unwrap_or_else(|| format!("{}(...)", s.ctor.name));
                    Err(Mismatch {
                        message: format!("expects trained weights, but `{shown}` is an untrained architecture"),
                        help: Some(format!(
                            "train it first, e.g. `stage teacher = train(model: {shown}, data: ...)`, or load a checkpoint with `pretrained(path: ...)`"
                        )),
                    })
                }
            }
            (Ty::Arch | Ty::Init, Value::Spec(s)) if s.ctor.kind == OpKind::Model => Ok(Value::Spec(s)),
            (Ty::Init, Value::Stage(id)) => self.check_value(&Ty::Model, Value::Stage(id), origin),
            (Ty::Arch, Value::Stage(id)) => Err(Mismatch {
                message: format!("expects an architecture like `bert::mini`, but got stage `{}`", self.display_stage(id)),
                help: Some("a trained stage can be a teacher or a base; a student is an architecture (or a `pretrained(path: ...)` checkpoint)".into()),
            }),
            (Ty::Dataset, Value::Spec(s)) if s.ctor.kind == OpKind::Dataset => Ok(Value::Spec(s)),
            (Ty::Stage, Value::Stage(id)) => Ok(Value::Stage(id)),
            (_, v) => plain(&v),
        }
    }

    fn describe_value(&self, v: &Value) -> String {
        match v {
            Value::Stage(id) => {
                let s = &self.stages[id.0 as usize];
                format!("stage `{}` ({})", s.name, s.op.name)
            }
            Value::Spec(s) => match &s.label {
                Some(l) => format!("`{l}`, {}", v.type_name()),
                None => v.type_name(),
            },
            Value::Float(f) => format!("the float {f:?}"),
            Value::Int(i) => format!("the integer {i}"),
            Value::Str(s) => format!("the string \"{s}\""),
            Value::Bool(b) => format!("`{b}`"),
            other => other.type_name(),
        }
    }
}

/// "an integer", "a list of models", ... for messages.
fn ty_phrase(ty: &Ty) -> String {
    match ty {
        Ty::Int => "an integer".into(),
        Ty::Float => "a number".into(),
        Ty::Bool => "`true` or `false`".into(),
        Ty::Str => "a string".into(),
        Ty::Enum(_) => format!("one of {}", ty.describe()),
        Ty::Path => "a path string".into(),
        Ty::List(inner) => format!("a list of {}", plural(inner)),
        Ty::Record => "a record `{name: value}`".into(),
        Ty::Model => "a trained model (a stage, or pretrained/hf)".into(),
        Ty::Arch => "a model architecture (e.g. `bert::mini`)".into(),
        Ty::Init => "an architecture, a checkpoint or a trained stage".into(),
        Ty::Dataset => "a dataset".into(),
        Ty::Stage => "a stage".into(),
        Ty::Any => "a value".into(),
    }
}

fn plural(ty: &Ty) -> String {
    match ty {
        Ty::Float => "numbers".into(),
        Ty::Str => "strings".into(),
        Ty::Path => "path strings".into(),
        Ty::Model => "trained models".into(),
        Ty::Stage => "stages".into(),
        other => format!("{} values", other.describe()),
    }
}

/// Whether a number is above its parameter's upper bound (not below its lower one).
fn above_max(param: &ParamSchema, v: &Value) -> bool {
    match (param.range.and_then(|r| r.max), v.as_f64()) {
        (Some((max, _)), Some(x)) => x > max && matches!(param.ty, Ty::Int),
        _ => false,
    }
}

fn describe_bound(r: &Range) -> String {
    let d = r.describe();
    if d.starts_with('[') || d.starts_with('(') {
        format!("in {d}")
    } else {
        d
    }
}

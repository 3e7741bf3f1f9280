//! Compile-time values of the language.

use crate::registry::schema::{self, Default, OpKind};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Index of a stage created during compilation; equal to its node index in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageId(pub u32);

/// Index of a user-defined function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FnId(pub u32);

/// Index of a loaded module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModuleId(pub u32);

/// Keyword arguments after checking: parameter name → value, defaults filled in.
pub type Params = BTreeMap<String, Value>;

/// The schema of a built-in, its argument hooks reading checked [`Params`].
pub type OpSchema = schema::OpSchema<Params>;

/// A value computed while compiling a pipeline.
#[derive(Clone, Debug)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(Arc<str>),
    /// A boolean.
    Bool(bool),
    /// A path to an input file or directory; its content is fingerprinted into stage keys.
    Path(Arc<PathValue>),
    /// A list.
    List(Arc<Vec<Value>>),
    /// A record with named fields.
    Record(Arc<BTreeMap<String, Value>>),
    /// A model or dataset from a constructor (`bert(...)`, `glue_sst2(...)`).
    Spec(Arc<Spec>),
    /// A reference to a stage.
    Stage(StageId),
    /// A user-defined function.
    Fn(FnId),
    /// A built-in op, constructor or function.
    Builtin(&'static OpSchema),
    /// A module brought in by `use`.
    Module(ModuleId),
    /// The value of an expression that already failed; it silences follow-on errors.
    Poison,
}

/// A path argument: as written, and resolved against the pipeline's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathValue {
    /// The path as written in the source.
    pub written: String,
    /// The absolute path it refers to.
    pub resolved: PathBuf,
    /// Where it is written.
    pub span: crate::source::Span,
}

/// The path with `x/..` removed lexically, so that one location spelled two ways
/// is one (stage identities; whether an image path stays inside its dataset's folder).
pub fn normalize_path(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The result of a model or dataset constructor.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The constructor.
    pub ctor: &'static OpSchema,
    /// Its checked arguments.
    pub params: Params,
    /// The name it was first bound to (`bert::mini`), for display.
    pub label: Option<String>,
}

impl Spec {
    /// How the spec is named in messages: the name it was bound to (`bert::mini`), else
    /// `bert(...)`.
    pub fn origin(&self) -> String {
        self.label.clone().unwrap_or_else(|| format!("{}(...)", self.ctor.name))
    }

    /// Whether the scalar parameter `name` holds something other than its default (written on
    /// purpose: a value written equal to the default cannot be told apart, nor need it be).
    pub fn differs_from_default(&self, name: &str) -> bool {
        let Some(schema) = self.ctor.param(name) else {
            return false;
        };
        match (self.params.get(name), &schema.default) {
            (None, _) => false,
            (Some(Value::Int(v)), Default::Int(d)) => v != d,
            (Some(Value::Float(v)), Default::Float(d)) => v != d,
            (Some(Value::Bool(v)), Default::Bool(d)) => v != d,
            (Some(Value::Str(v)), Default::Str(d)) => **v != **d,
            (Some(_), Default::Required | Default::Optional) => true,
            (Some(_), _) => false,
        }
    }
}

impl Value {
    /// A parameter's default as a value, if it has one.
    pub fn from_default(default: &Default) -> Option<Value> {
        Some(match default {
            Default::Required | Default::Optional => return None,
            Default::Int(i) => Value::Int(*i),
            Default::Float(f) => Value::Float(*f),
            Default::Bool(b) => Value::Bool(*b),
            Default::Str(s) => Value::str(s),
            Default::Strs(xs) => Value::list(xs.iter().map(|s| Value::str(s)).collect()),
            Default::EmptyList => Value::list(Vec::new()),
            Default::EmptyRecord => Value::Record(Arc::new(BTreeMap::new())),
        })
    }

    /// A string value.
    pub fn str(s: &str) -> Value {
        Value::Str(Arc::from(s))
    }

    /// A list value.
    pub fn list(items: Vec<Value>) -> Value {
        Value::List(Arc::new(items))
    }

    /// What kind of value this is, for messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::Int(_) => "an integer".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Path(_) => "a path".into(),
            Value::List(xs) => format!("a list of {} item{}", xs.len(), if xs.len() == 1 { "" } else { "s" }),
            Value::Record(_) => "a record".into(),
            Value::Spec(s) => match s.ctor.kind {
                OpKind::Dataset => format!("a dataset ({})", s.ctor.name),
                _ => format!("a model ({})", s.ctor.name),
            },
            Value::Stage(_) => "a stage".into(),
            Value::Fn(_) => "a function".into(),
            Value::Builtin(s) => format!("the built-in `{}`", s.name),
            Value::Module(_) => "a module".into(),
            Value::Poison => "an invalid value".into(),
        }
    }

    /// Numeric value of an integer or float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Whether this value, or anything inside it, is poisoned.
    pub fn is_poison(&self) -> bool {
        match self {
            Value::Poison => true,
            Value::List(xs) => xs.iter().any(Value::is_poison),
            Value::Record(r) => r.values().any(Value::is_poison),
            _ => false,
        }
    }

    /// Whether this is plain data that can be part of a stage's parameters (not a function,
    /// module or poison, also not inside lists and records).
    pub fn is_data(&self) -> bool {
        match self {
            Value::Fn(_) | Value::Builtin(_) | Value::Module(_) | Value::Poison => false,
            Value::List(xs) => xs.iter().all(Value::is_data),
            Value::Record(r) => r.values().all(Value::is_data),
            _ => true,
        }
    }

    /// Calls `f` on every stage this value refers to, in order.
    pub fn for_each_stage(&self, f: &mut impl FnMut(StageId)) {
        match self {
            Value::Stage(id) => f(*id),
            Value::List(xs) => xs.iter().for_each(|x| x.for_each_stage(f)),
            Value::Record(r) => r.values().for_each(|x| x.for_each_stage(f)),
            Value::Spec(s) => s.params.values().for_each(|x| x.for_each_stage(f)),
            _ => {}
        }
    }

    /// How messages and sweep instance names show it (`2.0`, `mean`, `teacher`).
    pub fn display_with(&self, stage_name: &dyn Fn(StageId) -> String) -> String {
        let mut out = String::new();
        self.write_to(&mut out, stage_name)
            .expect("writing to a String does not fail");
        out
    }

    /// Like [`Value::display_with`], but at most `max` characters, the last of them `…`; stops
    /// writing once full, so a huge value costs no more than a short one.
    pub fn display_capped(&self, max: usize, stage_name: &dyn Fn(StageId) -> String) -> String {
        let mut out = Capped {
            text: String::new(),
            left: max,
        };
        if self.write_to(&mut out, stage_name).is_err() {
            let keep: String = out.text.chars().take(max.saturating_sub(1)).collect();
            return keep + "…";
        }
        out.text
    }

    fn write_to(&self, out: &mut dyn fmt::Write, stage_name: &dyn Fn(StageId) -> String) -> fmt::Result {
        match self {
            Value::Int(i) => write!(out, "{i}"),
            Value::Float(f) => write!(out, "{f:?}"),
            Value::Str(s) => out.write_str(s),
            Value::Bool(b) => write!(out, "{b}"),
            Value::Path(p) => out.write_str(&p.written),
            Value::List(xs) => {
                out.write_char('[')?;
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        out.write_char(',')?;
                    }
                    x.write_to(out, stage_name)?;
                }
                out.write_char(']')
            }
            Value::Record(r) => {
                out.write_char('{')?;
                for (i, (k, v)) in r.iter().enumerate() {
                    if i > 0 {
                        out.write_char(',')?;
                    }
                    write!(out, "{k}:")?;
                    v.write_to(out, stage_name)?;
                }
                out.write_char('}')
            }
            Value::Spec(s) => out.write_str(s.label.as_deref().unwrap_or(s.ctor.name)),
            Value::Stage(id) => out.write_str(&stage_name(*id)),
            Value::Fn(_) => out.write_str("fn"),
            Value::Builtin(s) => out.write_str(s.name),
            Value::Module(_) => out.write_str("module"),
            Value::Poison => out.write_str("?"),
        }
    }
}

/// A writer that takes at most `left` characters, then fails.
struct Capped {
    text: String,
    left: usize,
}

impl fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.left == 0 {
                return Err(fmt::Error);
            }
            self.text.push(c);
            self.left -= 1;
        }
        Ok(())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_with(&|id| format!("stage#{}", id.0)))
    }
}

/// Converts a value to JSON for plans and records (stages by name via `stage_name`).
pub fn to_json(v: &Value, stage_name: &dyn Fn(StageId) -> String) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::from(s.as_ref()),
        Value::Bool(b) => J::from(*b),
        Value::Path(p) => J::from(p.written.clone()),
        Value::List(xs) => J::Array(xs.iter().map(|x| to_json(x, stage_name)).collect()),
        Value::Record(r) => J::Object(r.iter().map(|(k, x)| (k.clone(), to_json(x, stage_name))).collect()),
        Value::Spec(s) => {
            let mut m = serde_json::Map::new();
            m.insert(
                s.ctor.name.into(),
                J::Object(
                    s.params
                        .iter()
                        .map(|(k, x)| (k.clone(), to_json(x, stage_name)))
                        .collect(),
                ),
            );
            J::Object(m)
        }
        Value::Stage(id) => J::from(stage_name(*id)),
        other => J::from(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(v: &Value, max: usize) -> String {
        v.display_capped(max, &|id| format!("s{}", id.0))
    }

    #[test]
    fn capped_display_cuts_long_values_only() {
        let v = Value::list(vec![Value::Int(1), Value::str("ab"), Value::Stage(StageId(3))]);
        assert_eq!(show(&v, 100), "[1,ab,s3]");
        assert_eq!(show(&v, 9), "[1,ab,s3]");
        assert_eq!(show(&v, 8), "[1,ab,s…");
    }

    #[test]
    fn capped_display_of_a_huge_shared_value_stops_early() {
        let mut v = Value::str("x");
        for _ in 0..60 {
            v = Value::list(vec![v.clone(), v]);
        }
        assert_eq!(show(&v, 10).chars().count(), 10);
    }
}

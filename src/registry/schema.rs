//! The shape of an op's schema: parameters, types, defaults, ranges and docs.

/// What calling a registry entry produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A pipeline stage with an output of this kind.
    Stage(Output),
    /// A model specification (architecture or checkpoint).
    Model,
    /// A dataset specification.
    Dataset,
    /// A plain function evaluated while compiling.
    Function,
}

/// What a stage leaves in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Model weights (safetensors + config.json).
    Model,
    /// Metrics (metrics.json).
    Metrics,
    /// A report (tables and plots).
    Report,
    /// Whatever files a command wrote.
    Files,
    /// A model's logits on every training example (predictions.safetensors).
    Predictions,
}

impl Output {
    /// Name used in docs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Output::Model => "model",
            Output::Metrics => "metrics",
            Output::Report => "report",
            Output::Files => "files",
            Output::Predictions => "predictions",
        }
    }
}

/// The type of a parameter.
#[derive(Clone, Copy, Debug)]
pub enum Ty {
    /// A whole number.
    Int,
    /// A number (integers are accepted and become floats).
    Float,
    /// `true` or `false`.
    Bool,
    /// Any string.
    Str,
    /// One of these strings.
    Enum(&'static [&'static str]),
    /// A file or directory, relative to the pipeline file; its content goes into the key.
    Path,
    /// A list of values of one type (the range, if any, bounds its length).
    List(&'static Ty),
    /// A record `{k: v}`.
    Record,
    /// Trained weights: a stage that outputs a model, or `pretrained(...)` / `hf(...)`.
    Model,
    /// A model architecture or checkpoint to start from (`bert::mini`, `pretrained(...)`).
    Arch,
    /// What training starts from: an architecture, a checkpoint, or a stage that outputs a model.
    Init,
    /// A dataset (`glue_sst2(...)`, `synthetic_text(...)`, ...).
    Dataset,
    /// Any stage.
    Stage,
    /// Anything.
    Any,
}

impl Ty {
    /// How the type is written in docs and messages.
    pub fn describe(&self) -> String {
        match self {
            Ty::Int => "int".into(),
            Ty::Float => "float".into(),
            Ty::Bool => "bool".into(),
            Ty::Str => "string".into(),
            Ty::Enum(opts) => opts.iter().map(|o| format!("\"{o}\"")).collect::<Vec<_>>().join(" | "),
            Ty::Path => "path".into(),
            Ty::List(t) => format!("[{}]", t.describe()),
            Ty::Record => "record".into(),
            Ty::Model => "model".into(),
            Ty::Arch => "architecture".into(),
            Ty::Init => "architecture | model".into(),
            Ty::Dataset => "dataset".into(),
            Ty::Stage => "stage".into(),
            Ty::Any => "any".into(),
        }
    }
}

/// Bounds on a number, or on a list's length.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    /// Lower bound and whether it is allowed.
    pub min: Option<(f64, bool)>,
    /// Upper bound and whether it is allowed.
    pub max: Option<(f64, bool)>,
}

impl Range {
    /// `x >= min`.
    pub const fn at_least(min: f64) -> Range {
        Range {
            min: Some((min, true)),
            max: None,
        }
    }
    /// `x > min`.
    pub const fn above(min: f64) -> Range {
        Range {
            min: Some((min, false)),
            max: None,
        }
    }
    /// `lo <= x <= hi`.
    pub const fn closed(lo: f64, hi: f64) -> Range {
        Range {
            min: Some((lo, true)),
            max: Some((hi, true)),
        }
    }
    /// `lo <= x < hi`.
    pub const fn half_open(lo: f64, hi: f64) -> Range {
        Range {
            min: Some((lo, true)),
            max: Some((hi, false)),
        }
    }

    /// Whether `x` lies in the range.
    pub fn contains(&self, x: f64) -> bool {
        let lo = self.min.is_none_or(|(m, inc)| if inc { x >= m } else { x > m });
        let hi = self.max.is_none_or(|(m, inc)| if inc { x <= m } else { x < m });
        lo && hi && !x.is_nan()
    }

    /// The range as written in docs: `> 0`, `[0, 1)`, `>= 1`.
    pub fn describe(&self) -> String {
        let n = |x: f64| {
            if x.fract() == 0.0 && x.abs() < 1e15 {
                format!("{}", x as i64)
            } else {
                format!("{x}")
            }
        };
        match (self.min, self.max) {
            (Some((lo, li)), Some((hi, hi_inc))) => {
                format!(
                    "{}{}, {}{}",
                    if li { "[" } else { "(" },
                    n(lo),
                    n(hi),
                    if hi_inc { "]" } else { ")" }
                )
            }
            (Some((lo, true)), None) => format!(">= {}", n(lo)),
            (Some((lo, false)), None) => format!("> {}", n(lo)),
            (None, Some((hi, true))) => format!("<= {}", n(hi)),
            (None, Some((hi, false))) => format!("< {}", n(hi)),
            (None, None) => "any".into(),
        }
    }
}

/// A parameter's default.
#[derive(Clone, Copy, Debug)]
pub enum Default {
    /// The argument must be given.
    Required,
    /// The argument may be left out, and then it is absent (not part of the key).
    Optional,
    /// An integer default.
    Int(i64),
    /// A float default.
    Float(f64),
    /// A bool default.
    Bool(bool),
    /// A string default.
    Str(&'static str),
    /// A list-of-strings default.
    Strs(&'static [&'static str]),
    /// An empty list.
    EmptyList,
    /// An empty record.
    EmptyRecord,
}

impl Default {
    /// How the default is written in docs.
    pub fn describe(&self) -> String {
        match self {
            Default::Required => "required".into(),
            Default::Optional => "optional".into(),
            Default::Int(i) => i.to_string(),
            Default::Float(f) => format!("{f:?}"),
            Default::Bool(b) => b.to_string(),
            Default::Str(s) => format!("\"{s}\""),
            Default::Strs(xs) => format!(
                "[{}]",
                xs.iter().map(|x| format!("\"{x}\"")).collect::<Vec<_>>().join(", ")
            ),
            Default::EmptyList => "[]".into(),
            Default::EmptyRecord => "{}".into(),
        }
    }
}

/// One parameter of an op.
#[derive(Clone, Copy, Debug)]
pub struct ParamSchema {
    /// Keyword name.
    pub name: &'static str,
    /// Type.
    pub ty: Ty,
    /// Default, or required/optional.
    pub default: Default,
    /// Allowed values for numbers (or list lengths).
    pub range: Option<Range>,
    /// One line of documentation.
    pub doc: &'static str,
}

/// A problem with one argument found by an op's cross-argument check: (parameter, message).
pub type ArgProblem = (&'static str, String);

/// An op, constructor or built-in function: everything the checker and `rkd ops` know about it.
///
/// `P` is what the argument hooks read: the checked arguments (`crate::registry::OpSchema` fixes
/// it to the language's `Params`), so that this description of signatures does not depend on
/// the values the language computes.
#[derive(Debug)]
pub struct OpSchema<P: 'static> {
    /// The name it is called by.
    pub name: &'static str,
    /// What a call produces.
    pub kind: OpKind,
    /// Bumped whenever the op's results change for the same arguments; part of the stage key.
    pub version: u32,
    /// One line of documentation.
    pub doc: &'static str,
    /// Parameters in documentation order.
    pub params: &'static [ParamSchema],
    /// Fills in defaults that depend on other arguments.
    pub derive: Option<fn(&mut P)>,
    /// Checks that arguments fit together.
    pub check: Option<fn(&P) -> Vec<ArgProblem>>,
}

impl<P> OpSchema<P> {
    /// The parameter with this name.
    pub fn param(&self, name: &str) -> Option<&'static ParamSchema> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// A parameter (shorthand for the registry tables).
pub const fn p(name: &'static str, ty: Ty, default: Default, range: Option<Range>, doc: &'static str) -> ParamSchema {
    ParamSchema {
        name,
        ty,
        default,
        range,
        doc,
    }
}

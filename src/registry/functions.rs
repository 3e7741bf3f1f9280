//! Built-in functions evaluated while compiling.

use super::schema::{p, Default as D, OpKind, Ty};
use crate::value::OpSchema;

/// `env`: an environment variable, with a fallback.
pub static ENV: OpSchema = OpSchema {
    name: "env",
    kind: OpKind::Function,
    version: 1,
    doc: "The value of an environment variable, or `default` when it is unset (an error when there is no default).",
    params: &[
        p("name", Ty::Str, D::Required, None, "the variable's name"),
        p(
            "default",
            Ty::Str,
            D::Optional,
            None,
            "the value when the variable is unset",
        ),
    ],
    derive: None,
    check: None,
};

/// `len`: the length of a list.
pub static LEN: OpSchema = OpSchema {
    name: "len",
    kind: OpKind::Function,
    version: 1,
    doc: "The number of items in a list.",
    params: &[p("of", Ty::List(&Ty::Any), D::Required, None, "the list")],
    derive: None,
    check: None,
};

/// `range`: a list of consecutive integers.
pub static RANGE: OpSchema = OpSchema {
    name: "range",
    kind: OpKind::Function,
    version: 1,
    doc: "The integers start, start+1, ..., end-1 (handy for sweeping seeds).",
    params: &[
        p("end", Ty::Int, D::Required, None, "one past the last integer"),
        p("start", Ty::Int, D::Int(0), None, "the first integer"),
    ],
    derive: None,
    check: Some(|params| match (params.get("start"), params.get("end")) {
        (Some(crate::value::Value::Int(s)), Some(crate::value::Value::Int(e))) if e.saturating_sub(*s) > MAX_RANGE => {
            vec![(
                "end",
                format!(
                    "range of {} integers is too long (at most {MAX_RANGE})",
                    e.saturating_sub(*s)
                ),
            )]
        }
        _ => Vec::new(),
    }),
};

/// Longest list `range` builds.
pub const MAX_RANGE: i64 = 1_000_000;

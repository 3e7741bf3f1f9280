//! Typed op arguments: each op declares its parameters once, with [`op_args!`], which makes both
//! the schema the checker, `rkd ops` and the stage key read and the typed struct the op receives.
//! A parameter left out of the resolved arguments takes the schema's default: no default is
//! written twice, and no op reads a parameter by its name.

use super::schema::{Default as D, ParamSchema};
use crate::keyword::Keyword;
use crate::ml::distill::FusionKind;
use crate::ml::prune::{Method, Scope};
use crate::ml::student::StudentInit;
use crate::ml::train::{Precision, Select};
use crate::value::Value;

/// Why resolved arguments do not make an op's typed arguments.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArgError {
    /// A required argument is absent.
    #[error("`{0}` is missing")]
    Missing(&'static str),
    /// An argument has the wrong type.
    #[error("`{name}` must be {expected}, got {found}")]
    Type {
        /// The parameter.
        name: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// A word argument that is none of its words.
    #[error("`{name}` must be one of {}, got \"{found}\"", words.join(", "))]
    NotOneOf {
        /// The parameter.
        name: &'static str,
        /// What it is.
        found: String,
        /// The words it may be.
        words: &'static [&'static str],
    },
}

impl From<ArgError> for String {
    fn from(e: ArgError) -> String {
        e.to_string()
    }
}

/// A Rust type that one resolved argument converts to.
pub trait FromArg: Sized {
    /// Converts the argument `v` (absent: the schema's default, if any) of parameter `p`.
    fn from_arg(v: Option<&Value>, p: &ParamSchema) -> Result<Self, ArgError>;
}

/// The argument, or the schema's default, or `Missing`.
fn given(v: Option<&Value>, p: &ParamSchema) -> Result<Value, ArgError> {
    v.cloned()
        .or_else(|| Value::from_default(&p.default))
        .ok_or(ArgError::Missing(p.name))
}

fn wrong(p: &ParamSchema, expected: &'static str, v: &Value) -> ArgError {
    ArgError::Type {
        name: p.name,
        expected,
        found: v.type_name().to_string(),
    }
}

impl FromArg for Value {
    fn from_arg(v: Option<&Value>, p: &ParamSchema) -> Result<Self, ArgError> {
        given(v, p)
    }
}

impl FromArg for f64 {
    fn from_arg(v: Option<&Value>, p: &ParamSchema) -> Result<Self, ArgError> {
        let v = given(v, p)?;
        v.as_f64().ok_or_else(|| wrong(p, "a number", &v))
    }
}

impl FromArg for i64 {
    fn from_arg(v: Option<&Value>, p: &ParamSchema) -> Result<Self, ArgError> {
        match given(v, p)? {
            Value::Int(i) => Ok(i),
            other => Err(wrong(p, "an integer", &other)),
        }
    }
}

impl FromArg for u64 {
    fn from_arg(v: Option<&Value>, p: &ParamSchema) -> Result<Self, ArgError> {
        match given(v, p)? {
            Value::Int(i) if i >= 0 => Ok(i as u64),
            other => Err(wrong(p, "a non-negative integer", &other)),
        }
    }
}

impl FromArg for usize {
    fn from_arg(v: Option<&Value>, p: &ParamSchema) -> Result<Self, ArgError> {
        u64::from_arg(v, p).map(|n| n as usize)
    }
}

impl FromArg for bool {
    fn from_arg(v: Option<&Value>, p: &ParamSchema) -> Result<Self, ArgError> {
        match given(v, p)? {
            Value::Bool(b) => Ok(b),
            other => Err(wrong(p, "true or false", &other)),
        }
    }
}

impl FromArg for String {
    fn from_arg(v: Option<&Value>, p: &ParamSchema) -> Result<Self, ArgError> {
        match given(v, p)? {
            Value::Str(s) => Ok(s.to_string()),
            other => Err(wrong(p, "a string", &other)),
        }
    }
}

impl<T: FromArg> FromArg for Vec<T> {
    fn from_arg(v: Option<&Value>, p: &ParamSchema) -> Result<Self, ArgError> {
        match given(v, p)? {
            Value::List(xs) => xs.iter().map(|x| T::from_arg(Some(x), p)).collect(),
            other => Err(wrong(p, "a list", &other)),
        }
    }
}

impl<T: FromArg> FromArg for Option<T> {
    fn from_arg(v: Option<&Value>, p: &ParamSchema) -> Result<Self, ArgError> {
        match (v, p.default) {
            (None, D::Optional) => Ok(None),
            _ => T::from_arg(v, p).map(Some),
        }
    }
}

/// Reads an argument written as one of `K`'s words.
fn keyword<K: Keyword>(v: Option<&Value>, p: &ParamSchema) -> Result<K, ArgError> {
    let word = String::from_arg(v, p)?;
    K::from_word(&word).ok_or(ArgError::NotOneOf {
        name: p.name,
        found: word,
        words: K::WORDS,
    })
}

/// `FromArg` for enums declared with [`crate::keywords!`].
macro_rules! keyword_args {
    ($($t:ty),+ $(,)?) => {
        $(impl FromArg for $t {
            fn from_arg(v: Option<&Value>, p: &ParamSchema) -> Result<Self, ArgError> {
                keyword(v, p)
            }
        })+
    };
}

keyword_args!(
    Method,
    Scope,
    FusionKind,
    StudentInit,
    Select,
    Precision,
    super::ops::SplitChoice
);

/// Declares an op's typed arguments: a struct whose fields are read from the resolved arguments,
/// and `PARAMS`, the parameter schemas in documentation order (what the op's [`super::OpSchema`]
/// lists). Each field names the schema it is read by:
///
/// ```ignore
/// op_args! {
///     /// `prune`'s arguments.
///     pub struct PruneArgs {
///         /// The model to prune.
///         model: Value = p("model", Ty::Model, D::Required, None, "the trained model to prune"),
///         sparsity: f64 = SPARSITY,
///     }
/// }
/// ```
#[macro_export]
macro_rules! op_args {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $schema:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// The parameters, in documentation order.
            pub const PARAMS: &'static [$crate::registry::ParamSchema] = &[ $( $schema ),* ];

            /// Reads the resolved arguments (a parameter left out takes its schema's default).
            pub fn from_params(params: &$crate::value::Params) -> Result<Self, $crate::registry::ArgError> {
                let mut schemas = Self::PARAMS.iter();
                Ok($name {
                    $( $field: {
                        let p = schemas.next().expect("one schema per field");
                        <$ty as $crate::registry::FromArg>::from_arg(params.get(p.name), p)?
                    }, )*
                })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::super::schema::{p, Range, Ty};
    use super::*;
    use crate::value::Params;

    crate::op_args! {
        /// A test op's arguments.
        pub struct Example {
            /// A number with a default.
            rate: f64 = p("rate", Ty::Float, D::Float(0.5), Some(Range::above(0.0)), "a rate"),
            count: usize = p("count", Ty::Int, D::Int(3), None, "a count"),
            name: String = p("name", Ty::Str, D::Required, None, "a name"),
            limit: Option<usize> = p("limit", Ty::Int, D::Optional, None, "a limit"),
            tags: Vec<String> = p("tags", Ty::List(&Ty::Str), D::Strs(&["a", "b"]), None, "tags"),
        }
    }

    #[test]
    fn absent_arguments_take_the_schema_default_and_required_ones_must_be_there() {
        let mut params = Params::new();
        assert_eq!(Example::from_params(&params).unwrap_err(), ArgError::Missing("name"));
        params.insert("name".into(), Value::str("x"));
        let e = Example::from_params(&params).unwrap();
        assert_eq!((e.rate, e.count, e.name.as_str(), e.limit), (0.5, 3, "x", None));
        assert_eq!(e.tags, ["a", "b"]);
        params.insert("limit".into(), Value::Int(7));
        params.insert("rate".into(), Value::Int(2));
        let e = Example::from_params(&params).unwrap();
        assert_eq!((e.limit, e.rate), (Some(7), 2.0));
        params.insert("count".into(), Value::str("many"));
        assert_eq!(
            Example::from_params(&params).unwrap_err().to_string(),
            "`count` must be a non-negative integer, got a string"
        );
        assert_eq!(Example::PARAMS.len(), 5);
        assert_eq!(Example::PARAMS[0].name, "rate");
    }
}

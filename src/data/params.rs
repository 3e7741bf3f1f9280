//! Reading a dataset constructor's checked arguments, falling back to the registry's defaults
//! (so a hand-built `Params` may leave out what has a default).

use std::path::PathBuf;

use super::error::DataError;
use crate::registry::schema::Range;
use crate::registry::{Default as D, OpSchema};
use crate::value::{Params, Value};

/// A constructor's arguments together with its schema.
pub(crate) struct Args<'a> {
    schema: &'static OpSchema,
    params: &'a Params,
}

impl<'a> Args<'a> {
    /// The arguments of the dataset constructor `ctor`.
    pub(crate) fn new(ctor: &str, params: &'a Params) -> Result<Self, DataError> {
        let schema = crate::registry::lookup(ctor)
            .filter(|s| s.kind == crate::registry::OpKind::Dataset)
            .ok_or_else(|| {
                DataError::new(format!(
                    "`{ctor}` is not a dataset constructor (expected glue_sst2, glue, text_table, image_folder, image_table, hf_dataset, synthetic_text or synthetic_images)"
                ))
            })?;
        Ok(Args { schema, params })
    }

    fn value(&self, name: &str) -> Result<Value, DataError> {
        if let Some(v) = self.params.get(name) {
            return Ok(v.clone());
        }
        let default = self.schema.param(name).map(|p| &p.default);
        match default {
            Some(D::Int(i)) => Ok(Value::Int(*i)),
            Some(D::Float(f)) => Ok(Value::Float(*f)),
            Some(D::Bool(b)) => Ok(Value::Bool(*b)),
            Some(D::Str(s)) => Ok(Value::str(s)),
            _ => Err(DataError::new(format!(
                "{}: missing argument `{name}`",
                self.schema.name
            ))),
        }
    }

    fn wrong(&self, name: &str, want: &str, got: &Value) -> DataError {
        DataError::new(format!(
            "{}: argument `{name}` should be {want}, not {}",
            self.schema.name,
            got.type_name()
        ))
    }

    /// A non-negative integer argument, at most its schema's upper bound (a value that did not
    /// pass `rkd check`, e.g. from a hand-built spec, fails here rather than sizing an
    /// allocation; lower bounds are the checker's business).
    pub(crate) fn usize(&self, name: &str) -> Result<usize, DataError> {
        match self.value(name)? {
            Value::Int(i) => {
                let range = self.schema.param(name).and_then(|p| p.range);
                let upper = range.map(|r| Range { min: None, ..r });
                if let Some((max, _)) = upper.filter(|u| !u.contains(i as f64)).and_then(|u| u.max) {
                    return Err(DataError::new(format!(
                        "{}: argument `{name}` must be at most {max}, got {i}",
                        self.schema.name
                    )));
                }
                usize::try_from(i).map_err(|_| {
                    DataError::new(format!(
                        "{}: argument `{name}` must not be negative (got {i})",
                        self.schema.name
                    ))
                })
            }
            v => Err(self.wrong(name, "an integer", &v)),
        }
    }

    /// A non-negative integer argument as a seed.
    pub(crate) fn u64(&self, name: &str) -> Result<u64, DataError> {
        self.usize(name).map(|u| u as u64)
    }

    /// A number argument (an integer is accepted).
    pub(crate) fn f64(&self, name: &str) -> Result<f64, DataError> {
        match self.value(name)? {
            Value::Float(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            v => Err(self.wrong(name, "a number", &v)),
        }
    }

    /// An optional number argument (absent: `None`).
    pub(crate) fn opt_f64(&self, name: &str) -> Result<Option<f64>, DataError> {
        match self.params.get(name) {
            None => Ok(None),
            Some(Value::Float(f)) => Ok(Some(*f)),
            Some(Value::Int(i)) => Ok(Some(*i as f64)),
            Some(v) => Err(self.wrong(name, "a number", v)),
        }
    }

    /// A bool argument.
    pub(crate) fn bool(&self, name: &str) -> Result<bool, DataError> {
        match self.value(name)? {
            Value::Bool(b) => Ok(b),
            v => Err(self.wrong(name, "a bool", &v)),
        }
    }

    /// A string argument.
    pub(crate) fn str(&self, name: &str) -> Result<String, DataError> {
        match self.value(name)? {
            Value::Str(s) => Ok(s.to_string()),
            v => Err(self.wrong(name, "a string", &v)),
        }
    }

    /// An optional string argument (absent: `None`).
    pub(crate) fn opt_str(&self, name: &str) -> Result<Option<String>, DataError> {
        match self.params.get(name) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.to_string())),
            Some(v) => Err(self.wrong(name, "a string", v)),
        }
    }

    /// An optional path argument (absent: `None`).
    pub(crate) fn opt_path(&self, name: &str) -> Result<Option<PathBuf>, DataError> {
        match self.params.contains_key(name) {
            true => self.path(name).map(Some),
            false => Ok(None),
        }
    }

    /// A path argument, resolved against the pipeline's directory (a string is taken as is).
    pub(crate) fn path(&self, name: &str) -> Result<PathBuf, DataError> {
        match self.value(name)? {
            Value::Path(p) => Ok(p.resolved.clone()),
            Value::Str(s) => Ok(PathBuf::from(&*s)),
            v => Err(self.wrong(name, "a path", &v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_type_errors() {
        let mut p = Params::new();
        p.insert("seed".into(), Value::Int(5));
        let a = Args::new("synthetic_text", &p).unwrap();
        assert_eq!(a.u64("seed").unwrap(), 5);
        assert_eq!(a.usize("vocab_size").unwrap(), 1000);
        assert!((a.f64("noise").unwrap() - 0.1).abs() < 1e-12);
        p.insert("classes".into(), Value::Bool(true));
        let a = Args::new("synthetic_text", &p).unwrap();
        let e = a.usize("classes").unwrap_err();
        assert_eq!(
            e.to_string(),
            "synthetic_text: argument `classes` should be an integer, not a bool"
        );
        let a = Args::new("glue_sst2", &p).unwrap();
        assert!(a
            .path("path")
            .unwrap_err()
            .to_string()
            .contains("missing argument `path`"));
        assert!(Args::new("train", &p).is_err());
    }

    #[test]
    fn sizes_outside_their_range_are_errors_not_allocations() {
        let mut p = Params::new();
        p.insert("train_size".into(), Value::Int(i64::MAX));
        let a = Args::new("synthetic_text", &p).unwrap();
        assert_eq!(
            a.usize("train_size").unwrap_err().to_string(),
            "synthetic_text: argument `train_size` must be at most 10000000, got 9223372036854775807"
        );
        // Each size in range, all of them together over the memory limit.
        let spec = crate::data::synthetic_images::ImageSpec {
            seed: 0,
            classes: 2,
            train_size: 10_000_000,
            val_size: 1,
            test_size: 1,
            image_size: 1024,
            noise: 0.0,
        };
        let e = crate::data::synthetic_images::generate(&spec).unwrap_err();
        assert!(e.to_string().contains("more than 16 GiB"), "{e}");
    }
}

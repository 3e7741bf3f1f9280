//! The one registry of ops, constructors and built-in functions: it drives type checks,
//! `rkd ops` and "did you mean" suggestions.

mod args;
pub mod bounds;
mod constructors;
mod functions;
mod ops;
pub mod schema;

pub use crate::value::OpSchema;
pub use args::{ArgError, FromArg};
pub use constructors::{GlueTask, TableFormat, ARCHITECTURES};
pub use functions::MAX_RANGE;
pub use ops::{default_resources, resources, trains, Resources, DISTILL, FUSE, PREDICT, RESOURCE_FIELDS, TRAINING_OPS};
pub use ops::{
    DistillArgs, EvalArgs, ExecArgs, FuseArgs, PredictArgs, PruneArgs, QloraArgs, ReportArgs, RequireArgs, RunArgs,
    SplitChoice, TrainArgs, DEFAULT_BATCH_SIZE,
};
pub use schema::{ArgProblem, Default, OpKind, Output, ParamSchema, Range, Ty};

/// Every entry, in documentation order.
pub static REGISTRY: &[&OpSchema] = &[
    &ops::TRAIN,
    &ops::DISTILL,
    &ops::FUSE,
    &ops::PREDICT,
    &ops::QLORA,
    &ops::PRUNE,
    &ops::EVAL,
    &ops::REPORT,
    &ops::REQUIRE,
    &ops::EXEC,
    &constructors::BERT,
    &constructors::VIT,
    &constructors::PRETRAINED,
    &constructors::HF,
    &constructors::GLUE_SST2,
    &constructors::GLUE,
    &constructors::TEXT_TABLE,
    &constructors::IMAGE_FOLDER,
    &constructors::IMAGE_TABLE,
    &constructors::HF_DATASET,
    &constructors::SYNTHETIC_TEXT,
    &constructors::SYNTHETIC_IMAGES,
    &functions::ENV,
    &functions::LEN,
    &functions::RANGE,
];

/// The entry with this name.
pub fn lookup(name: &str) -> Option<&'static OpSchema> {
    REGISTRY.iter().copied().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_defaults_fit_their_types_and_ranges() {
        let mut names: Vec<_> = REGISTRY.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
        for op in REGISTRY {
            for p in op.params {
                let Some(v) = crate::value::Value::from_default(&p.default) else {
                    continue;
                };
                if let (Some(r), Some(x)) = (p.range, v.as_f64()) {
                    assert!(
                        r.contains(x),
                        "{}.{} default {x} outside {}",
                        op.name,
                        p.name,
                        r.describe()
                    );
                }
                if let (Ty::Enum(opts), Default::Str(s)) = (p.ty, p.default) {
                    assert!(opts.contains(&s), "{}.{} default not an option", op.name, p.name);
                }
            }
        }
    }

    #[test]
    fn ranges() {
        assert!(Range::half_open(0.0, 1.0).contains(0.0));
        assert!(!Range::half_open(0.0, 1.0).contains(1.0));
        assert!(!Range::above(0.0).contains(0.0));
        assert_eq!(Range::half_open(0.0, 1.0).describe(), "[0, 1)");
        assert_eq!(Range::above(0.0).describe(), "> 0");
    }
}

//! Stage ops: what running a stage does. One file per op.

pub mod cancel;
pub mod distill;
mod error;
pub mod eval;
mod exec;
pub mod memory;
pub mod model_source;
pub mod panics;
pub mod predict;
pub mod progress;
pub mod prune;
pub mod qlora;
pub mod report;
pub mod require;
pub mod resume;
pub mod selection;
pub mod train;

pub use error::{check_interrupted, OpError};

use crate::value::{Params, StageId};
use cancel::Cancel;
use progress::Progress;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;

/// Everything an op gets to run one stage.
pub struct OpContext<'a> {
    /// The op's name.
    pub op: &'static str,
    /// Resolved parameters.
    pub params: &'a Params,
    /// Where the op writes its outputs.
    pub out_dir: PathBuf,
    /// The output directory of an upstream stage.
    pub input_dir: &'a (dyn Fn(StageId) -> PathBuf + Sync),
    /// What an upstream stage is: its name, op and parameters.
    pub upstream: &'a (dyn Fn(StageId) -> Upstream + Sync),
    /// The pipeline file's directory (where relative paths point).
    pub pipeline_dir: PathBuf,
    /// The stage's log file.
    pub log: File,
    /// The stage's progress line.
    pub progress: &'a Progress,
    /// Set when the run is interrupted; long-running ops check it.
    pub cancel: &'a Cancel,
    /// Threads of the pool the op computes on, shared with the stages running beside it.
    pub threads: usize,
    /// The device the op computes on (`--device`); the fused CPU kernels run where it is the CPU.
    pub device: candle_core::Device,
    /// The GPU slots the stage holds (`--gpus`): an `exec` command sees them as `CUDA_VISIBLE_DEVICES`.
    pub gpus: Vec<usize>,
    /// Where ops may keep caches that are never required (decoded dataset images):
    /// `<store>/cache`.
    pub cache_dir: PathBuf,
    /// Where a training op keeps its in-stage checkpoints (the store's folder for the stage key),
    /// and resumes from; none outside a store.
    pub checkpoints: Option<crate::store::checkpoints::StageCheckpoints>,
    /// Set by a training op that resumed from a checkpoint: the step it went on from.
    pub resumed_from: Option<u64>,
    /// The stage's key lock, for the commands it starts to inherit: the key stays locked while
    /// anything they started lives, so a rerun never runs the stage beside an orphan.
    pub key_lock: Option<std::os::fd::RawFd>,
    /// The splits that selected this stage's result: its inputs' (read before the op runs) and its
    /// own (added by the training loop); written to `selection.json` beside the output.
    pub selection: selection::Selection,
}

/// An upstream stage as an op sees it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Its display name.
    pub name: String,
    /// Its name with the other names it was given (`chain/step[2] (= tuned[t=4.0,a=0.5])`).
    pub shown: String,
    /// Its op.
    pub op: &'static str,
    /// Its parameters.
    pub params: Params,
    /// Its key (hex): what names a result across renames.
    pub key: String,
}

/// What an op reports when it succeeds.
#[derive(Debug, Default)]
pub struct OpOutput {
    /// Headline numbers (accuracy, loss, bytes, ...), recorded in metrics.json and run records.
    pub metrics: BTreeMap<String, f64>,
}

/// How an op runs one stage.
pub type RunFn = fn(&mut OpContext) -> Result<OpOutput, OpError>;

/// One runnable op: its name, what runs it, and the parameters its typed arguments read (the
/// same slice its registry schema lists, so `rkd ops` documents exactly what the op reads).
pub struct OpImpl {
    /// The op's name.
    pub name: &'static str,
    /// Runs one stage.
    pub run: RunFn,
    /// The parameters its typed arguments read.
    pub params: &'static [crate::registry::ParamSchema],
}

/// Every op this version runs: the one table that dispatch, `rkd ops` and the tests read.
pub static OPS: &[OpImpl] = {
    use crate::registry as r;
    &[
        OpImpl {
            name: "train",
            run: train::run,
            params: r::TrainArgs::PARAMS,
        },
        OpImpl {
            name: "distill",
            run: distill::run_distill,
            params: r::DistillArgs::PARAMS,
        },
        OpImpl {
            name: "fuse",
            run: distill::run_fuse,
            params: r::FuseArgs::PARAMS,
        },
        OpImpl {
            name: "predict",
            run: predict::run,
            params: r::PredictArgs::PARAMS,
        },
        OpImpl {
            name: "qlora",
            run: qlora::run,
            params: r::QloraArgs::PARAMS,
        },
        OpImpl {
            name: "prune",
            run: prune::run,
            params: r::PruneArgs::PARAMS,
        },
        OpImpl {
            name: "eval",
            run: eval::run,
            params: r::EvalArgs::PARAMS,
        },
        OpImpl {
            name: "report",
            run: report::run,
            params: r::ReportArgs::PARAMS,
        },
        OpImpl {
            name: "require",
            run: require::run,
            params: r::RequireArgs::PARAMS,
        },
        OpImpl {
            name: "exec",
            run: exec::run,
            params: r::ExecArgs::PARAMS,
        },
    ]
};

/// The op with this name, if this version runs it.
pub fn find(name: &str) -> Option<&'static OpImpl> {
    OPS.iter().find(|o| o.name == name)
}

/// Runs one stage's op. A panic inside it (a bug) fails the stage with the panic's message
/// instead of taking the run down.
pub fn execute(ctx: &mut OpContext) -> Result<OpOutput, OpError> {
    let op = ctx.op;
    panics::catch(|| dispatch(ctx)).unwrap_or_else(|panic| {
        Err(OpError::Invalid(format!(
            "internal error in `{op}`: {panic}; this is a bug in rkd, please report it with the pipeline"
        )))
    })
}

/// A test hook: `RKD_TEST_PANIC_OP=NAME` makes every stage of op NAME panic as it starts, so that
/// the tests can check what a bug inside a stage does to a run.
pub const TEST_PANIC_VAR: &str = "RKD_TEST_PANIC_OP";

fn dispatch(ctx: &mut OpContext) -> Result<OpOutput, OpError> {
    if std::env::var_os(TEST_PANIC_VAR).is_some_and(|op| op == ctx.op) {
        panic!("{TEST_PANIC_VAR} asked `{}` to panic", ctx.op);
    }
    match find(ctx.op) {
        // An exec command's output is the user's files: nothing is added to it.
        Some(op) if op.name == "exec" => (op.run)(ctx),
        Some(op) => {
            let inherited = selection::Selection::inherited(ctx)?;
            ctx.selection.merge(inherited);
            let out = (op.run)(ctx)?;
            ctx.selection.write(&ctx.out_dir)?;
            Ok(out)
        }
        None => Err(OpError::Invalid(format!(
            "the `{}` op is not implemented in this version of rkd (it runs {})",
            ctx.op,
            OPS.iter().map(|o| o.name).collect::<Vec<_>>().join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry as r;
    use crate::registry::{Default as D, OpKind, Ty, REGISTRY};
    use crate::value::{Params, Value};

    /// A value of the parameter's type, for a required argument.
    fn sample(ty: Ty) -> Value {
        match ty {
            Ty::Int => Value::Int(1),
            Ty::Float => Value::Float(0.5),
            Ty::Bool => Value::Bool(true),
            Ty::Str | Ty::Enum(_) => Value::str("x"),
            Ty::List(t) => Value::list(vec![sample(*t)]),
            Ty::Record => Value::Record(Default::default()),
            Ty::Model | Ty::Arch | Ty::Init | Ty::Stage => Value::Stage(StageId(0)),
            Ty::Dataset | Ty::Path | Ty::Any => Value::str("data"),
        }
    }

    #[test]
    fn every_stage_op_runs_and_reads_exactly_what_its_schema_documents() {
        for schema in REGISTRY.iter().filter(|s| matches!(s.kind, OpKind::Stage(_))) {
            let op = find(schema.name).unwrap_or_else(|| panic!("`{}` has no implementation", schema.name));
            let show = |ps: &[crate::registry::ParamSchema]| -> Vec<String> {
                ps.iter()
                    .map(|p| {
                        let range = p.range.map(|r| r.describe()).unwrap_or_default();
                        format!(
                            "{} {} {} {range} {}",
                            p.name,
                            p.ty.describe(),
                            p.default.describe(),
                            p.doc
                        )
                    })
                    .collect()
            };
            assert_eq!(
                show(op.params),
                show(schema.params),
                "`{}`: the typed arguments and `rkd ops` must read one declaration",
                schema.name
            );
        }
        assert_eq!(
            OPS.len(),
            REGISTRY.iter().filter(|s| matches!(s.kind, OpKind::Stage(_))).count()
        );
    }

    #[test]
    fn typed_arguments_take_the_documented_defaults() {
        for op in OPS {
            // Only the required arguments given: every other one is the schema's default, as
            // `rkd ops` prints it, converted to the field's type.
            let params: Params = op
                .params
                .iter()
                .filter(|p| matches!(p.default, D::Required))
                .map(|p| (p.name.to_string(), sample(p.ty)))
                .collect();
            let read = |f: fn(&Params) -> Result<(), r::ArgError>| f(&params);
            let result = match op.name {
                "train" => read(|p| r::TrainArgs::from_params(p).map(drop)),
                "distill" => read(|p| r::DistillArgs::from_params(p).map(drop)),
                "fuse" => read(|p| r::FuseArgs::from_params(p).map(drop)),
                "predict" => read(|p| r::PredictArgs::from_params(p).map(drop)),
                "qlora" => read(|p| r::QloraArgs::from_params(p).map(drop)),
                "prune" => read(|p| r::PruneArgs::from_params(p).map(drop)),
                "eval" => read(|p| r::EvalArgs::from_params(p).map(drop)),
                "report" => read(|p| r::ReportArgs::from_params(p).map(drop)),
                "require" => read(|p| r::RequireArgs::from_params(p).map(drop)),
                "exec" => read(|p| r::ExecArgs::from_params(p).map(drop)),
                other => panic!("no typed arguments for `{other}`"),
            };
            result.unwrap_or_else(|e| panic!("{}: {e}", op.name));
        }
        // Spot checks of the values the ops now see.
        let distill = r::DistillArgs::from_params(&Params::from([
            ("teacher".to_string(), Value::Stage(StageId(0))),
            ("student".to_string(), Value::Stage(StageId(0))),
            ("data".to_string(), Value::str("d")),
        ]))
        .unwrap();
        assert_eq!((distill.temperature, distill.alpha, distill.t2_scale), (4.0, 0.5, true));
        assert_eq!((distill.epochs, distill.batch_size, distill.seed), (3, 32, 0));
        let qlora = r::QloraArgs::from_params(&Params::from([
            ("base".to_string(), Value::Stage(StageId(0))),
            ("data".to_string(), Value::str("d")),
        ]))
        .unwrap();
        assert_eq!(
            (qlora.rank, qlora.alpha, qlora.lr, qlora.block_size),
            (8, 16.0, 2e-4, 64)
        );
        assert_eq!(qlora.targets, ["query", "value"]);
    }
}

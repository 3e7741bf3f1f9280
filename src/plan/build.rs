//! Building the Plan from compiled stages: the petgraph DAG and every stage's key.

use super::fingerprint::{FingerprintError, Fingerprinter};
use crate::compile::{Compiled, StageDef};
use crate::data::reads::Reads;
use crate::diagnostic::{Diag, Kind};
use crate::store::key::{self, Key, Resolve};
use crate::value::{Params, PathValue, StageId, Value};
use petgraph::graph::{DiGraph, NodeIndex};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;

/// One stage of the plan, with its key.
#[derive(Clone, Debug)]
pub struct PlanStage {
    /// The compiled stage.
    pub def: StageDef,
    /// Its key.
    pub key: Key,
    /// Fingerprints of the input paths it reads: (path as written, fingerprint).
    pub files: Vec<(String, Key)>,
}

/// The DAG of stages: an edge runs from each stage to the stages that use it.
#[derive(Debug)]
pub struct Plan {
    /// The graph; node indices equal [`StageId`]s and are in topological order.
    pub graph: DiGraph<PlanStage, ()>,
}

/// Resolves a stage's upstream keys and input fingerprints, all computed before.
struct Keys<'a> {
    keys: &'a [Key],
    fingerprints: &'a HashMap<(PathBuf, Option<Reads>), Result<Key, FingerprintError>>,
    files: Vec<(String, Key)>,
}

impl Resolve for Keys<'_> {
    type Error = FingerprintError;
    fn stage(&mut self, id: StageId) -> Result<Key, FingerprintError> {
        Ok(self.keys[id.0 as usize])
    }
    fn path(&mut self, path: &PathValue, reads: Option<Reads>) -> Result<Key, FingerprintError> {
        let fp = match self.fingerprints.get(&(path.resolved.clone(), reads)) {
            Some(fp) => fp.clone()?,
            None => unreachable!("every keyed path is fingerprinted first: {}", path.resolved.display()),
        };
        self.files.push((path.written.clone(), fp));
        Ok(fp)
    }
}

/// Levels with at least this many stages have their keys computed in parallel.
const PARALLEL_LEVEL: usize = 64;

/// Calls `f` on every input path in the parameters that make up a stage's key, in key order,
/// with what is read from it when it is a dataset's folder.
pub fn for_each_keyed_path(params: &Params, f: &mut impl FnMut(&PathValue, Option<Reads>)) {
    fn walk(v: &Value, reads: Option<Reads>, f: &mut impl FnMut(&PathValue, Option<Reads>)) {
        match v {
            Value::Path(p) => f(p, reads),
            Value::List(xs) => xs.iter().for_each(|x| walk(x, None, f)),
            Value::Record(r) => r.values().for_each(|x| walk(x, None, f)),
            Value::Spec(s) => s
                .params
                .values()
                .for_each(|x| walk(x, Reads::of(s.ctor.name, &s.params), f)),
            _ => {}
        }
    }
    params
        .iter()
        .filter(|(k, _)| !key::NOT_IN_KEY.contains(&k.as_str()))
        .for_each(|(_, v)| walk(v, None, f));
}

impl Plan {
    /// Computes every stage's key (fingerprinting its input files) and builds the DAG.
    /// Unreadable inputs are reported as diagnostics at the argument that names them.
    pub fn build(compiled: &Compiled, fingerprints: &mut Fingerprinter) -> Result<Plan, Vec<Diag>> {
        Plan::from_stages(compiled.stages.clone(), fingerprints)
    }

    /// [`Plan::build`] from the compiled stages, taken (not copied).
    ///
    /// Input files are fingerprinted first, in stage order; then the keys are computed level by
    /// level (a stage's level is one more than its upstream stages'), each level in parallel.
    pub fn from_stages(stages: Vec<StageDef>, fingerprints: &mut Fingerprinter) -> Result<Plan, Vec<Diag>> {
        let n = stages.len();
        let mut known: HashMap<(PathBuf, Option<Reads>), Result<Key, FingerprintError>> = HashMap::new();
        let mut levels: Vec<Vec<usize>> = Vec::new();
        let mut level_of: Vec<usize> = Vec::with_capacity(n);
        for (i, def) in stages.iter().enumerate() {
            for_each_keyed_path(&def.params, &mut |p, reads| {
                known
                    .entry((p.resolved.clone(), reads))
                    .or_insert_with(|| fingerprints.fingerprint_read(&p.resolved, reads));
            });
            let mut level = 0;
            for v in def.params.values() {
                v.for_each_stage(&mut |id| level = level.max(level_of[id.0 as usize] + 1));
            }
            level_of.push(level);
            if levels.len() <= level {
                levels.resize_with(level + 1, Vec::new);
            }
            levels[level].push(i);
        }
        type Keyed = Result<(Key, Vec<(String, Key)>), FingerprintError>;
        let mut keys: Vec<Key> = vec![[0; 32]; n];
        let mut results: Vec<Option<Keyed>> = (0..n).map(|_| None).collect();
        for level in &levels {
            let compute = |&i: &usize| -> (usize, Keyed) {
                let def: &StageDef = &stages[i];
                let mut r = Keys {
                    keys: &keys,
                    fingerprints: &known,
                    files: Vec::new(),
                };
                let keyed = key::stage_key(def.op, &def.params, &mut r).map(|k| (k, r.files));
                (i, keyed)
            };
            let done: Vec<(usize, Keyed)> = if level.len() >= PARALLEL_LEVEL {
                level.par_iter().map(compute).collect()
            } else {
                level.iter().map(compute).collect()
            };
            for (i, keyed) in done {
                if let Ok((k, _)) = &keyed {
                    keys[i] = *k;
                }
                results[i] = Some(keyed);
            }
        }
        let mut files = Vec::with_capacity(n);
        let mut diags = Vec::new();
        let mut reported: HashMap<String, ()> = HashMap::new();
        for (def, keyed) in stages.iter().zip(results) {
            match keyed.expect("every stage has a level") {
                Ok((_, f)) => files.push(f),
                Err(error) => {
                    if reported.insert(error.to_string(), ()).is_none() {
                        diags.push(missing_input(def, &error));
                    }
                    files.push(Vec::new());
                }
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        let edges: Vec<(usize, usize)> = stages
            .iter()
            .enumerate()
            .flat_map(|(i, def)| def.inputs.iter().map(move |up| (up.0 as usize, i)))
            .collect();
        let mut graph = DiGraph::with_capacity(stages.len(), edges.len());
        for ((def, key), files) in stages.into_iter().zip(keys).zip(files) {
            graph.add_node(PlanStage { def, key, files });
        }
        for (from, to) in edges {
            graph.add_edge(NodeIndex::new(from), NodeIndex::new(to), ());
        }
        Ok(Plan { graph })
    }

    /// Stages in topological order.
    pub fn stages(&self) -> impl Iterator<Item = &PlanStage> {
        self.graph.node_weights()
    }

    /// Number of stages.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// Whether the plan has no stages.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// The stage with this id.
    pub fn stage(&self, id: StageId) -> &PlanStage {
        &self.graph[NodeIndex::new(id.0 as usize)]
    }

    /// The stage with this name or alias.
    pub fn find(&self, name: &str) -> Option<&PlanStage> {
        self.stages()
            .find(|s| s.def.name == name || s.def.aliases.iter().any(|a| a == name))
    }

    /// Display name of a stage.
    pub fn name(&self, id: StageId) -> &str {
        &self.stage(id).def.name
    }

    /// A stage's parameters as JSON (stages by name).
    pub fn params_json(&self, stage: &PlanStage) -> serde_json::Value {
        let name = |id: StageId| self.name(id).to_string();
        serde_json::Value::Object(
            stage
                .def
                .params
                .iter()
                .map(|(k, v)| (k.clone(), crate::value::to_json(v, &name)))
                .collect(),
        )
    }
}

/// A stage's parameters as JSON, written by serde as they are read: the same text as
/// [`Plan::params_json`] (the mapping of [`crate::value::to_json`]), without building a JSON tree
/// (what `rkd plan --json` of a large sweep spends most of its time on otherwise).
pub struct ParamsJson<'a> {
    plan: &'a Plan,
    params: &'a Params,
}

impl<'a> ParamsJson<'a> {
    /// The parameters of this stage of the plan.
    pub fn new(plan: &'a Plan, stage: &'a PlanStage) -> ParamsJson<'a> {
        ParamsJson {
            plan,
            params: &stage.def.params,
        }
    }
}

impl serde::Serialize for ParamsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.params.iter().map(|(k, v)| (k, ValueJson(self.plan, v))))
    }
}

struct ValueJson<'a>(&'a Plan, &'a Value);

impl serde::Serialize for ValueJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let plan = self.0;
        match self.1 {
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Float(_) => s.serialize_unit(),
            Value::Str(x) => s.serialize_str(x),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Path(p) => s.serialize_str(&p.written),
            Value::List(xs) => s.collect_seq(xs.iter().map(|x| ValueJson(plan, x))),
            Value::Record(r) => s.collect_map(r.iter().map(|(k, x)| (k, ValueJson(plan, x)))),
            Value::Spec(spec) => {
                let params = ParamsJson {
                    plan,
                    params: &spec.params,
                };
                s.collect_map(std::iter::once((spec.ctor.name, params)))
            }
            Value::Stage(id) => s.serialize_str(plan.name(*id)),
            other => s.collect_str(other),
        }
    }
}

/// The diagnostic for an input that cannot be fingerprinted, at the argument naming it.
fn missing_input(def: &StageDef, error: &FingerprintError) -> Diag {
    // The path value that failed (or holds what failed), wherever it sits (directly, in a list,
    // or in a model/dataset spec).
    let span = def
        .params
        .values()
        .find_map(|v| failed_path(v, &error.path))
        .unwrap_or(def.span);
    Diag::new(Kind::File, span, format!("input of stage `{}` cannot be read: {error}", def.name))
        .label("this input")
        .help("paths are relative to the pipeline file's directory; check the path, or set it with env(name: ..., default: ...)")
}

fn failed_path(v: &Value, failed: &std::path::Path) -> Option<crate::source::Span> {
    match v {
        Value::Path(p) => failed.starts_with(&p.resolved).then_some(p.span),
        Value::List(xs) => xs.iter().find_map(|x| failed_path(x, failed)),
        Value::Record(r) => r.values().find_map(|x| failed_path(x, failed)),
        Value::Spec(s) => s.params.values().find_map(|x| failed_path(x, failed)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys computed one stage after another, as the encoding defines them.
    struct Sequential<'a>(&'a [Key], &'a mut Fingerprinter);

    impl Resolve for Sequential<'_> {
        type Error = FingerprintError;
        fn stage(&mut self, id: StageId) -> Result<Key, FingerprintError> {
            Ok(self.0[id.0 as usize])
        }
        fn path(&mut self, path: &PathValue, reads: Option<Reads>) -> Result<Key, FingerprintError> {
            self.1.fingerprint_read(&path.resolved, reads)
        }
    }

    #[test]
    fn keys_computed_level_by_level_in_parallel_equal_the_sequential_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.txt"), "x").unwrap();
        // 100 points × a chain of 3: levels of 100 stages (parallel), each reading a file.
        let mut src = String::from("sweep i in range(end: 100) {\n");
        src.push_str("  stage a = exec(cmd: \"true\", params: {i: i}, files: [\"data.txt\"])\n");
        src.push_str("  stage b = exec(cmd: \"true\", inputs: [a])\n");
        src.push_str("  stage c = exec(cmd: \"true\", inputs: [a, b])\n}\n");
        src.push_str("stage few = exec(cmd: \"true\")\n");
        let file = dir.path().join("p.rkd");
        let compiled = crate::compile::compile_source("p.rkd", &file, src);
        assert!(compiled.diags.is_empty(), "{:?}", compiled.diags);
        let plan = Plan::build(&compiled, &mut Fingerprinter::default()).unwrap();
        assert_eq!(plan.len(), 301);
        let mut fp = Fingerprinter::default();
        let mut keys = Vec::new();
        for def in &compiled.stages {
            let k = key::stage_key(def.op, &def.params, &mut Sequential(&keys, &mut fp)).unwrap();
            keys.push(k);
        }
        let planned: Vec<Key> = plan.stages().map(|s| s.key).collect();
        assert_eq!(planned, keys);
        assert!(plan.stages().take(1).all(|s| s.files.len() == 1));
    }
}

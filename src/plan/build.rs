//! Building the Plan from compiled stages: the petgraph DAG and every stage's key.

use super::fingerprint::Fingerprinter;
use crate::compile::{Compiled, StageDef};
use crate::diagnostic::{Diag, Kind};
use crate::store::key::{self, Key, Resolve};
use crate::value::{PathValue, StageId, Value};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::HashMap;

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

struct Keys<'a> {
    keys: &'a [Key],
    fingerprints: &'a mut Fingerprinter,
    files: Vec<(String, Key)>,
}

impl Resolve for Keys<'_> {
    type Error = String;
    fn stage(&mut self, id: StageId) -> Result<Key, String> {
        Ok(self.keys[id.0 as usize])
    }
    fn path(&mut self, path: &PathValue) -> Result<Key, String> {
        let fp = self.fingerprints.fingerprint(&path.resolved)?;
        self.files.push((path.written.clone(), fp));
        Ok(fp)
    }
}

impl Plan {
    /// Computes every stage's key (fingerprinting its input files) and builds the DAG.
    /// Unreadable inputs are reported as diagnostics at the argument that names them.
    pub fn build(compiled: &Compiled, fingerprints: &mut Fingerprinter) -> Result<Plan, Vec<Diag>> {
        let mut keys: Vec<Key> = Vec::with_capacity(compiled.stages.len());
        let mut files = Vec::with_capacity(compiled.stages.len());
        let mut diags = Vec::new();
        let mut reported: HashMap<String, ()> = HashMap::new();
        for def in &compiled.stages {
            let mut r = Keys {
                keys: &keys,
                fingerprints,
                files: Vec::new(),
            };
            match key::stage_key(def.op, &def.params, &mut r) {
                Ok(k) => {
                    files.push(r.files);
                    keys.push(k);
                }
                Err(message) => {
                    if reported.insert(message.clone(), ()).is_none() {
                        diags.push(missing_input(def, &message));
                    }
                    files.push(Vec::new());
                    keys.push([0; 32]);
                }
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        let mut graph = DiGraph::with_capacity(compiled.stages.len(), compiled.stages.len());
        for ((def, key), files) in compiled.stages.iter().zip(keys).zip(files) {
            graph.add_node(PlanStage {
                def: def.clone(),
                key,
                files,
            });
        }
        for (i, def) in compiled.stages.iter().enumerate() {
            for up in &def.inputs {
                graph.add_edge(NodeIndex::new(up.0 as usize), NodeIndex::new(i), ());
            }
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

/// The diagnostic for an input that cannot be fingerprinted, at the argument naming it.
fn missing_input(def: &StageDef, message: &str) -> Diag {
    // The path value that failed, wherever it sits (directly, in a list, or in a model/dataset spec).
    let span = def
        .params
        .values()
        .find_map(|v| failed_path(v, message))
        .unwrap_or(def.span);
    Diag::new(Kind::File, span, format!("input of stage `{}` cannot be read: {message}", def.name))
        .label("this input")
        .help("paths are relative to the pipeline file's directory; check the path, or set it with env(name: ..., default: ...)")
}

fn failed_path(v: &Value, message: &str) -> Option<crate::source::Span> {
    match v {
        Value::Path(p) => message.contains(&p.resolved.display().to_string()).then_some(p.span),
        Value::List(xs) => xs.iter().find_map(|x| failed_path(x, message)),
        Value::Record(r) => r.values().find_map(|x| failed_path(x, message)),
        Value::Spec(s) => s.params.values().find_map(|x| failed_path(x, message)),
        _ => None,
    }
}

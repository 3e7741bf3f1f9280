//! The moving references of a pipeline (`hf(repo:, revision: "main")`, `hf_dataset(...)`,
//! `glue(task:)` without `path:`), and their replacement by the commits the lock file pins.

use crate::compile::StageDef;
use crate::value::{Spec, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a reference names on the Hugging Face Hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HubKind {
    /// A model repository (`hf(...)`).
    Model,
    /// A dataset repository (`hf_dataset(...)`, `glue(task:)` without `path:`).
    Dataset,
}

/// A repository at a revision that may move (a branch or tag, not a commit).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HubRef {
    /// Model or dataset.
    pub kind: HubKind,
    /// `org/name`.
    pub repo: String,
    /// The branch or tag as written (`main`).
    pub revision: String,
}

impl HubRef {
    /// How the lock file names it: `org/name@main`.
    pub fn name(&self) -> String {
        format!("{}@{}", self.repo, self.revision)
    }
}

impl std::fmt::Display for HubRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            HubKind::Model => "model",
            HubKind::Dataset => "dataset",
        };
        write!(f, "{what} {}", self.name())
    }
}

/// Whether a revision is a commit (40 hex digits): it cannot move.
pub fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The Hub repository of the GLUE tasks fetched without `path:`.
pub const GLUE_REPO: &str = "nyu-mll/glue";

/// The moving reference a spec makes, if it makes one.
fn reference(spec: &Spec) -> Option<HubRef> {
    let s = |k: &str| match spec.params.get(k) {
        Some(Value::Str(v)) => Some(v.to_string()),
        _ => None,
    };
    let (kind, repo) = match spec.ctor.name {
        "hf" => (HubKind::Model, s("repo")?),
        "hf_dataset" => (HubKind::Dataset, s("repo")?),
        "glue" if !spec.params.contains_key("path") => (HubKind::Dataset, GLUE_REPO.to_string()),
        _ => return None,
    };
    let revision = s("revision").unwrap_or_else(|| "main".into());
    (!is_commit(&revision)).then_some(HubRef { kind, repo, revision })
}

/// Every moving reference in the stages' parameters, each once, sorted.
pub fn moving_refs(stages: &[StageDef]) -> Vec<HubRef> {
    fn walk(v: &Value, out: &mut std::collections::BTreeSet<HubRef>) {
        match v {
            Value::Spec(s) => {
                out.extend(reference(s));
                s.params.values().for_each(|x| walk(x, out));
            }
            Value::List(xs) => xs.iter().for_each(|x| walk(x, out)),
            Value::Record(r) => r.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    for s in stages {
        s.params.values().for_each(|v| walk(v, &mut out));
    }
    out.into_iter().collect()
}

/// Replaces every moving reference's revision by its pinned commit (`revision: "<sha>"`), so
/// that stage keys, and what the ops download, are that commit.
pub fn apply(stages: &mut [StageDef], pins: &BTreeMap<HubRef, String>) {
    if pins.is_empty() {
        return;
    }
    for s in stages {
        let changed: Vec<(String, Value)> = s
            .params
            .iter()
            .filter_map(|(k, v)| pinned(v, pins).map(|v| (k.clone(), v)))
            .collect();
        s.params.extend(changed);
    }
}

/// `v` with its references pinned, or `None` when nothing in it changes.
fn pinned(v: &Value, pins: &BTreeMap<HubRef, String>) -> Option<Value> {
    match v {
        Value::Spec(spec) => {
            let mut params = spec.params.clone();
            let mut changed = false;
            for (k, x) in &spec.params {
                if let Some(x) = pinned(x, pins) {
                    params.insert(k.clone(), x);
                    changed = true;
                }
            }
            if let Some(commit) = reference(spec).and_then(|r| pins.get(&r)) {
                params.insert("revision".into(), Value::Str(commit.as_str().into()));
                changed = true;
            }
            changed.then(|| {
                Value::Spec(Arc::new(Spec {
                    ctor: spec.ctor,
                    params,
                    label: spec.label.clone(),
                }))
            })
        }
        Value::List(xs) => {
            let new: Vec<Option<Value>> = xs.iter().map(|x| pinned(x, pins)).collect();
            new.iter().any(Option::is_some).then(|| {
                Value::List(Arc::new(
                    xs.iter()
                        .zip(new)
                        .map(|(old, new)| new.unwrap_or_else(|| old.clone()))
                        .collect(),
                ))
            })
        }
        Value::Record(r) => {
            let new: Vec<(String, Option<Value>)> = r.iter().map(|(k, x)| (k.clone(), pinned(x, pins))).collect();
            new.iter().any(|(_, x)| x.is_some()).then(|| {
                Value::Record(Arc::new(
                    new.into_iter()
                        .map(|(k, x)| {
                            let old = r[&k].clone();
                            (k, x.unwrap_or(old))
                        })
                        .collect(),
                ))
            })
        }
        _ => None,
    }
}

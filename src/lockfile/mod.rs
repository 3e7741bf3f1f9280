//! The lock file `<pipeline>.lock` beside a pipeline: what its moving references meant when it
//! was locked (Hub revisions → commits), the content hash of its data, and every stage's key;
//! JSON (written and compared on every run, so it must be cheap to render).
//!
//! `rkd run` uses the lock's pins and writes the lock (adding a pin for a new reference, the
//! current data hashes and keys); `rkd update` moves the pins to what the Hub names now;
//! `rkd check --locked` and `rkd run --locked` fail when the pipeline and its lock disagree.

pub mod pins;
pub mod resolve;

use crate::compile::StageDef;
use crate::plan::Plan;
use crate::store::key::hex;
use pins::{HubKind, HubRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The lock format's version.
pub const VERSION: u32 = 1;

/// A lock file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// [`VERSION`].
    pub version: u32,
    /// Model repositories: `org/name@revision` → commit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, String>,
    /// Dataset repositories: `org/name@revision` → commit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub datasets: BTreeMap<String, String>,
    /// Input paths as written → content fingerprint (hex).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Stage name → key (hex).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stages: BTreeMap<String, String>,
}

/// How references are pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The lock's pins; a reference it lacks is resolved (Hub, else cache), and one that cannot
    /// be resolved is left as written, with a warning (what commands that only look do: `plan`
    /// works offline).
    Look,
    /// The lock's pins; a reference it lacks is resolved (Hub, else cache) and added.
    Use,
    /// The lock's pins only; a reference it lacks is an error (`--locked`).
    Locked,
    /// Every reference resolved again at the Hub (`rkd update`).
    Update,
}

/// The pins a pipeline's stages were given.
#[derive(Debug)]
pub struct Pinned {
    /// Where the lock file is.
    pub path: PathBuf,
    /// The lock file as it was read (`None`: there was none).
    pub old: Option<LockFile>,
    /// Reference → commit.
    pub pins: BTreeMap<HubRef, String>,
    /// What was resolved now, for the user: "pinned model x@main to abc… (Hub)".
    pub resolved: Vec<String>,
    /// References that could not be resolved and were left as written ([`Mode::Look`]).
    pub unpinned: Vec<String>,
}

impl Pinned {
    /// How `now` (the lock of the plan built with these pins) differs from the lock file read,
    /// one line each; a missing lock file is one difference. Empty when they agree.
    pub fn disagreements(&self, now: &LockFile) -> Vec<String> {
        match &self.old {
            None => vec![format!(
                "there is no lock file {} (`rkd run` without --locked, or `rkd update`, writes it)",
                self.path.display()
            )],
            Some(old) => old.differences(now),
        }
    }

    /// Writes `now` as the lock file unless it equals the one read (then without touching the
    /// file: a run that changed nothing neither renders nor reads it again); whether it wrote.
    pub fn save(&self, now: &LockFile) -> std::io::Result<bool> {
        if self.old.as_ref() == Some(now) {
            return Ok(false);
        }
        now.write_if_changed(&self.path)
    }
}

/// `exp.lock` for `exp.rkd`.
pub fn path_for(pipeline: &Path) -> PathBuf {
    pipeline.with_extension("lock")
}

impl LockFile {
    /// Reads a lock file; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<LockFile>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let lock: LockFile = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not a valid lock file ({e}); `rkd update` writes a new one",
                path.display()
            )
        })?;
        if lock.version != VERSION {
            return Err(format!(
                "{} has lock format {}, this rkd writes {VERSION}; `rkd update` rewrites it",
                path.display(),
                lock.version
            ));
        }
        Ok(Some(lock))
    }

    /// The lock of a plan built with these pins.
    pub fn of(plan: &Plan, pins: &BTreeMap<HubRef, String>) -> LockFile {
        let mut lock = LockFile {
            version: VERSION,
            ..Default::default()
        };
        for (r, commit) in pins {
            let table = match r.kind {
                HubKind::Model => &mut lock.models,
                HubKind::Dataset => &mut lock.datasets,
            };
            table.insert(r.name(), commit.clone());
        }
        for s in plan.stages() {
            lock.stages.insert(s.def.name.clone(), hex(&s.key));
            for (path, fp) in &s.files {
                lock.data.insert(path.clone(), hex(fp));
            }
        }
        lock
    }

    /// The pin of a reference, if the lock has one.
    pub fn pin(&self, r: &HubRef) -> Option<&String> {
        match r.kind {
            HubKind::Model => self.models.get(&r.name()),
            HubKind::Dataset => self.datasets.get(&r.name()),
        }
    }

    /// The file's text: JSON, one pin, input or stage per line (sorted, so that diffs are small).
    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Writes the lock when its text differs from what the file holds; whether it wrote.
    pub fn write_if_changed(&self, path: &Path) -> std::io::Result<bool> {
        let text = self.render();
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        crate::store::records::atomic_write(path, text.as_bytes())?;
        Ok(true)
    }

    /// How `now` differs from this lock, one line each (empty when they agree).
    pub fn differences(&self, now: &LockFile) -> Vec<String> {
        let mut out = Vec::new();
        let tables = [
            ("model", &self.models, &now.models),
            ("dataset", &self.datasets, &now.datasets),
            ("input", &self.data, &now.data),
            ("stage", &self.stages, &now.stages),
        ];
        for (what, old, new) in tables {
            for (k, v) in new {
                match old.get(k) {
                    None if what == "model" || what == "dataset" => out.push(format!("{what} {k} is not pinned")),
                    None => out.push(format!("{what} `{k}` is not in the lock (new)")),
                    Some(o) if o != v => out.push(match what {
                        "input" => format!("input `{k}` changed: {} in the lock, {} now", short(o), short(v)),
                        "stage" => format!("stage `{k}`: key {} in the lock, {} now", short(o), short(v)),
                        _ => format!("{what} {k}: pinned to {}, now {}", short(o), short(v)),
                    }),
                    Some(_) => {}
                }
            }
            for k in old.keys().filter(|k| !new.contains_key(*k)) {
                out.push(format!("{what} `{k}` is in the lock but no longer in the pipeline"));
            }
        }
        out
    }
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

/// Pins the moving references of `stages` (see [`Mode`]) and rewrites them to the commits.
/// Errors: a lock file that cannot be read, a reference that cannot be resolved.
pub fn pin(pipeline: &Path, stages: &mut [StageDef], mode: Mode) -> Result<Pinned, Vec<String>> {
    let path = path_for(pipeline);
    let old = LockFile::read(&path).map_err(|e| vec![e])?;
    let refs = pins::moving_refs(stages);
    let mut pinned = BTreeMap::new();
    let mut resolved = Vec::new();
    let mut problems = Vec::new();
    let mut unpinned = Vec::new();
    for r in refs {
        let locked = old.as_ref().and_then(|l| l.pin(&r)).filter(|c| pins::is_commit(c));
        let commit = match (mode, locked) {
            (Mode::Look | Mode::Use | Mode::Locked, Some(c)) => c.clone(),
            (Mode::Locked, None) => {
                problems.push(format!(
                    "{r} is not pinned in {} (`rkd update` or `rkd run` without --locked pins it)",
                    path.display()
                ));
                continue;
            }
            (Mode::Update, _) => match resolve::from_hub(&r) {
                Ok(c) => {
                    match locked {
                        Some(was) if *was == c => resolved.push(format!("{r}: {} (unchanged)", short(&c))),
                        Some(was) => resolved.push(format!("{r}: {} → {}", short(was), short(&c))),
                        None => resolved.push(format!("{r}: pinned to {}", short(&c))),
                    }
                    c
                }
                Err(e) => {
                    problems.push(format!("cannot ask the Hugging Face Hub for {r}: {e}"));
                    continue;
                }
            },
            (Mode::Look | Mode::Use, None) => match resolve::resolve(&r) {
                Ok((c, source)) => {
                    let from = match source {
                        resolve::Source::Hub => "the Hub's",
                        resolve::Source::Cache => "offline: the local cache's",
                    };
                    resolved.push(format!("pinned {r} to {} ({from} current commit)", short(&c)));
                    c
                }
                Err(e) if mode == Mode::Look => {
                    unpinned.push(format!(
                        "{e}; its stages are keyed by the revision as written until it is pinned"
                    ));
                    continue;
                }
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            },
        };
        pinned.insert(r, commit);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    pins::apply(stages, &pinned);
    Ok(Pinned {
        path,
        old,
        pins: pinned,
        resolved,
        unpinned,
    })
}

#[cfg(test)]
mod tests;

//! Run records: one JSON file per run (older runs: YAML), plus, per pipeline file, an index of
//! the latest record of each stage name (what `plan` compares against to say why a stage runs).

use super::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What happened to a stage in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It ran and its result was stored.
    Ran,
    /// Its result was already stored.
    Cached,
    /// Its result was pulled from a remote cache (verified) instead of run.
    Pulled,
    /// It ran and failed.
    Failed,
    /// It did not run because something it needs failed (or the run stopped).
    Skipped,
    /// It was running when the run was interrupted (Ctrl-C, SIGTERM, scancel): nothing stored,
    /// nothing failed.
    Interrupted,
}

impl Outcome {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ran => "ran",
            Outcome::Cached => "cached",
            Outcome::Pulled => "pulled",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// One stage as it was defined and what happened to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Display name.
    pub name: String,
    /// Other names of the same stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Op name.
    pub op: String,
    /// Op version.
    pub op_version: u32,
    /// Stage key (hex).
    pub key: String,
    /// Outcome.
    pub status: Outcome,
    /// Seconds it ran (0 when cached or skipped).
    #[serde(default)]
    pub time_s: f64,
    /// Headline metrics, when the op reports some.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Resolved parameters (upstream stages by name). Left out of run records: the entry's
    /// spec.yaml, found by key, holds them.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub params: serde_json::Value,
    /// Upstream stages: name → key (hex).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// Input files: path as written → fingerprint (hex).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// The step its training resumed from, when it went on from an in-stage checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u64>,
    /// Times it was run in this run, when more than once (`--retries`).
    #[serde(default, skip_serializing_if = "is_one_or_less")]
    pub attempts: u32,
    /// The most GPU memory in use while it ran (the whole GPU's, sampled every 0.1 s), when it
    /// ran on a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_peak_bytes: Option<u64>,
    /// Why the stage failed or was skipped (its error, or "skipped: `x` failed").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether a stage ran at most once (the attempts a record leaves out).
fn is_one_or_less(n: &u32) -> bool {
    *n <= 1
}

/// One run of one pipeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// rkd's version.
    pub rkd_version: String,
    /// The pipeline file.
    pub pipeline: String,
    /// blake3 of the pipeline file's text.
    pub pipeline_hash: String,
    /// When the run started (RFC 3339, UTC).
    pub started: String,
    /// Seconds the run took.
    pub duration_s: f64,
    /// ok, failed or interrupted.
    pub status: String,
    /// The device the stages computed on (`cpu`, `cuda:0`); empty in records of older rkd.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
    /// The remote cache the run pulled from or pushed to (no credentials), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// How many stages ran, were cached, failed, were skipped.
    pub counts: BTreeMap<String, usize>,
    /// Every stage of the plan.
    pub stages: Vec<StageRecord>,
}

impl RunRecord {
    /// How a record names the pipeline file it ran (`pipeline`): its canonical path.
    pub fn pipeline_name(pipeline: &std::path::Path) -> String {
        pipeline
            .canonicalize()
            .unwrap_or_else(|_| pipeline.to_path_buf())
            .display()
            .to_string()
    }
}

/// The latest record of each stage name of one pipeline file: name → stage.
pub type Index = BTreeMap<String, StageRecord>;

/// The folder of `runs/` holding one index per pipeline file (`<id>.json`, `<id>.digest`).
const INDEXES: &str = "index";

impl Store {
    /// Writes a run record; returns its path.
    pub fn write_record(&self, record: &RunRecord) -> std::io::Result<PathBuf> {
        let dir = self.runs_dir();
        std::fs::create_dir_all(&dir)?;
        let stamp = record
            .started
            .replace([':', '-'], "")
            .replace('T', "-")
            .replace('Z', "");
        let path = dir.join(format!("{stamp}-{}.json", std::process::id()));
        let mut json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        json.push(b'\n');
        atomic_write(&path, &json)?;
        Ok(path)
    }

    /// Every run record's path, oldest first (JSON, and the YAML of rkd before 2026-12).
    pub fn record_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.runs_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json" || x == "yaml"))
                    // `<started>-<pid>`: not the index kept beside them.
                    .filter(|p| p.file_name().is_some_and(|n| n.as_encoded_bytes()[0].is_ascii_digit()))
                    .collect()
            })
            .unwrap_or_default();
        paths.sort();
        paths
    }

    /// The stage an entry holds, as its `spec.yaml` records it (`None` when the store does not
    /// hold the key, or the file cannot be read).
    pub fn stage_spec(&self, key: &super::key::Key) -> Option<StageRecord> {
        let text = std::fs::read_to_string(self.entry_dir(key).join("spec.yaml")).ok()?;
        serde_yaml::from_str(&text).ok()
    }

    /// The metrics an entry's stage recorded (`metrics.json`).
    pub fn stage_metrics(&self, key: &super::key::Key) -> Option<BTreeMap<String, f64>> {
        let bytes = std::fs::read(self.entry_dir(key).join("metrics.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Reads a run record.
    pub fn read_record(path: &std::path::Path) -> Result<RunRecord, RecordError> {
        let path = path.to_path_buf();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(error) => return Err(RecordError::Unreadable { path, error }),
        };
        let parsed = if path.extension().is_some_and(|x| x == "yaml") {
            serde_yaml::from_str(&text).map_err(|e| e.to_string())
        } else {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        };
        parsed.map_err(|error| RecordError::Invalid { path, error })
    }

    /// Where the index of the pipeline file `pipeline` is kept, with the extension `ext`: one
    /// per file (as run records name it), so that pipelines sharing a store, and their stages of
    /// the same name, are never compared with each other.
    fn index_path(&self, pipeline: &std::path::Path, ext: &str) -> PathBuf {
        let id = blake3::hash(RunRecord::pipeline_name(pipeline).as_bytes()).to_hex();
        self.runs_dir().join(INDEXES).join(format!("{}.{ext}", &id[..32]))
    }

    /// The index of the latest record of each stage name of the pipeline file `pipeline` (empty
    /// if there is none).
    pub fn read_index(&self, pipeline: &std::path::Path) -> Index {
        std::fs::read(self.index_path(pipeline, "json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Brings the index of the pipeline file `pipeline` up to date with a run of it: `stages` are
    /// the stages the run decided about, and `full(i)` builds the complete record of stage `i`
    /// (only called for stages whose entry changes). Skips all work when the run decided exactly
    /// what the last update recorded. Runs under a lock, so concurrent runs lose no update.
    pub fn update_index(
        &self,
        pipeline: &std::path::Path,
        stages: &[Decided<'_>],
        full: impl Fn(usize) -> StageRecord,
    ) -> std::io::Result<()> {
        let mut h = blake3::Hasher::new();
        for d in stages {
            for n in &d.names {
                h.update(n.as_bytes());
                h.update(&[0]);
            }
            h.update(d.key.as_bytes());
            h.update(d.status.name().as_bytes());
        }
        let digest = h.finalize().to_hex().to_string();
        let digest_path = self.index_path(pipeline, "digest");
        if std::fs::read_to_string(&digest_path).is_ok_and(|d| d == digest) {
            return Ok(());
        }
        let lock_key = *blake3::hash(b"rkd-index-lock").as_bytes();
        let _lock = super::lock::KeyLock::acquire(self, &lock_key)?;
        let mut index = self.read_index(pipeline);
        for (i, d) in stages.iter().enumerate() {
            let current = |e: &StageRecord| e.key == d.key && e.status == d.status;
            if d.names.iter().all(|n| index.get(*n).is_some_and(current)) {
                continue;
            }
            let mut entry = full(i);
            entry.status = d.status;
            entry.time_s = 0.0;
            entry.metrics.clear();
            for n in &d.names {
                index.insert(n.to_string(), entry.clone());
            }
        }
        std::fs::create_dir_all(self.runs_dir().join(INDEXES))?;
        atomic_write(&self.index_path(pipeline, "json"), &serde_json::to_vec(&index)?)?;
        atomic_write(&digest_path, digest.as_bytes())
    }
}

/// A stage a run decided about (ran, was cached, or failed), for [`Store::update_index`].
#[derive(Clone, Debug)]
pub struct Decided<'a> {
    /// Its name and aliases.
    pub names: Vec<&'a str>,
    /// Its key (hex).
    pub key: &'a str,
    /// How it ended, as the index keeps it: `Failed`, `Interrupted`, or `Ran` (ran or cached).
    pub status: Outcome,
}

/// Why a run record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file cannot be read.
    #[error("{}: {error}", .path.display())]
    Unreadable {
        /// The record file.
        path: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not a run record.
    #[error("{}: {error}", .path.display())]
    Invalid {
        /// The record file.
        path: std::path::PathBuf,
        /// Why.
        error: String,
    },
}

/// Writes a file via a temporary file and a rename.
pub fn atomic_write(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(started: &str) -> RunRecord {
        RunRecord {
            rkd_version: "0.1.0".into(),
            pipeline: "/p.rkd".into(),
            pipeline_hash: "h".into(),
            started: started.into(),
            duration_s: 1.5,
            status: "ok".into(),
            device: "cpu".into(),
            remote: None,
            counts: BTreeMap::from([("ran".to_string(), 1)]),
            stages: vec![StageRecord {
                name: "teacher".into(),
                aliases: Vec::new(),
                op: "train".into(),
                op_version: 3,
                key: "ab".into(),
                status: Outcome::Ran,
                time_s: 1.0,
                metrics: BTreeMap::from([("accuracy".to_string(), 0.75)]),
                params: serde_json::Value::Null,
                inputs: BTreeMap::new(),
                files: BTreeMap::new(),
                resumed_from: None,
                attempts: 1,
                gpu_memory_peak_bytes: Some(3 << 30),
                error: None,
            }],
        }
    }

    #[test]
    fn records_are_json_and_the_yaml_of_older_runs_is_still_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let new = store.write_record(&record("2026-12-02T09:00:00Z")).unwrap();
        assert_eq!(new.extension().unwrap(), "json");
        let old = store.runs_dir().join("20261101-080000-1.yaml");
        std::fs::write(&old, serde_yaml::to_string(&record("2026-11-01T08:00:00Z")).unwrap()).unwrap();
        std::fs::write(store.runs_dir().join("index.json"), "{}").unwrap();
        std::fs::create_dir_all(store.runs_dir().join(INDEXES)).unwrap();
        assert_eq!(
            store.record_paths(),
            [old.clone(), new.clone()],
            "the index is not a record"
        );
        for (path, started) in [(&old, "2026-11-01T08:00:00Z"), (&new, "2026-12-02T09:00:00Z")] {
            let r = Store::read_record(path).unwrap();
            assert_eq!(r.started, started);
            assert_eq!(r.stages[0].metrics["accuracy"], 0.75);
            assert_eq!(r.stages[0].gpu_memory_peak_bytes, Some(3 << 30));
        }
        // A stage that ran on the CPU says nothing of GPU memory.
        let mut cpu = record("2026-12-03T09:00:00Z");
        cpu.stages[0].gpu_memory_peak_bytes = None;
        assert!(!serde_json::to_string(&cpu).unwrap().contains("gpu_memory"));
        std::fs::write(&new, "{ not json").unwrap();
        assert!(matches!(Store::read_record(&new), Err(RecordError::Invalid { .. })));
    }
}

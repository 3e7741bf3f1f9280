//! Run records: one YAML file per run, plus an index of the latest record of each stage name
//! (what `plan` compares against to say why a stage runs).

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
    /// It ran and failed.
    Failed,
    /// It did not run because something it needs failed (or the run stopped).
    Skipped,
}

impl Outcome {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ran => "ran",
            Outcome::Cached => "cached",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
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
    /// Resolved parameters (upstream stages by name).
    pub params: serde_json::Value,
    /// Upstream stages: name → key (hex).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Input files: path as written → fingerprint (hex).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
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
    /// How many stages ran, were cached, failed, were skipped.
    pub counts: BTreeMap<String, usize>,
    /// Every stage of the plan.
    pub stages: Vec<StageRecord>,
}

/// The latest record of each stage name: name → (record file, stage).
pub type Index = BTreeMap<String, StageRecord>;

const INDEX: &str = "index.json";

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
        let path = dir.join(format!("{stamp}-{}.yaml", std::process::id()));
        let yaml = serde_yaml::to_string(record).map_err(std::io::Error::other)?;
        atomic_write(&path, yaml.as_bytes())?;
        Ok(path)
    }

    /// Every run record's path, oldest first.
    pub fn record_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.runs_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                    .collect()
            })
            .unwrap_or_default();
        paths.sort();
        paths
    }

    /// Reads a run record.
    pub fn read_record(path: &std::path::Path) -> Result<RunRecord, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The index of the latest record of each stage name (empty if there is none).
    pub fn read_index(&self) -> Index {
        std::fs::read(self.runs_dir().join(INDEX))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Merges a run's stages into the index (under a lock, so concurrent runs do not lose updates).
    /// Stages that were skipped are not recorded: nothing about them was decided.
    pub fn update_index(&self, stages: &[StageRecord]) -> std::io::Result<()> {
        let lock_key = *blake3::hash(b"rkd-index-lock").as_bytes();
        let _lock = super::lock::KeyLock::acquire(self, &lock_key)?;
        let mut index = self.read_index();
        let mut changed = false;
        for s in stages.iter().filter(|s| s.status != Outcome::Skipped) {
            let mut entry = s.clone();
            entry.time_s = 0.0;
            for name in std::iter::once(&s.name).chain(&s.aliases) {
                if index.get(name) != Some(&entry) {
                    index.insert(name.clone(), entry.clone());
                    changed = true;
                }
            }
        }
        if changed {
            std::fs::create_dir_all(self.runs_dir())?;
            atomic_write(&self.runs_dir().join(INDEX), &serde_json::to_vec(&index)?)?;
        }
        Ok(())
    }
}

/// Writes a file via a temporary file and a rename.
pub fn atomic_write(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

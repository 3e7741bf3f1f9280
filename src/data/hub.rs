//! `hf_dataset`: a dataset repository of the Hugging Face Hub, fetched into the Hugging Face
//! cache (`$HF_HOME/hub`, as `hf()` does for models) and read as a table.
//!
//! The Hub keeps a dataset as split files named by split — `data/train-00000-of-00001.parquet`,
//! or `<config>/train-….parquet` for a dataset with several configurations — which is the
//! layout [`super::table::split_files`] reads. Only the table files of the chosen configuration
//! are downloaded. With `HF_HUB_OFFLINE=1` the cache alone is used; a revision that is a commit
//! hash, or a revision whose files are cached, needs no network either.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use super::error::DataError;
use super::table;

/// Whether `HF_HUB_OFFLINE` asks for the cache alone (`1`, `true`, `yes`, `on`).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// The folder inside a snapshot that holds the chosen configuration's split files.
fn folder(config: Option<&str>) -> &str {
    config.unwrap_or("")
}

/// Whether a repository file is a split file of the configuration: a table file in `<config>/`
/// (or, without a config, at the top or in `data/` or `default/`) named by its split.
fn wanted(file: &str, config: Option<&str>) -> bool {
    let path = Path::new(file);
    let parent = path.parent().and_then(|p| p.to_str()).unwrap_or("");
    let in_folder = match config {
        Some(c) => parent == c || parent == format!("{c}/data"),
        None => matches!(parent, "" | "data" | "default"),
    };
    // GLUE's MNLI keeps two validation sets (matched, mismatched).
    in_folder
        && matches!(
            table::split_stem(path),
            Some("train" | "validation" | "dev" | "valid" | "test" | "validation_matched" | "validation_mismatched")
        )
}

/// The cached snapshot directory of `repo` at `revision` (a branch or tag named in the cache's
/// refs/, or a commit), if the cache has one.
pub fn cached_snapshot(cache: &hf_hub::Cache, repo: &Repo) -> Option<PathBuf> {
    let root = cache.path().join(repo.folder_name());
    let commit = std::fs::read_to_string(root.join("refs").join(repo.revision()))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| repo.revision().to_string());
    let dir = root.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// The directory to read as a table: the snapshot's configuration folder (the whole snapshot
/// without a config: split discovery looks in its `data/` too).
fn table_dir(snapshot: &Path, config: Option<&str>) -> PathBuf {
    snapshot.join(folder(config))
}

fn unreachable_hint(repo: &str) -> String {
    format!(
        "download it once with network access (it is then read from the cache), or put its files in a folder and use text_table/image_table(path: ...); the dataset's page: https://huggingface.co/datasets/{repo}"
    )
}

/// The directory of `repo`'s configuration at `revision` in the Hugging Face cache, if the cache
/// has that snapshot (no network).
pub fn cached(repo: &str, config: Option<&str>, revision: &str) -> Option<PathBuf> {
    let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Dataset, revision.to_string());
    cached_snapshot(&hf_hub::Cache::from_env(), &hub_repo).map(|s| table_dir(&s, config))
}

/// Fetches (or finds in the cache) the split files of `repo`'s configuration at `revision` and
/// returns the directory to read them from.
pub fn fetch(repo: &str, config: Option<&str>, revision: &str) -> Result<PathBuf, DataError> {
    let cache = hf_hub::Cache::from_env();
    let builder = hf_hub::api::sync::ApiBuilder::from_env();
    fetch_with(repo, config, revision, &cache, builder, offline())
}

fn fetch_with(
    repo: &str,
    config: Option<&str>,
    revision: &str,
    cache: &hf_hub::Cache,
    builder: hf_hub::api::sync::ApiBuilder,
    offline: bool,
) -> Result<PathBuf, DataError> {
    let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Dataset, revision.to_string());
    let cached = cached_snapshot(cache, &hub_repo).map(|s| table_dir(&s, config));
    let pinned = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    if let Some(dir) = &cached {
        if offline || pinned {
            return Ok(dir.clone());
        }
    }
    if offline {
        return Err(DataError::new(format!(
            "hf_dataset: {repo} (revision {revision}) is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set; {}",
            cache.path().display(),
            unreachable_hint(repo)
        )));
    }
    let fail = |e: &dyn std::fmt::Display| DataError {
        transient: true,
        ..DataError::new(format!(
            "hf_dataset: cannot fetch {repo} from the Hugging Face Hub (offline?): {e}; {}",
            unreachable_hint(repo)
        ))
    };
    let api = builder.with_progress(true).build().map_err(|e| fail(&e))?;
    let api_repo = api.repo(hub_repo);
    let info = match api_repo.info() {
        Ok(info) => info,
        // No network, but an earlier download: read what the cache has.
        Err(e) => return cached.ok_or_else(|| fail(&e)),
    };
    let files: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|f| wanted(f, config))
        .collect();
    if files.is_empty() {
        return Err(DataError::new(format!(
            "hf_dataset: {repo} has no split files (train.*, validation.*, test.* as Parquet, CSV or JSON Lines) {}",
            match config {
                Some(c) => format!("in its configuration folder `{c}/`"),
                None =>
                    "at its top, in data/ or default/ (a dataset with several configurations needs config:)".to_string(),
            }
        )));
    }
    let mut snapshot = None;
    for f in &files {
        let local = api_repo.get(f).map_err(|e| fail(&e))?;
        // The snapshot directory is the local path less the repository file name.
        let depth = Path::new(f).components().count();
        snapshot = local.ancestors().nth(depth).map(Path::to_path_buf);
    }
    let snapshot = snapshot.ok_or_else(|| DataError::new(format!("hf_dataset: {repo}: unexpected cache layout")))?;
    Ok(table_dir(&snapshot, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_files_are_chosen_by_configuration() {
        assert!(wanted("data/train-00000-of-00001.parquet", None));
        assert!(wanted("validation.csv", None));
        assert!(!wanted("README.md", None));
        assert!(!wanted("sst2/train-00000-of-00001.parquet", None));
        assert!(wanted("sst2/train-00000-of-00001.parquet", Some("sst2")));
        assert!(!wanted("cola/train-00000-of-00001.parquet", Some("sst2")));
        assert!(!wanted("data/extra-00000-of-00001.parquet", None));
    }

    fn snapshot(cache_dir: &Path, repo: &str, commit: &str) -> PathBuf {
        let root = cache_dir.join(format!("datasets--{}", repo.replace('/', "--")));
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs/main"), commit).unwrap();
        let snap = root.join("snapshots").join(commit);
        std::fs::create_dir_all(snap.join("data")).unwrap();
        snap
    }

    fn no_network(cache: &hf_hub::Cache) -> hf_hub::api::sync::ApiBuilder {
        // Nothing listens on port 9 (discard) here: a request fails at once.
        hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
            .with_endpoint("http://127.0.0.1:9".into())
            .with_retries(0)
    }

    #[test]
    fn offline_reads_the_cache_and_says_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = hf_hub::Cache::new(tmp.path().to_path_buf());
        let snap = snapshot(tmp.path(), "someone/reviews", "abc123");
        let dir = fetch_with("someone/reviews", None, "main", &cache, no_network(&cache), true).unwrap();
        assert_eq!(dir, snap);
        let dir = fetch_with(
            "someone/reviews",
            Some("sst2"),
            "main",
            &cache,
            no_network(&cache),
            true,
        )
        .unwrap();
        assert_eq!(dir, snap.join("sst2"));
        let e = fetch_with("someone/other", None, "main", &cache, no_network(&cache), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("someone/other (revision main) is not in the Hugging Face cache"),
            "{e}"
        );
        assert!(e.contains("HF_HUB_OFFLINE is set"), "{e}");
    }

    #[test]
    fn without_network_a_cached_snapshot_is_used_and_none_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = hf_hub::Cache::new(tmp.path().to_path_buf());
        let snap = snapshot(tmp.path(), "someone/reviews", "abc123");
        let dir = fetch_with("someone/reviews", None, "main", &cache, no_network(&cache), false).unwrap();
        assert_eq!(dir, snap);
        let e = fetch_with("someone/other", None, "main", &cache, no_network(&cache), false).unwrap_err();
        assert!(e.transient);
        assert!(
            e.to_string()
                .starts_with("hf_dataset: cannot fetch someone/other from the Hugging Face Hub (offline?)"),
            "{e}"
        );
    }
}

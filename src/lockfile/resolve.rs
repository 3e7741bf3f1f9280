//! Resolving a moving reference to the commit it names today: asked of the Hugging Face Hub
//! (`HF_ENDPOINT` may point elsewhere), or, without network, read from the local Hugging Face
//! cache (`$HF_HOME/hub/<repo>/refs/<revision>`, written by every download).

use super::pins::{HubKind, HubRef};
use hf_hub::{Repo, RepoType};

/// Where a resolved commit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The Hub answered.
    Hub,
    /// The Hub could not be asked (offline); the local cache's last download says.
    Cache,
}

fn repo(r: &HubRef) -> Repo {
    let kind = match r.kind {
        HubKind::Model => RepoType::Model,
        HubKind::Dataset => RepoType::Dataset,
    };
    Repo::with_revision(r.repo.clone(), kind, r.revision.clone())
}

/// The commit the local Hugging Face cache last saw for `r` (no network).
pub fn cached(r: &HubRef) -> Option<String> {
    let cache = hf_hub::Cache::from_env();
    let refs = cache.path().join(repo(r).folder_name()).join("refs").join(&r.revision);
    let commit = std::fs::read_to_string(refs).ok()?.trim().to_string();
    super::pins::is_commit(&commit).then_some(commit)
}

/// The commit the Hub names for `r` now.
pub fn from_hub(r: &HubRef) -> Result<String, String> {
    if crate::data::hub::offline() {
        return Err("HF_HUB_OFFLINE is set".into());
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| e.to_string())?;
    let info = api.repo(repo(r)).info().map_err(|e| e.to_string())?;
    if super::pins::is_commit(&info.sha) {
        Ok(info.sha)
    } else {
        Err(format!("the Hub answered `{}`, not a commit", info.sha))
    }
}

/// The commit of `r`: from the Hub, else (offline) from the local cache.
pub fn resolve(r: &HubRef) -> Result<(String, Source), String> {
    match from_hub(r) {
        Ok(c) => Ok((c, Source::Hub)),
        Err(hub) => cached(r).map(|c| (c, Source::Cache)).ok_or_else(|| {
            format!(
                "cannot resolve {r} to a commit: the Hugging Face Hub cannot be asked ({hub}) and the local cache has no download of it; \
                 connect once, or pin it in the pipeline with `revision: \"<commit>\"`"
            )
        }),
    }
}

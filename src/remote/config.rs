//! Which remote a command uses: `--remote URL`, else `$RKD_REMOTE`, else the `[remote]` table of
//! `rkd.toml` beside the pipeline.
//!
//! ```toml
//! [remote]
//! url = "s3://team-bucket/rkd"   # or a directory on a shared filesystem
//! push = true                    # upload what runs here (like `rkd run --push`)
//! ```

use super::RemoteError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The project config file's name, looked for beside the pipeline.
pub const CONFIG_FILE: &str = "rkd.toml";

/// Environment variable naming the remote.
pub const REMOTE_ENV: &str = "RKD_REMOTE";

/// The project config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    remote: Option<RemoteTable>,
}

/// Its `[remote]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteTable {
    url: String,
    #[serde(default)]
    push: bool,
}

/// The remote a command uses, and where that choice came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteChoice {
    /// The URL or directory.
    pub spec: String,
    /// What a relative directory is relative to: the current directory for `--remote` and
    /// `$RKD_REMOTE`, the config file's directory for `rkd.toml`.
    pub base: PathBuf,
    /// Whether runs upload what they compute (`push = true` in the config file).
    pub push: bool,
}

/// What the command line says about the remote.
#[derive(Clone, Debug, Default)]
pub struct RemoteFlags {
    /// `--remote URL`.
    pub remote: Option<String>,
    /// `--no-remote`: use none, whatever the environment and config say.
    pub no_remote: bool,
}

/// The remote for a pipeline (`None`: no remote is configured, or `--no-remote`).
pub fn choose(pipeline: &Path, flags: &RemoteFlags) -> Result<Option<RemoteChoice>, RemoteError> {
    if flags.no_remote {
        return Ok(None);
    }
    let cwd = PathBuf::from(".");
    if let Some(spec) = &flags.remote {
        return Ok(Some(RemoteChoice {
            spec: spec.clone(),
            base: cwd,
            push: false,
        }));
    }
    let config = config_path(pipeline);
    let table = read(&config)?.and_then(|c| c.remote);
    if let Some(spec) = std::env::var(REMOTE_ENV).ok().filter(|s| !s.trim().is_empty()) {
        return Ok(Some(RemoteChoice {
            spec,
            base: cwd,
            // The config's push setting belongs to its remote, not to another one.
            push: false,
        }));
    }
    Ok(table.map(|t| RemoteChoice {
        spec: t.url,
        base: config.parent().map(Path::to_path_buf).unwrap_or(cwd),
        push: t.push,
    }))
}

/// `rkd.toml` beside the pipeline.
pub fn config_path(pipeline: &Path) -> PathBuf {
    pipeline.parent().unwrap_or(Path::new("")).join(CONFIG_FILE)
}

fn read(path: &Path) -> Result<Option<ConfigFile>, RemoteError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RemoteError::Open(format!("{}: {e}", path.display()))),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| RemoteError::Open(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_environment_then_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("exp.rkd");
        let flags = RemoteFlags::default();
        // Nothing configured (the test runner's environment may name a remote: not asked here).
        if std::env::var_os(REMOTE_ENV).is_none() {
            assert_eq!(choose(&p, &flags).unwrap(), None);
            std::fs::write(dir.path().join(CONFIG_FILE), "[remote]\nurl = \"cache\"\npush = true\n").unwrap();
            let c = choose(&p, &flags).unwrap().unwrap();
            assert_eq!((c.spec.as_str(), c.push, c.base.as_path()), ("cache", true, dir.path()));
        }
        let flagged = RemoteFlags {
            remote: Some("s3://b/p".into()),
            no_remote: false,
        };
        assert_eq!(choose(&p, &flagged).unwrap().unwrap().spec, "s3://b/p");
        let off = RemoteFlags {
            remote: None,
            no_remote: true,
        };
        assert_eq!(choose(&p, &off).unwrap(), None);
    }

    #[test]
    fn a_config_file_with_an_unknown_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "[remote]\nurl = \"x\"\npsuh = true\n").unwrap();
        let e = choose(&dir.path().join("exp.rkd"), &RemoteFlags::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("rkd.toml") && e.contains("psuh"), "{e}");
    }
}

//! `rkd bundle` and `rkd unbundle`.

use crate::lockfile::{LockFile, Mode};
use crate::remote::bundle::{self, Contents, RESULTS};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What `rkd bundle` puts in besides the pipeline, its modules and its lock file.
pub struct Extras {
    /// The stored results the pipeline reaches.
    pub results: bool,
    /// The input files and folders it reads.
    pub data: bool,
}

/// Packs the pipeline into `out`.
pub fn run(file: &Path, out: &Path, store: Option<&Path>, extras: &Extras) -> ExitCode {
    let Some((compiled, plan, store, pinned)) = super::load_locked(file, store, Mode::Use) else {
        return ExitCode::FAILURE;
    };
    let dir = crate::engine::run::pipeline_dir(file);
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".into());
    let inside = |p: &Path| -> Result<String, String> {
        let canonical = p.canonicalize().map_err(|e| format!("{}: {e}", p.display()))?;
        canonical
            .strip_prefix(&dir)
            .map(|r| r.to_string_lossy().into_owned())
            .map_err(|_| {
                format!(
                    "{} is outside the pipeline's folder {}: a bundle holds that folder's files (move it inside)",
                    p.display(),
                    dir.display()
                )
            })
    };
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for source in compiled.sources.files() {
        if let Some(path) = &source.path {
            match inside(path) {
                Ok(rel) => files.push((path.clone(), rel)),
                Err(e) => problems.push(e),
            }
        }
    }
    if extras.data {
        let mut inputs = std::collections::BTreeSet::new();
        for s in plan.stages() {
            crate::plan::for_each_keyed_path(&s.def.params, &mut |p, _| {
                inputs.insert(p.resolved.clone());
            });
        }
        for input in inputs {
            match inside(&input) {
                Ok(rel) => files.extend(tree(&input, &rel)),
                Err(e) => problems.push(e),
            }
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            crate::say!("error: {p}");
        }
        return ExitCode::FAILURE;
    }
    let lock = LockFile::of(&plan, &pinned.pins);
    let mut made = vec![(format!("{stem}.lock"), lock.render().into_bytes())];
    let results = if extras.results {
        let keys: Vec<_> = plan.stages().map(|s| s.key).collect();
        let stored: Vec<_> = keys
            .iter()
            .zip(store.contains_many(&keys))
            .filter(|(_, s)| *s)
            .map(|(k, _)| *k)
            .collect();
        made.push((
            crate::remote::config::CONFIG_FILE.to_string(),
            format!(
                "# Written by `rkd bundle`: runs of this folder's pipeline pull the bundled results.\n\
                 [remote]\nurl = \"{RESULTS}\"\n"
            )
            .into_bytes(),
        ));
        Some((&store, stored))
    } else {
        None
    };
    let stored_of = results.as_ref().map_or(0, |(_, k)| k.len());
    let contents = Contents {
        top: stem.clone(),
        files,
        made,
        results,
    };
    match bundle::write(out, contents) {
        Ok(w) => {
            let results = if extras.results {
                format!(", {} of {} stage results", w.results, plan.len())
            } else {
                String::new()
            };
            debug_assert_eq!(w.results, stored_of);
            println!(
                "wrote {} ({} files{results}, {})",
                out.display(),
                w.files,
                super::store_cmds::human_bytes(w.bytes)
            );
            println!(
                "to rerun it elsewhere: rkd unbundle {} && rkd run {stem}/{}",
                out.display(),
                file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::say!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The files under `path` (itself when it is a file), with their names inside the bundle.
fn tree(path: &Path, rel: &str) -> Vec<(PathBuf, String)> {
    if !path.is_dir() {
        return vec![(path.to_path_buf(), rel.to_string())];
    }
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.extend(tree(&p, &format!("{rel}/{name}")));
    }
    out
}

/// Unpacks a bundle into `dest`; with `force`, over files there that differ.
pub fn unbundle(bundle_file: &Path, dest: &Path, force: bool) -> ExitCode {
    match bundle::unpack(bundle_file, dest, force) {
        Ok(pipelines) => {
            println!("unpacked {} into {}", bundle_file.display(), dest.display());
            for p in pipelines {
                println!("run it: rkd run {}", crate::text::shell_word(&p.display().to_string()));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::say!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

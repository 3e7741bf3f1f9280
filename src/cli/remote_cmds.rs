//! `rkd push`, `rkd pull`, and opening the remote cache that `run` and `plan` use.

use crate::engine::sync::{self, PullReport, PushReport};
use crate::remote::config::{choose, RemoteChoice, RemoteFlags};
use crate::remote::Remote;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `--remote URL` / `--no-remote`, shared by the commands that use a remote cache.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RemoteArgs {
    /// The remote cache: s3://BUCKET/PREFIX, gs://, az://, https://, file:// or a directory
    /// (a cluster's shared filesystem) [default: $RKD_REMOTE, else `[remote] url` in rkd.toml
    /// beside FILE]. Credentials come from the environment (AWS_*, the AWS profile files).
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// Use no remote cache, whatever $RKD_REMOTE and rkd.toml say.
    #[arg(long, conflicts_with = "remote")]
    pub no_remote: bool,
}

impl RemoteArgs {
    fn flags(&self) -> RemoteFlags {
        RemoteFlags {
            remote: self.remote.clone(),
            no_remote: self.no_remote,
        }
    }
}

/// What `rkd push` and `rkd pull` take.
#[derive(clap::Args, Debug)]
pub struct TransferArgs {
    /// The pipeline file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Only these stages, and what they need (as `rkd run --only`).
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// The store directory [default: $RKD_STORE, else .rkd/ beside FILE].
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// The remote a pipeline's command uses (`None`: none configured); a wrong address or config
/// file is reported, with exit code 2.
pub fn open(file: &Path, args: &RemoteArgs) -> Result<Option<(Remote, RemoteChoice)>, ExitCode> {
    let fail = |e: &dyn std::fmt::Display| {
        crate::say!("error: remote cache: {e}");
        ExitCode::from(2)
    };
    let Some(choice) = choose(file, &args.flags()).map_err(|e| fail(&e))? else {
        return Ok(None);
    };
    let remote = Remote::open(&choice.spec, &choice.base).map_err(|e| fail(&e))?;
    Ok(Some((remote, choice)))
}

/// Prints what a pull did: pulled, damaged, failed.
pub fn say_pulled(report: &PullReport, remote: &Remote) {
    if !report.pulled.is_empty() {
        crate::say!(
            "pulled {} stored result{} ({}) from {}, every file verified",
            report.pulled.len(),
            if report.pulled.len() == 1 { "" } else { "s" },
            super::store_cmds::human_bytes(report.bytes),
            remote.shown()
        );
    }
    for d in &report.damaged {
        crate::say!(
            "warning: the remote's copy of `{}` is damaged ({}); it was not used",
            d.stage,
            d.problems.join("; ")
        );
    }
    for (stage, why) in &report.failed {
        crate::say!("warning: cannot pull `{stage}`: {why}");
    }
}

/// Prints what a push did.
pub fn say_pushed(report: &PushReport, remote: &Remote) {
    if report.pushed > 0 {
        crate::say!(
            "pushed {} result{} ({}) to {}",
            report.pushed,
            if report.pushed == 1 { "" } else { "s" },
            super::store_cmds::human_bytes(report.bytes),
            remote.shown()
        );
    }
    for (stage, why) in &report.failed {
        crate::say!("warning: cannot push `{stage}`: {why}");
    }
}

/// What a push or pull command needs: the plan, its store, the remote.
fn prepare(args: &TransferArgs) -> Result<Setup, ExitCode> {
    let file = &args.file;
    let Some((_, plan, store)) = super::load_plan(file, args.store.as_deref()) else {
        return Err(ExitCode::FAILURE);
    };
    let Some((remote, _)) = open(file, &args.remote)? else {
        crate::say!(
            "error: no remote cache: give --remote URL, set RKD_REMOTE, or write `[remote] url = \"...\"` in {}",
            crate::remote::config::config_path(file).display()
        );
        return Err(ExitCode::from(2));
    };
    let selected = crate::engine::select::select(&plan, &args.only).map_err(|e| {
        crate::say!("error: {e}");
        ExitCode::from(2)
    })?;
    Ok(Setup {
        plan,
        store,
        remote,
        selected,
    })
}

struct Setup {
    plan: crate::plan::Plan,
    store: crate::store::Store,
    remote: Remote,
    selected: Vec<bool>,
}

/// `rkd push`: uploads the pipeline's stored results that the remote lacks.
pub fn push(args: &TransferArgs) -> ExitCode {
    let s = match prepare(args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let report = match sync::push(&s.plan, &s.store, &s.remote, &s.selected, &Default::default()) {
        Ok(r) => r,
        Err(e) => {
            crate::say!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    say_pushed(&report, &s.remote);
    let stored = report.pushed + report.already + report.failed.len();
    let selected = s.selected.iter().filter(|x| **x).count();
    println!(
        "{} pushed, {} already in the remote, {} failed; {} of {selected} stages not stored here (`rkd run` computes them)",
        report.pushed,
        report.already,
        report.failed.len(),
        selected - stored
    );
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `rkd pull`: downloads the pipeline's results that the remote holds and the store lacks.
pub fn pull(args: &TransferArgs) -> ExitCode {
    let s = match prepare(args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let _lease = match s.store.lease(s.plan.stages().map(|st| st.key)) {
        Ok(l) => l,
        Err(e) => {
            crate::say!("error: cannot register in the store {}: {e}", s.store.root.display());
            return ExitCode::FAILURE;
        }
    };
    s.store.clean_tmp();
    let hits = match sync::remote_hits(&s.plan, &s.store, &s.remote, &s.selected) {
        Ok(h) => h,
        Err(e) => {
            crate::say!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = sync::pull(&s.plan, &s.store, &s.remote, &hits);
    say_pulled(&report, &s.remote);
    let keys: Vec<_> = s.plan.stages().map(|st| st.key).collect();
    let stored = s.store.contains_many(&keys);
    let selected = s.selected.iter().filter(|x| **x).count();
    let missing = (0..keys.len()).filter(|&i| s.selected[i] && !stored[i]).count();
    println!(
        "{} pulled, {} damaged in the remote, {} failed; {missing} of {selected} stages in neither store (`rkd run` computes them)",
        report.pulled.len(),
        report.damaged.len(),
        report.failed.len()
    );
    if report.damaged.is_empty() && report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

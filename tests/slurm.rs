//! The Slurm executor against a real (one-node) Slurm cluster: dependency order from the jobs'
//! own timestamps, reruns that submit nothing, failures whose dependents never run, `rkd status`,
//! and a store shared with the local executor.
//!
//! The cluster tests need `RKD_SLURM=1`, which `.ci/run` exports only when `.ci/start-slurm.sh`
//! brought a node up. Without it they print a loud notice and return: that is NOT a pass of the
//! Slurm executor, and the notes must say so.

mod common;
use common::{sorted, Test};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;

/// Whether a Slurm cluster is there to test against; says loudly why not when it is not.
fn slurm_available(test: &str) -> bool {
    if std::env::var("RKD_SLURM").is_ok_and(|v| v == "1") {
        let up = std::process::Command::new("sinfo")
            .args(["-h", "-o", "%T"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        assert!(
            ["idle", "mix", "alloc"].iter().any(|s| up.contains(s)),
            "RKD_SLURM=1 but sinfo shows no node up ({up:?})"
        );
        return true;
    }
    let why = match std::env::var("RKD_SLURM") {
        Ok(v) => format!("RKD_SLURM is `{v}`, not 1"),
        Err(_) => "RKD_SLURM is not set (.ci/run sets it only when .ci/start-slurm.sh brought a node up)".into(),
    };
    // Written to the process's stderr directly, so that the test harness does not capture it.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SLURM IS NOT AVAILABLE: {test} did NOT test the Slurm executor.\n\
         !!! Why: {why}.\n\
         !!! Start a one-node cluster with `sudo .ci/start-slurm.sh`, then run with RKD_SLURM=1.\n\
         !!! This test returning is NOT a pass of the Slurm executor.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    false
}

/// Each stage writes when it started and ended (`date +%s.%N`) into its own output.
const STAMP: &str = "date +%s.%N > $RKD_OUT/start; sleep 1; date +%s.%N > $RKD_OUT/end";

/// A fan-out and a join: a → (b, c) → d.
fn diamond() -> String {
    format!(
        r#"stage a = exec(cmd: "{STAMP}", resources: {{cpus: 1, mem: "100M", time: "5m"}})
stage b = exec(cmd: "{STAMP}", inputs: [a], params: {{branch: "b"}})
stage c = exec(cmd: "{STAMP}", inputs: [a], params: {{branch: "c"}})
stage d = exec(cmd: "{STAMP}; for i in $(echo $RKD_INPUTS | tr : ' '); do cat $i/end; done > $RKD_OUT/upstream_ends",
               inputs: [b, c])
"#
    )
}

fn run_json(t: &Test, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["run", "p.rkd", "--json", "--executor", "slurm"];
    args.extend_from_slice(extra);
    let out = t.run_with(&args);
    let json =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    (out.code, json, out.stderr)
}

/// Stage name → key, from `rkd plan --json`.
fn keys(t: &Test) -> HashMap<String, String> {
    common::plan_keys(t, "p.rkd").into_iter().collect()
}

fn stamp(t: &Test, key: &str, which: &str) -> f64 {
    let p = t.path().join(".rkd/entries").join(key).join("out").join(which);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_fan_out_and_a_join_run_as_dependent_slurm_jobs() {
    if !slurm_available("a_fan_out_and_a_join_run_as_dependent_slurm_jobs") {
        return;
    }
    let t = Test::new().file("p.rkd", &diamond());
    let (code, first, stderr) = run_json(&t, &[]);
    assert_eq!(code, 0, "{first}\n{stderr}");
    assert_eq!(sorted(&first["ran"]), ["a", "b", "c", "d"], "{stderr}");

    // Dependency order, from the jobs' own clocks: each stage started after its upstream ended.
    let k = keys(&t);
    for (up, down) in [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")] {
        let (end, start) = (stamp(&t, &k[up], "end"), stamp(&t, &k[down], "start"));
        assert!(
            end <= start,
            "`{down}` started at {start}, before `{up}` ended at {end}"
        );
    }
    let d_saw = std::fs::read_to_string(t.path().join(".rkd/entries").join(&k["d"]).join("out/upstream_ends")).unwrap();
    assert_eq!(d_saw.lines().count(), 2, "d reads both of its inputs");

    // `rkd status` shows each stage's job, completed and stored.
    let status = t.run_with(&["status", "p.rkd"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    for name in ["a", "b", "c", "d"] {
        let line = status
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{}", status.stdout));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols[1].parse::<u64>().is_ok(), "job id in {line}");
        assert!(line.contains("COMPLETED") && line.contains("yes"), "{line}");
    }

    // A rerun submits nothing; a local run sees the Slurm results as cached.
    let (code, again, stderr) = run_json(&t, &[]);
    assert_eq!(code, 0);
    assert_eq!(sorted(&again["ran"]), Vec::<String>::new());
    assert_eq!(sorted(&again["cached"]), ["a", "b", "c", "d"]);
    assert!(!stderr.contains("submitted"), "{stderr}");
    let local = t.run_with(&["run", "p.rkd", "--json"]);
    let local: Value = serde_json::from_str(local.stdout.trim()).unwrap();
    assert_eq!(sorted(&local["cached"]), ["a", "b", "c", "d"]);

    // And the other way: a stage added and run locally is not submitted.
    std::fs::write(
        t.path().join("p.rkd"),
        format!(
            "{}stage e = exec(cmd: \"echo e > $RKD_OUT/e\", inputs: [d])\n",
            diamond()
        ),
    )
    .unwrap();
    let local = t.run_with(&["run", "p.rkd", "--json"]);
    let local: Value = serde_json::from_str(local.stdout.trim()).unwrap();
    assert_eq!(sorted(&local["ran"]), ["e"]);
    let (_, after, _) = run_json(&t, &[]);
    assert_eq!(sorted(&after["cached"]), ["a", "b", "c", "d", "e"]);
}

#[test]
fn a_failed_job_skips_its_dependents_which_never_run() {
    if !slurm_available("a_failed_job_skips_its_dependents_which_never_run") {
        return;
    }
    let t = Test::new().file(
        "p.rkd",
        r#"stage a = exec(cmd: "date +%s.%N > $RKD_OUT/t")
stage bad = exec(cmd: "echo going wrong; exit 3", inputs: [a])
stage after = exec(cmd: "touch ran-after", inputs: [bad])
stage last = exec(cmd: "touch ran-last", inputs: [after])
stage free = exec(cmd: "sleep 2; date +%s.%N > $RKD_OUT/t")
"#,
    );
    let (code, out, stderr) = run_json(&t, &["--keep-going"]);
    assert_eq!(code, 1, "{out}\n{stderr}");
    assert_eq!(sorted(&out["ran"]), ["a", "free"], "{stderr}");
    assert_eq!(sorted(&out["failed"]), ["bad"]);
    assert_eq!(sorted(&out["skipped"]), ["after", "last"]);
    assert!(!t.path().join("ran-after").exists(), "a dependent of a failed job ran");
    assert!(!t.path().join("ran-last").exists(), "a dependent of a failed job ran");

    // The table says why, with the failed stage's log.
    let out = t.run_with(&["run", "p.rkd", "--executor", "slurm", "--keep-going"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("going wrong"), "{}", out.stderr);
    assert!(out.stdout.contains("needs `bad`, which failed"), "{}", out.stdout);

    // Slurm cancelled the dependents for their never-satisfied dependency; status shows it.
    let status = t.run_with(&["status", "p.rkd"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let row = |name: &str| {
        status
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{}", status.stdout))
            .to_string()
    };
    assert!(row("bad").contains("FAILED"), "{}", status.stdout);
    assert!(row("after").contains("CANCELLED"), "{}", status.stdout);
    assert!(
        row("a").contains("yes") && row("after").contains(" no "),
        "{}",
        status.stdout
    );
}

#[test]
fn a_node_that_cannot_see_the_store_fails_clearly() {
    let t = Test::new();
    let out = t.run_with(&["exec-stage", "--store", "/nonexistent/rkd-store", "00ff"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("is not visible on this node") && out.stderr.contains("shared"),
        "{}",
        out.stderr
    );
}

#[test]
fn resources_are_checked_when_the_pipeline_compiles() {
    let t = Test::new().file(
        "p.rkd",
        r#"stage a = exec(cmd: "true", resources: {cpu: 2, mem: "lots"})
stage b = exec(cmd: "true", resources: {cpus: 2, mem: "2G", time: "2h", gpus: 0})
"#,
    );
    let out = t.run_with(&["check", "p.rkd"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("unknown resource `cpu`"), "{}", out.stderr);
    assert!(out.stderr.contains("`mem` must be a size"), "{}", out.stderr);

    // Slurm-only flags need the Slurm executor.
    let out = t.run_with(&["run", "p.rkd", "--no-wait"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--executor slurm"), "{}", out.stderr);
}

#[test]
fn ctrl_c_cancels_the_submitted_jobs() {
    if !slurm_available("ctrl_c_cancels_the_submitted_jobs") {
        return;
    }
    let t = Test::new().file(
        "p.rkd",
        r#"stage slow = exec(cmd: "touch started; sleep 60; touch slow-done")
stage next = exec(cmd: "touch next-done", inputs: [slow])
"#,
    );
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rkd"))
        .args(["run", "p.rkd", "--executor", "slurm"])
        .current_dir(t.path())
        .env_remove("RKD_STORE")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !t.path().join("started").exists() {
        assert!(std::time::Instant::now() < deadline, "the job never started");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("cancelling the 2 submitted Slurm jobs"), "{stderr}");
    let status = t.run_with(&["status", "p.rkd"]);
    assert_eq!(
        status.stdout.matches("CANCELLED").count(),
        2,
        "both jobs are cancelled:\n{}",
        status.stdout
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!t.path().join("slow-done").exists() && !t.path().join("next-done").exists());
}

/// The job ids of the test's store, from its Slurm records.
fn job_ids(t: &Test) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(t.path().join(".rkd/slurm")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice::<Value>(&std::fs::read(e.path()).ok()?).ok())
        .flat_map(|r| {
            r["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|j| j["job"].as_str().map(String::from))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_job_that_reaches_its_time_limit_checkpoints_requeues_itself_and_completes() {
    if !slurm_available("a_job_that_reaches_its_time_limit_checkpoints_requeues_itself_and_completes") {
        return;
    }
    // About a minute of training on 2 cores, in jobs of one minute that get SIGUSR1 55 s before
    // their limit: no job can finish the stage, every job goes on from the last one's checkpoint.
    let t = Test::new().file(
        "p.rkd",
        r#"let data = synthetic_text(seed: 3, classes: 2, train_size: 4096, val_size: 128, max_len: 24, vocab_size: 64)
let tiny = bert(layers: 2, hidden: 48, heads: 2, intermediate: 96, vocab_size: 64, max_position: 32)
stage teacher = train(model: tiny, data: data, epochs: 32, batch_size: 16, lr: 1e-3, seed: 1,
                      resources: {cpus: 2, mem: "2G", time: "1m"})
"#,
    );
    let out_path = t.path().join("out.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rkd"))
        .args(["run", "p.rkd", "--json", "--executor", "slurm", "--signal-lead", "55s"])
        .current_dir(t.path())
        .env_remove("RKD_STORE")
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(t.path().join("err.txt")).unwrap())
        .spawn()
        .unwrap();
    // Slurm holds a requeued job for two minutes before it may start again; the test lifts the
    // hold (as `scontrol update` lets a job's owner) after 5 s — sooner, Slurm may start it before
    // the node let go of the last run ("Job credential revoked") — so the test takes a minute or two.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let mut held_since: HashMap<String, std::time::Instant> = HashMap::new();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the stage never completed");
        for id in job_ids(&t) {
            let reason = std::process::Command::new("squeue")
                .args(["-h", "-j", &id, "-o", "%r"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            if reason != "BeginTime" {
                held_since.remove(&id);
                continue;
            }
            let since = *held_since.entry(id.clone()).or_insert_with(std::time::Instant::now);
            if since.elapsed() >= std::time::Duration::from_secs(5) {
                let _ = std::process::Command::new("scontrol")
                    .args(["update", &format!("JobId={id}"), "StartTime=now"])
                    .status();
                held_since.remove(&id);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(t.path().join("err.txt")).unwrap();
    assert!(status.success(), "{stdout}\n{stderr}");
    let res: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(res["ran"], serde_json::json!(["teacher"]), "{stdout}");
    // The job that finished went on from a checkpoint written when an earlier one was warned.
    let resumed = res["resumed"]["teacher"].as_u64().unwrap_or(0);
    assert!(resumed > 0, "the stage never resumed: {stdout}");
    let logs: String = std::fs::read_dir(t.path().join(".rkd/slurm/logs"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let metrics: Value = serde_json::from_slice(
        &std::fs::read(
            t.path()
                .join(".rkd/entries")
                .join(&keys(&t)["teacher"])
                .join("metrics.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["steps"], 8192.0, "{logs}");
    // Nothing is left of the checkpoints, and the stage is stored for a local rerun.
    assert!(!t.path().join(".rkd/checkpoints").join(&keys(&t)["teacher"]).exists());
    let rerun = t.run_with(&["run", "p.rkd", "--json"]);
    assert!(rerun.stdout.contains("\"cached\":[\"teacher\"]"), "{}", rerun.stdout);
}

//! Integration tests of `rkd run` on `exec` pipelines: incremental reruns, failures,
//! interruption, concurrency and store integrity.
// Test output to the harness: eprintln! is fine here (src/ uses crate::say!).
#![allow(clippy::disallowed_macros)]

mod common;
use common::{by_name, entry_of, key_of, sorted, wait_for, Test};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A chain a → b → c and an independent d; every stage appends its name to ran.log.
fn pipeline(b_value: &str, c_cmd: &str) -> String {
    format!(
        r#"# every stage appends its name to ran.log
stage a = exec(cmd: "echo a >> ran.log; echo A > $RKD_OUT/x")
stage b = exec(cmd: "echo b >> ran.log; cat $RKD_INPUTS/x > $RKD_OUT/x; echo $RKD_PARAM_V >> $RKD_OUT/x",
               inputs: [a], params: {{v: {b_value}}})
stage c = exec(cmd: "echo c >> ran.log; {c_cmd}", inputs: [b])
stage d = exec(cmd: "echo d >> ran.log")
"#
    )
}

fn run_json(t: &Test, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["run", "p.rkd", "--json", "-j", "2"];
    args.extend_from_slice(extra);
    let out = t.run_with(&args);
    let json =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    (out.code, json)
}

fn ran_log(t: &Test) -> Vec<String> {
    let mut xs: Vec<String> = std::fs::read_to_string(t.path().join("ran.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    xs.sort();
    xs
}

fn clear_log(t: &Test) {
    let _ = std::fs::remove_file(t.path().join("ran.log"));
}

#[test]
fn reruns_only_what_changed() {
    let t = Test::new().file("p.rkd", &pipeline("1", "cp $RKD_INPUTS/x $RKD_OUT/x"));
    let (code, first) = run_json(&t, &[]);
    assert_eq!(code, 0);
    assert_eq!(sorted(&first["ran"]), ["a", "b", "c", "d"]);
    assert_eq!(ran_log(&t), ["a", "b", "c", "d"]);

    // No-op: nothing runs.
    clear_log(&t);
    let (_, noop) = run_json(&t, &[]);
    assert_eq!(sorted(&noop["ran"]), Vec::<String>::new());
    assert_eq!(sorted(&noop["cached"]), ["a", "b", "c", "d"]);
    assert!(ran_log(&t).is_empty());

    // One value changed: exactly that stage and its descendants.
    std::fs::write(t.path().join("p.rkd"), pipeline("2", "cp $RKD_INPUTS/x $RKD_OUT/x")).unwrap();
    let plan = t.run_with(&["plan", "p.rkd", "--json"]);
    let plan: Value = serde_json::from_str(&plan.stdout).unwrap();
    let b = by_name(&plan, "b");
    assert_eq!(b["reasons"], serde_json::json!(["parameter changed: params.v 1 → 2"]));
    let c = by_name(&plan, "c");
    assert_eq!(c["reasons"], serde_json::json!(["upstream changed: b"]));
    let (_, changed) = run_json(&t, &[]);
    assert_eq!(sorted(&changed["ran"]), ["b", "c"]);
    assert_eq!(ran_log(&t), ["b", "c"]);

    // Renamed and reformatted, with comments: nothing runs.
    clear_log(&t);
    let renamed = pipeline("2", "cp $RKD_INPUTS/x $RKD_OUT/x")
        .replace("stage a ", "stage first ")
        .replace("[a]", "[first]")
        .replace(", params", ",\n      # a comment\n      params");
    std::fs::write(t.path().join("p.rkd"), renamed).unwrap();
    let (_, again) = run_json(&t, &[]);
    assert_eq!(sorted(&again["ran"]), Vec::<String>::new());
    assert!(ran_log(&t).is_empty());

    // The outputs flowed along the chain.
    let out = t.run_with(&["explain", "p.rkd", "c"]);
    assert!(out.stdout.contains("status  cached"), "{}", out.stdout);
}

#[test]
fn why_it_runs_compares_with_runs_of_the_same_pipeline_file_only() {
    let stage = |v: u32| format!("stage a = exec(cmd: \"true\", params: {{v: {v}}})\n");
    let t = Test::new().file("one.rkd", &stage(1)).file("two.rkd", &stage(2));
    assert_eq!(t.run_with(&["run", "one.rkd"]).code, 0);
    // Both files share the store beside them, and both have a stage `a`: not the same stage.
    let reasons = |file: &str| {
        let plan: Value = serde_json::from_str(&t.run_with(&["plan", file, "--json"]).stdout).unwrap();
        by_name(&plan, "a")["reasons"].clone()
    };
    assert_eq!(reasons("two.rkd"), serde_json::json!(["new"]));
    assert_eq!(t.run_with(&["run", "two.rkd"]).code, 0);
    std::fs::write(t.path().join("two.rkd"), stage(3)).unwrap();
    assert_eq!(
        reasons("two.rkd"),
        serde_json::json!(["parameter changed: params.v 2 → 3"])
    );
    std::fs::write(t.path().join("one.rkd"), stage(4)).unwrap();
    assert_eq!(
        reasons("one.rkd"),
        serde_json::json!(["parameter changed: params.v 1 → 4"])
    );
}

#[test]
fn a_failure_skips_descendants_and_keep_going_runs_the_rest() {
    let t = Test::new().file("p.rkd", &pipeline("1", "echo boom >&2; exit 3"));
    let out = t.run_with(&["run", "p.rkd", "-j", "1", "--keep-going"]);
    assert_eq!(out.code, 1, "a failed stage makes the run fail");
    assert!(
        out.stderr
            .contains("stage `c` (exec) failed: command exited with status 3"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("| boom"), "the log tail is shown: {}", out.stderr);
    assert_eq!(ran_log(&t), ["a", "b", "c", "d"]);

    // c now depends on a failing command and has a dependent; d is independent.
    let t = Test::new().file(
        "p.rkd",
        "stage a = exec(cmd: \"echo a >> ran.log; exit 1\")\nstage b = exec(cmd: \"echo b >> ran.log\", inputs: [a])\nstage d = exec(cmd: \"sleep 0.2; echo d >> ran.log\")\n",
    );
    let (code, res) = run_json(&t, &["--keep-going"]);
    assert_eq!(code, 1);
    assert_eq!(sorted(&res["failed"]), ["a"]);
    assert_eq!(sorted(&res["skipped"]), ["b"]);
    assert_eq!(sorted(&res["ran"]), ["d"]);
    assert_eq!(ran_log(&t), ["a", "d"]);
    // Nothing of the failed stage is stored; the next run tries it again and says why.
    let plan = t.run_with(&["plan", "p.rkd"]);
    assert!(plan.stdout.contains("failed last time"), "{}", plan.stdout);
}

#[test]
fn the_summary_counts_the_other_skipped_stages() {
    let one = "stage a = exec(cmd: \"exit 1\")\nstage c = exec(cmd: \"true\", inputs: [a])\n";
    let out = Test::new().file("p.rkd", one).run_with(&["run", "p.rkd"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("  skipped `c`: "), "{}", out.stdout);
    assert!(!out.stdout.contains("other"), "{}", out.stdout);
    let three =
        format!("{one}stage d = exec(cmd: \"true\", inputs: [c])\nstage e = exec(cmd: \"echo e\", inputs: [a])\n");
    let out = Test::new().file("p.rkd", &three).run_with(&["run", "p.rkd"]);
    assert!(out.stdout.contains("  skipped `c` and 2 others: "), "{}", out.stdout);
}

#[test]
fn without_keep_going_nothing_new_starts_after_a_failure() {
    let t = Test::new().file(
        "p.rkd",
        "stage a = exec(cmd: \"exit 1\")\nstage b = exec(cmd: \"echo b >> ran.log\")\nstage c = exec(cmd: \"echo c >> ran.log\", inputs: [b])\n",
    );
    let out = t.run_with(&["run", "p.rkd", "-j", "1", "--json"]);
    assert_eq!(out.code, 1);
    let res: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(sorted(&res["failed"]), ["a"]);
    assert_eq!(sorted(&res["skipped"]), ["b", "c"]);
    assert!(ran_log(&t).is_empty());
}

#[test]
fn only_runs_the_named_stages_and_what_they_need() {
    let t = Test::new().file("p.rkd", &pipeline("1", "true"));
    let (_, res) = run_json(&t, &["--only", "b"]);
    assert_eq!(sorted(&res["ran"]), ["a", "b"]);
    let out = t.run_with(&["run", "p.rkd", "--only", "bb"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("there is no stage `bb`"), "{}", out.stderr);
}

/// `--only ""` (say an unset shell variable) or `--only ,` names no stage: an error, not a run
/// of nothing that exits 0.
#[test]
fn only_without_a_name_is_an_error() {
    let t = Test::new().file("p.rkd", &pipeline("1", "true"));
    for only in ["", ",", " , "] {
        let out = t.run_with(&["run", "p.rkd", "-n", "--only", only]);
        assert_eq!(out.code, 1, "--only {only:?}: {}", out.stderr);
        assert!(out.stderr.contains("--only: no stage name given"), "{}", out.stderr);
    }
    assert!(ran_log(&t).is_empty());
}

#[test]
fn only_takes_sweep_points_of_several_variables_and_a_sweeps_name() {
    let t = Test::new().file(
        "p.rkd",
        "stage a = exec(cmd: \"true\")\nsweep x in [1, 2], y in [3, 4] {\n  stage pt = exec(cmd: \"true\", inputs: [a], params: {x: x, y: y})\n}\nstage d = exec(cmd: \"echo d\")\n",
    );
    let (code, res) = run_json(&t, &["-n", "--only", "pt[x=1,y=4],d"]);
    assert_eq!(code, 0, "{res}");
    let (code, res) = run_json(&t, &["--only", "pt[x=1,y=4],d"]);
    assert_eq!(code, 0, "{res}");
    assert_eq!(sorted(&res["ran"]), ["a", "d", "pt[x=1,y=4]"]);
    let (code, res) = run_json(&t, &["--only", "pt"]);
    assert_eq!(code, 0, "{res}");
    assert_eq!(sorted(&res["ran"]), ["pt[x=1,y=3]", "pt[x=2,y=3]", "pt[x=2,y=4]"]);
    let out = t.run_with(&["run", "p.rkd", "--only", "pt[x=9,y=9]"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("there is no stage `pt[x=9,y=9]`"), "{}", out.stderr);
}

#[test]
fn damaged_entries_are_reported_and_rerun() {
    let t = Test::new().file("p.rkd", &pipeline("1", "cp $RKD_INPUTS/x $RKD_OUT/x"));
    run_json(&t, &[]);
    assert_eq!(t.run_with(&["verify"]).code, 0);
    // Damage b's output.
    let plan: Value = serde_json::from_str(&t.run_with(&["plan", "p.rkd", "--json"]).stdout).unwrap();
    std::fs::write(
        t.path().join(".rkd/entries").join(key_of(&plan, "b")).join("out/x"),
        "B\n2\n",
    )
    .unwrap();
    let verify = t.run_with(&["verify"]);
    assert_eq!(verify.code, 1);
    assert!(verify.stdout.contains("out/x: content changed"), "{}", verify.stdout);
    assert!(verify.stdout.contains("b (exec)"), "{}", verify.stdout);
    // Change c, so that running it needs b again: the damaged b is discarded and rebuilt first.
    std::fs::write(
        t.path().join("p.rkd"),
        pipeline("1", "cp $RKD_INPUTS/x $RKD_OUT/x; true"),
    )
    .unwrap();
    clear_log(&t);
    let out = t.run_with(&["run", "p.rkd", "--json"]);
    assert!(out.stderr.contains("stored result of `b` is damaged"), "{}", out.stderr);
    assert_eq!(ran_log(&t), ["b", "c"]);
    assert_eq!(t.run_with(&["verify"]).code, 0);
    let c = std::fs::read_to_string(t.path().join(".rkd/entries").join(key_of_c(&t)).join("out/x")).unwrap();
    assert_eq!(c, "A\n1\n", "c read b's rebuilt output, not the tampered one");
}

fn key_of_c(t: &Test) -> String {
    let plan: Value = serde_json::from_str(&t.run_with(&["plan", "p.rkd", "--json"]).stdout).unwrap();
    key_of(&plan, "c")
}

fn spawn_run(t: &Test) -> std::process::Child {
    t.spawn(&["run", "p.rkd", "-j", "2"])
}

#[test]
fn killed_mid_stage_leaves_a_store_that_verifies_and_a_run_that_completes() {
    let t = Test::new().file(
        "p.rkd",
        "stage fast = exec(cmd: \"echo fast > $RKD_OUT/x\")\nstage slow = exec(cmd: \"echo partial > $RKD_OUT/x; touch started; sleep 1; echo done >> $RKD_OUT/x\", inputs: [fast])\n",
    );
    let mut child = spawn_run(&t);
    wait_for(&t.path().join("started"));
    // kill -9: no chance to clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    let verify = t.run_with(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(
        verify.stdout.contains("1 entry checked"),
        "only `fast` finished: {}",
        verify.stdout
    );
    let out = t.run_with(&["run", "p.rkd", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let res: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(sorted(&res["ran"]), ["slow"]);
    assert_eq!(sorted(&res["cached"]), ["fast"]);
    assert_eq!(t.run_with(&["verify"]).code, 0);
    // The interrupted attempt's leftovers were cleaned.
    let tmp: Vec<_> = std::fs::read_dir(t.path().join(".rkd/tmp"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn ctrl_c_stops_the_run_and_keeps_what_finished() {
    let t = Test::new().file(
        "p.rkd",
        "stage fast = exec(cmd: \"echo fast > $RKD_OUT/x\")\nstage slow = exec(cmd: \"touch started; sleep 30\", inputs: [fast])\n",
    );
    let mut child = spawn_run(&t);
    wait_for(&t.path().join("started"));
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t0 = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the running command was stopped, not waited for"
    );
    assert_eq!(status.code(), Some(130));
    assert_eq!(t.run_with(&["verify"]).code, 0);
    let log = t.run_with(&["log"]);
    assert!(log.stdout.contains("interrupted"), "{}", log.stdout);
    let plan = t.run_with(&["plan", "p.rkd", "--json"]);
    let plan: Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(plan["stages"][0]["status"], "cached");
    assert_eq!(plan["stages"][1]["status"], "run");
    // Stopped by the user, not failed.
    let reason = plan["stages"][1]["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with("interrupted last time"), "{reason}");
}

/// A stage whose shell and background child both ignore SIGINT and SIGTERM, and write their pids.
const STUBBORN: &str = "stage b = exec(cmd: \"trap '' INT TERM; echo $$ > sh.pid; sleep 60 & echo $! > sleep.pid; touch started; wait; echo done > $RKD_OUT/x\")\n";

/// Whether the process with the pid in `file` still runs (a zombie waiting for a parent that
/// does not reap it counts as ended).
fn alive(t: &Test, file: &str) -> bool {
    let pid = std::fs::read_to_string(t.path().join(file)).unwrap();
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .is_ok_and(|stat| stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
}

/// Sends SIGINT to rkd after `started` appears, and again `again` later if given; returns how
/// long rkd took to end after the first, and its exit code.
fn interrupt_stubborn(t: &Test, again: Option<Duration>) -> (Duration, Option<i32>) {
    let mut child = spawn_run(t);
    wait_for(&t.path().join("started"));
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t0 = Instant::now();
    if let Some(again) = again {
        std::thread::sleep(again);
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    }
    let status = child.wait().unwrap();
    (t0.elapsed(), status.code())
}

/// Nothing of the command is left, allowing the kernel a moment to end what got SIGKILL.
fn assert_none_survive(t: &Test) {
    let t0 = Instant::now();
    while alive(t, "sh.pid") || alive(t, "sleep.pid") {
        assert!(t0.elapsed() < Duration::from_secs(2), "the command outlived rkd");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_kills_a_command_that_ignores_it_after_the_grace_period() {
    let t = Test::new().file("p.rkd", STUBBORN);
    let (took, code) = interrupt_stubborn(&t, None);
    let grace = rkd::ops::cancel::GRACE;
    assert!(took < grace + Duration::from_secs(4), "took {took:?}");
    assert!(
        took >= grace - Duration::from_millis(500),
        "the command had its grace period: {took:?}"
    );
    assert_eq!(code, Some(130));
    assert_none_survive(&t);
    // The run ended as an interrupt: recorded, and nothing stored for the stage.
    let log = t.run_with(&["log"]);
    assert!(log.stdout.contains("interrupted"), "{}", log.stdout);
    let plan: Value = serde_json::from_str(&t.run_with(&["plan", "p.rkd", "--json"]).stdout).unwrap();
    let reason = plan["stages"][0]["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with("interrupted last time"), "{reason}");
}

#[test]
fn a_second_ctrl_c_quits_at_once_and_leaves_no_command_running() {
    let t = Test::new().file("p.rkd", STUBBORN);
    let (took, code) = interrupt_stubborn(&t, Some(Duration::from_millis(1500)));
    assert!(
        took < rkd::ops::cancel::GRACE,
        "quit before the grace period ended: {took:?}"
    );
    assert_eq!(code, Some(130));
    assert_none_survive(&t);
}

#[test]
fn two_concurrent_runs_run_each_stage_once() {
    let mut src = String::new();
    for i in 0..6 {
        src.push_str(&format!(
            "stage s{i} = exec(cmd: \"sleep 0.2; echo s{i} >> ran.log\")\n"
        ));
    }
    src.push_str("stage all = exec(cmd: \"echo all >> ran.log\", inputs: [s0, s1, s2, s3, s4, s5])\n");
    let t = Test::new().file("p.rkd", &src);
    let mut a = spawn_run(&t);
    let mut b = spawn_run(&t);
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    assert_eq!(ran_log(&t), ["all", "s0", "s1", "s2", "s3", "s4", "s5"]);
    assert_eq!(t.run_with(&["verify"]).code, 0);
}

#[test]
fn exec_gets_its_environment_and_fingerprints_its_files() {
    let t = Test::new().file("input.txt", "hello\n").file(
        "p.rkd",
        "stage a = exec(cmd: \"cat input.txt > $RKD_OUT/x; echo $RKD_PARAM_NAME $RKD_PARAM_N $RKD_PARAM_LIST >> $RKD_OUT/x\", files: [\"input.txt\"], params: {name: \"x y\", n: 3, list: [1, 2]})\n",
    );
    let (code, _) = run_json(&t, &[]);
    assert_eq!(code, 0);
    let key = |t: &Test| {
        let plan: Value = serde_json::from_str(&t.run_with(&["plan", "p.rkd", "--json"]).stdout).unwrap();
        (
            plan["stages"][0]["key"].as_str().unwrap().to_string(),
            plan["stages"][0]["status"].as_str().unwrap().to_string(),
        )
    };
    let (k1, status) = key(&t);
    assert_eq!(status, "cached");
    let x = std::fs::read_to_string(t.path().join(".rkd/entries").join(&k1).join("out/x")).unwrap();
    assert_eq!(x, "hello\nx y 3 [1,2]\n");
    // Same bytes rewritten: still cached. New bytes: runs, and says which file changed.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(t.path().join("input.txt"), "hello\n").unwrap();
    assert_eq!(key(&t), (k1.clone(), "cached".to_string()));
    std::fs::write(t.path().join("input.txt"), "bye\n").unwrap();
    let plan = t.run_with(&["plan", "p.rkd"]);
    assert!(plan.stdout.contains("input file changed: input.txt"), "{}", plan.stdout);
}

#[test]
fn gc_removes_what_no_kept_plan_needs() {
    let t = Test::new().file("p.rkd", &pipeline("1", "true"));
    run_json(&t, &[]);
    std::fs::write(t.path().join("p.rkd"), pipeline("2", "true")).unwrap();
    run_json(&t, &[]);
    let dry = t.run_with(&["gc", "--keep", "p.rkd", "--dry-run"]);
    assert!(dry.stdout.contains("would remove 2 entries"), "{}", dry.stdout);
    // The dry run names what it would remove: the old versions of `b` and `c`.
    let listed: Vec<&str> = dry.stdout.lines().filter(|l| l.ends_with("(exec)")).collect();
    assert_eq!(listed.len(), 2, "{}", dry.stdout);
    assert!(
        listed[0].ends_with(" b (exec)") || listed[1].ends_with(" b (exec)"),
        "{}",
        dry.stdout
    );
    assert!(listed.iter().any(|l| l.ends_with(" c (exec)")), "{}", dry.stdout);
    let out = t.run_with(&["gc", "--keep", "p.rkd"]);
    assert!(
        out.stdout.contains("removed 2 entries") && out.stdout.contains("kept 4"),
        "{}",
        out.stdout
    );
    let (_, res) = run_json(&t, &[]);
    assert_eq!(sorted(&res["cached"]), ["a", "b", "c", "d"]);
    let none = t.run_with(&["gc"]);
    assert_eq!(none.code, 2, "gc without --keep refuses to guess");
}

/// `--gpus`: each `exec` stage that asks for a GPU holds its own slot (its command sees it as
/// CUDA_VISIBLE_DEVICES), stages never share one, and CPU stages run beside them.
#[test]
fn gpu_slots_give_each_gpu_stage_its_own_gpu() {
    let stage = |name: &str| {
        format!(
            "stage {name} = exec(cmd: \"echo start {name} $CUDA_VISIBLE_DEVICES >> gpu.log; sleep 0.3; \
             echo end {name} >> gpu.log; echo $CUDA_VISIBLE_DEVICES > $RKD_OUT/gpu\", resources: {{gpus: 1}})\n"
        )
    };
    let src = format!(
        "{}{}stage cpu = exec(cmd: \"echo cpu > $RKD_OUT/x\")\n",
        stage("a"),
        stage("b")
    );
    let gpu_of = |t: &Test, name: &str| {
        let plan: Value = serde_json::from_str(&t.run_with(&["plan", "p.rkd", "--json"]).stdout).unwrap();
        let key = key_of(&plan, name);
        std::fs::read_to_string(t.path().join(".rkd/entries").join(key).join("out/gpu")).unwrap()
    };
    // Two slots: a and b run at once, on different GPUs (as the parent's CUDA_VISIBLE_DEVICES names them).
    let t = Test::new().file("p.rkd", &src).env("CUDA_VISIBLE_DEVICES", "5,7");
    let out = t.run_with(&["run", "p.rkd", "-j", "3", "--gpus", "0,1", "--device", "cpu"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut seen = [gpu_of(&t, "a"), gpu_of(&t, "b")];
    seen.sort();
    assert_eq!(seen, ["5\n", "7\n"]);
    let log = std::fs::read_to_string(t.path().join("gpu.log")).unwrap();
    assert!(
        log.lines().nth(1).unwrap().starts_with("start"),
        "both started before either ended:\n{log}"
    );
    // One slot: they take turns on it.
    let t = Test::new().file("p.rkd", &src);
    let out = t.run_with(&["run", "p.rkd", "-j", "3", "--gpus", "3", "--device", "cpu"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!((gpu_of(&t, "a"), gpu_of(&t, "b")), ("3\n".into(), "3\n".into()));
    let log = std::fs::read_to_string(t.path().join("gpu.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines[0].starts_with("start") && lines[1].starts_with("end") && lines[2].starts_with("start"),
        "one at a time:\n{log}"
    );
}

/// A bug that panics inside a stage fails that stage like any failure: its message (no
/// backtrace) in the output and the run record, its dependents skipped, the rest run, exit 1.
#[test]
fn a_stage_that_panics_fails_alone_and_the_run_is_recorded() {
    let t = Test::new()
        .file("p.rkd", common::SHARED_PIPELINE)
        .env("RKD_TEST_PANIC_OP", "train")
        .env("RUST_BACKTRACE", "1");
    let (code, res) = run_json(&t, &["--keep-going"]);
    assert_eq!(code, 1, "{res}");
    assert_eq!(sorted(&res["failed"]), ["teacher"]);
    assert_eq!(sorted(&res["skipped"]), ["score"]);
    assert_eq!(sorted(&res["ran"]), ["counted", "words"]);
    let out = t.run_with(&["run", "p.rkd"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("internal error in `train`: RKD_TEST_PANIC_OP asked `train` to panic (at src/ops/mod.rs:"),
        "{}",
        out.stderr
    );
    for noise in ["stack backtrace", "panicked at", "RUST_BACKTRACE"] {
        assert!(!out.stderr.contains(noise), "{noise}: {}", out.stderr);
    }
    let records: Vec<Value> = std::fs::read_dir(t.path().join(".rkd/runs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "index.json")
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    assert_eq!(records.len(), 2, "one record per run");
    for r in &records {
        assert_eq!(r["status"], "failed", "{r}");
        let teacher = r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "teacher")
            .unwrap();
        assert_eq!(teacher["status"], "failed", "{teacher}");
        // The record says why, for whoever reads it later.
        let why = teacher["error"].as_str().unwrap_or_default();
        assert!(why.contains("internal error in `train`"), "{teacher}");
    }
}

/// A model whose weights cannot fit in the machine's memory fails its stage at once with the
/// figures and what to do, instead of the kernel killing rkd halfway through allocating it.
#[test]
fn a_model_too_large_for_memory_fails_its_stage_with_the_figures() {
    let src = r#"
let data = synthetic_text(seed: 0, classes: 2, train_size: 64, val_size: 32, max_len: 16, vocab_size: 1000)
let huge = bert(layers: 11, hidden: 8192, heads: 64, intermediate: 32768, vocab_size: 1000, max_position: 64)
stage teacher = train(model: huge, data: data, epochs: 1)
"#;
    let kib = |text: &str, field: &str| -> u64 {
        let line = text.lines().find_map(|l| l.strip_prefix(field)).unwrap_or("0");
        line.trim().trim_end_matches("kB").trim().parse().unwrap_or(0)
    };
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        eprintln!("this system does not say how much memory is free: nothing to test");
        return;
    };
    // On a machine where it would fit, the stage would really allocate it: not a test to run there.
    if kib(&meminfo, "MemAvailable:") + kib(&meminfo, "SwapFree:") >= 32 << 20 {
        eprintln!("33 GiB would fit in this machine's memory: nothing to test");
        return;
    }
    let t = Test::new().file("p.rkd", src);
    let out = t.run_with(&["run", "p.rkd"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    // 8.9 billion parameters: 33 GiB of f32 weights.
    assert!(
        out.stderr
            .contains("this model's weights would take at least 33.0 GiB of memory, and this process has"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("RKD_NO_MEMORY_CHECK=1"), "{}", out.stderr);
}

/// A batch whose activations cannot fit (1024 sequences of 512 tokens through 48 layers of 64
/// heads: 3,000 GiB of attention probabilities) fails its stage before the forward pass, with the
/// figures and the way out, instead of the kernel killing rkd in the middle of the step.
#[test]
fn a_batch_too_large_for_memory_fails_its_stage_naming_batch_size() {
    if !std::path::Path::new("/proc/meminfo").exists() {
        eprintln!("this system does not say how much memory is free: nothing to test");
        return;
    }
    let t = Test::new().file(
        "p.rkd",
        r#"
let data = synthetic_text(seed: 0, classes: 2, train_size: 1024, val_size: 4, max_len: 512, vocab_size: 100)
let wide = bert(layers: 48, hidden: 64, heads: 64, intermediate: 64, vocab_size: 100, max_position: 512)
stage teacher = train(model: wide, data: data, epochs: 1, batch_size: 1024)
"#,
    );
    let out = t.run_with(&["run", "p.rkd"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the activations of a training batch of 1024 examples × 512 positions would take at least")
            && out.stderr.contains("use a smaller `batch_size`"),
        "{}",
        out.stderr
    );
}

/// Two training stages side by side (`-j 2`) under a memory limit that holds one but not both:
/// the second waits for the first's memory (saying so) instead of both allocating and being
/// killed, and both finish.
#[test]
fn a_stage_short_of_memory_waits_for_the_one_beside_it() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("this system does not say how much memory a process uses: nothing to test");
        return;
    }
    // Each stage reserves about 420 MB (26M parameters: weights, gradients, two moments); alone
    // the process peaks near 600 MB, both at once near 900 MB.
    let t = Test::new()
        .file(
            "p.rkd",
            r#"
let data = synthetic_text(seed: 0, classes: 2, train_size: 32, val_size: 8, max_len: 16, vocab_size: 1000)
let wide = bert(layers: 2, hidden: 1024, heads: 16, intermediate: 4096, vocab_size: 1000, max_position: 16)
stage a = train(model: wide, data: data, epochs: 1, batch_size: 8, max_steps: 2, seed: 1)
stage b = train(model: wide, data: data, epochs: 1, batch_size: 8, max_steps: 2, seed: 2)
"#,
        )
        .env("RKD_MEMORY_LIMIT", "750M");
    let out = t.run_with(&["run", "-j", "2", "p.rkd"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(": waiting for memory: ") && out.stderr.contains("is left while other stages run"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("2 ran, 0 cached, 0 failed"), "{}", out.stdout);
    // The log of the stage that waited says so, and for how long.
    let logs: Vec<String> = ["a", "b"]
        .iter()
        .map(|s| std::fs::read_to_string(entry_of(&t, "p.rkd", s).join("log.txt")).unwrap())
        .collect();
    let waited: Vec<&String> = logs.iter().filter(|l| l.contains("waiting for memory: ")).collect();
    assert_eq!(waited.len(), 1, "{logs:?}");
    assert!(waited[0].contains(", memory enough for "), "{}", waited[0]);
}

/// A memory limit that is not a size is an error before anything runs.
#[test]
fn a_memory_limit_that_is_not_a_size_is_refused() {
    let t = Test::new()
        .file("p.rkd", "stage s = exec(cmd: \"true\")\n")
        .env("RKD_MEMORY_LIMIT", "lots");
    let out = t.run_with(&["run", "p.rkd"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("RKD_MEMORY_LIMIT=\"lots\" is not a size: write it like 12G, 512M or 1T"),
        "{}",
        out.stderr
    );
}

/// A stage whose input file changes while it runs stores nothing: its key was computed from the
/// contents before, and the next run must not find a result of other contents under it.
#[test]
fn an_input_file_changed_while_the_stage_ran_stores_nothing() {
    let t = Test::new().file("data.txt", "a\nb\n").file(
        "p.rkd",
        r#"stage count = exec(cmd: "echo c >> data.txt; wc -l < data.txt > $RKD_OUT/n.txt", files: ["data.txt"])
stage other = exec(cmd: "echo 1 > $RKD_OUT/one.txt")
"#,
    );
    let (code, res) = run_json(&t, &["--keep-going"]);
    assert_eq!(code, 1, "{res}");
    assert_eq!(sorted(&res["failed"]), ["count"]);
    assert_eq!(sorted(&res["ran"]), ["other"]);
    let out = t.run_with(&["run", "p.rkd"]);
    assert!(
        out.stderr.contains("input `data.txt` changed while the stage ran")
            && out.stderr.contains("nothing was stored"),
        "{}",
        out.stderr
    );
}

/// `explain` and `export` take one stage: a sweep's name lists its stages, a typo gets the
/// closest name — a sweep's or a stage's.
#[test]
fn explain_says_which_stages_a_sweep_name_stands_for() {
    let t = Test::new().file(
        "p.rkd",
        "sweep n in [1, 2] {\n  stage head = exec(cmd: \"true\", params: {n: n})\n}\n",
    );
    let out = t.run_with(&["explain", "p.rkd", "head"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("`head` is 2 stages, not one: head[n=1], head[n=2]") && out.stderr.contains("'head[n=1]'"),
        "{}",
        out.stderr
    );
    let out = t.run_with(&["explain", "p.rkd", "haed"]);
    assert!(out.stderr.contains("did you mean `head`?"), "{}", out.stderr);
    let out = t.run_with(&["export", "p.rkd", "head", "--out", "x"]);
    assert!(out.stderr.contains("`head` is 2 stages, not one"), "{}", out.stderr);
    assert!(t
        .run_with(&["explain", "p.rkd", "head[n=2]"])
        .stdout
        .contains("stage   head[n=2]"));
}

/// A name given on the command line is echoed with its control characters escaped (messages go
/// through `say!`), so that it cannot restyle the terminal.
#[test]
fn messages_escape_control_characters() {
    let t = Test::new().file("p.rkd", "stage a = exec(cmd: \"true\")\n");
    let out = t.run_with(&["explain", "p.rkd", "zz\u{1b}[31m\r"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("has no stage `zz\\u{1b}[31m\\r`"),
        "{:?}",
        out.stderr
    );
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);
}

/// The name `explain` suggests for a sweep's stage is whole, not cut at the table width as the
/// list before it is: copied into the command line, it explains that stage.
#[test]
fn explain_suggests_a_long_name_whole() {
    let value = "a_sweep_value_long_enough_that_the_stage_name_is_cut_in_tables_and_lists";
    let t = Test::new().file(
        "p.rkd",
        &format!("sweep n in [\"{value}\", \"b\"] {{\n  stage head = exec(cmd: \"true\", params: {{n: n}})\n}}\n"),
    );
    let out = t.run_with(&["explain", "p.rkd", "head"]);
    assert_eq!(out.code, 1);
    let quoted = out
        .stderr
        .split_once("quoted for the shell: '")
        .and_then(|(_, rest)| rest.split_once("')"))
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| panic!("{}", out.stderr));
    assert_eq!(quoted, format!("head[n={value}]"));
    let explained = t.run_with(&["explain", "p.rkd", &quoted]);
    assert_eq!(explained.code, 0, "{}", explained.stderr);
}

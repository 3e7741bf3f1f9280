//! Long stages survive interruption: a training stage killed (SIGKILL) or stopped (Ctrl-C) in the
//! middle of an epoch goes on from its last in-stage checkpoint when the pipeline runs again,
//! and ends with exactly the weights of a run that was never interrupted. `--fresh`, damaged
//! checkpoints, `rkd status`/`plan`, `rkd gc` and retries.

mod common;
use common::{key_of, Test};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// A tiny BERT teacher, a distilled student and a test-set evaluation; both training stages
/// checkpoint every 4 steps (`checkpoint_every` is not part of their keys).
const PIPELINE: &str = r#"
let data = synthetic_text(seed: 3, classes: 2, train_size: 512, val_size: 128, test_size: 64, max_len: 24, vocab_size: 64)
let tiny = bert(layers: 2, hidden: 48, heads: 2, intermediate: 96, vocab_size: 64, max_position: 32)
let small = bert(layers: 1, hidden: 32, heads: 2, intermediate: 64, vocab_size: 64, max_position: 32)
stage teacher = train(model: tiny, data: data, epochs: 6, batch_size: 16, lr: 3e-3, seed: 1, checkpoint_every: 4)
stage student = distill(teacher: teacher, student: small, data: data, epochs: 6, batch_size: 16, lr: 3e-3, seed: 2, checkpoint_every: 4)
stage score = eval(model: student, data: data, batch_size: 16)
"#;

/// `rkd run p.rkd --json -j 1 --store STORE` (one stage at a time: every stage gets the same
/// threads in every run, which bit-identical weights need).
fn run(t: &Test, store: &str, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["run", "p.rkd", "--json", "-j", "1", "--store", store];
    args.extend_from_slice(extra);
    let out = t.run_with(&args);
    let json = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
    (out.code, json, format!("{}\n{}", out.stdout, out.stderr))
}

fn spawn(t: &Test, store: &str) -> Child {
    t.spawn(&["run", "p.rkd", "-j", "1", "--store", store])
}

fn key(t: &Test, store: &str, name: &str) -> String {
    let out = t.run_with(&["plan", "p.rkd", "--json", "--store", store]);
    key_of(&serde_json::from_str(&out.stdout).unwrap(), name)
}

/// The stored bytes of a stage's output file.
fn output(t: &Test, store: &str, name: &str, file: &str) -> Vec<u8> {
    let path = t
        .path()
        .join(store)
        .join("entries")
        .join(key(t, store, name))
        .join("out")
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The steps of a stage's complete checkpoints.
fn checkpoint_steps(dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("manifest.json").is_file())
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    steps.sort();
    steps
}

/// Waits until the stage has a checkpoint of at least `step` steps; fails if the run ends first.
fn wait_for_checkpoint(child: &mut Child, dir: &Path, step: u64) {
    let t0 = Instant::now();
    while checkpoint_steps(dir).last().is_none_or(|s| *s < step) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before a checkpoint of step {step}");
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint of step {step}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A step to stop at, different from run to run: "kill it at a random step".
fn random_step(lo: u64, hi: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    lo + nanos % (hi - lo)
}

fn checkpoints_dir(t: &Test, store: &str, name: &str) -> PathBuf {
    t.path().join(store).join("checkpoints").join(key(t, store, name))
}

#[test]
fn a_killed_or_interrupted_training_stage_resumes_to_the_same_weights() {
    let t = Test::new().file("p.rkd", PIPELINE);
    // The reference: never interrupted.
    let (code, res, out) = run(&t, "ref", &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(res["resumed"], serde_json::json!({}), "{out}");
    let weights = |store: &str, name: &str| output(&t, store, name, "model.safetensors");
    // Nothing is left of the checkpoints once the stages are stored.
    assert!(
        !t.path().join("ref/checkpoints").exists()
            || checkpoint_steps(&checkpoints_dir(&t, "ref", "teacher")).is_empty()
    );

    // kill -9 in the middle of the teacher's training (192 steps, 32 per epoch).
    let teacher_dir = checkpoints_dir(&t, "k", "teacher");
    let mut child = spawn(&t, "k");
    let stop = random_step(36, 150);
    wait_for_checkpoint(&mut child, &teacher_dir, stop);
    child.kill().unwrap();
    child.wait().unwrap();
    let saved = *checkpoint_steps(&teacher_dir).last().unwrap();
    // The last two are kept (and a third for a moment, between writing a new one and removing
    // the oldest).
    assert!(
        checkpoint_steps(&teacher_dir).len() <= 3,
        "{:?}",
        checkpoint_steps(&teacher_dir)
    );
    // `plan` and `status` say where it would go on from.
    let plan = t.run_with(&["plan", "p.rkd", "--store", "k"]);
    assert!(
        plan.stdout.contains(&format!("resumable from step {saved}")),
        "{}",
        plan.stdout
    );
    let status = t.run_with(&["status", "p.rkd", "--store", "k"]);
    assert!(
        status.stdout.contains(&format!("resumable from step {saved}")) && status.stdout.contains("epoch"),
        "{}",
        status.stdout
    );

    // A damaged newest checkpoint is discarded with a warning, and the one before it is used.
    let steps = checkpoint_steps(&teacher_dir);
    assert!(steps.len() >= 2, "{steps:?}");
    let (older, newest) = (steps[steps.len() - 2], steps[steps.len() - 1]);
    let tensors = teacher_dir
        .join(format!("step-{newest:09}"))
        .join("tensors.safetensors");
    let mut bytes = std::fs::read(&tensors).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&tensors, bytes).unwrap();

    // kill -9 in the middle of the student's distillation, on the rerun (which resumes the teacher).
    let student_dir = checkpoints_dir(&t, "k", "student");
    let mut child = spawn(&t, "k");
    wait_for_checkpoint(&mut child, &student_dir, random_step(36, 150));
    child.kill().unwrap();
    child.wait().unwrap();
    let student_saved = *checkpoint_steps(&student_dir).last().unwrap();

    let (code, res, out) = run(&t, "k", &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(res["resumed"]["student"], student_saved, "{out}");
    let teacher_log =
        std::fs::read_to_string(t.path().join("k/entries").join(key(&t, "k", "teacher")).join("log.txt")).unwrap();
    assert!(
        teacher_log.contains("failed its check and was discarded"),
        "{teacher_log}"
    );
    assert!(
        teacher_log.contains(&format!("resumed from the checkpoint at step {older}")),
        "{teacher_log}"
    );
    assert!(
        weights("k", "teacher") == weights("ref", "teacher"),
        "the resumed teacher's weights differ"
    );
    assert!(
        weights("k", "student") == weights("ref", "student"),
        "the resumed student's weights differ"
    );
    // The loss curves and the distillation's per-epoch losses are those of the uninterrupted run.
    assert_eq!(
        output(&t, "k", "student", "steps.csv"),
        output(&t, "ref", "student", "steps.csv")
    );
    let metrics = |store: &str| -> Value {
        let mut m: Value = serde_json::from_slice(&output(&t, store, "student", "train_metrics.json")).unwrap();
        m.as_object_mut().unwrap().remove("threads");
        m
    };
    assert_eq!(metrics("k")["distill_epochs"], metrics("ref")["distill_epochs"]);
    assert_eq!(metrics("k")["epochs"], metrics("ref")["epochs"]);
    // The run record keeps it (`rkd log --json`'s latest run); the checkpoints are gone once the
    // stage is stored.
    let records: Vec<Value> = std::fs::read_dir(t.path().join("k/runs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "index.json")
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    let resumed: Vec<&Value> = records
        .iter()
        .flat_map(|r| r["stages"].as_array().unwrap())
        .filter(|s| s["name"] == "student" && s["status"] == "ran")
        .map(|s| &s["resumed_from"])
        .collect();
    assert_eq!(resumed, [&Value::from(student_saved)], "{records:#?}");
    assert!(checkpoint_steps(&student_dir).is_empty());
    assert_eq!(t.run_with(&["verify", "--store", "k"]).code, 0);
}

#[test]
fn qlora_and_a_pruned_fine_tune_resume_to_the_same_weights_too() {
    let t = Test::new().file(
        "p.rkd",
        r#"
let data = synthetic_text(seed: 3, classes: 2, train_size: 512, val_size: 128, test_size: 64, max_len: 24, vocab_size: 64)
let tiny = bert(layers: 2, hidden: 48, heads: 2, intermediate: 96, vocab_size: 64, max_position: 32)
stage teacher = train(model: tiny, data: data, epochs: 1, batch_size: 16, lr: 3e-3, seed: 1)
stage q = qlora(base: teacher, data: data, rank: 4, alpha: 8, epochs: 6, batch_size: 16, lr: 1e-3, seed: 7, checkpoint_every: 4)
stage p = prune(model: teacher, sparsity: 0.5, finetune_epochs: 6, data: data, lr: 1e-3, seed: 7, checkpoint_every: 4)
"#,
    );
    let (code, _, out) = run(&t, "ref", &[]);
    assert_eq!(code, 0, "{out}");
    // Killed in the middle of the adapters' training, then in the middle of the fine-tuning.
    for (stage, file) in [("q", "adapter_model.safetensors"), ("p", "model.safetensors")] {
        let dir = checkpoints_dir(&t, "k", stage);
        let mut child = spawn(&t, "k");
        wait_for_checkpoint(&mut child, &dir, random_step(12, 80));
        child.kill().unwrap();
        child.wait().unwrap();
        let saved = *checkpoint_steps(&dir).last().unwrap();
        let (code, res, out) = run(&t, "k", &["--only", stage]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(res["resumed"][stage], saved, "{out}");
        assert!(
            output(&t, "k", stage, file) == output(&t, "ref", stage, file),
            "the resumed `{stage}` differs from the uninterrupted one"
        );
    }
}

#[test]
fn ctrl_c_checkpoints_then_stops_and_fresh_starts_over() {
    // No periodic checkpoints (and `checkpoint_every` is not part of a key: same stages as above).
    let t = Test::new().file("p.rkd", &PIPELINE.replace(", checkpoint_every: 4)", ")"));
    let dir = checkpoints_dir(&t, "s", "teacher");
    let mut child = spawn(&t, "s");
    // The progress file appears with the teacher's first step (of 192).
    common::wait_for(&dir.join("progress.json"));
    // Twice in quick succession, as `timeout -s INT` does (the process, then its group): one
    // interrupt, not "Ctrl-C again to quit at once". (2 ms apart, so that both are delivered.)
    for pause in [0, 2] {
        std::thread::sleep(std::time::Duration::from_millis(pause));
        // SAFETY: sending SIGINT to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // The only checkpoint is the one written on the way out.
    let steps = checkpoint_steps(&dir);
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(steps[0] < 192, "{steps:?}");
    let (code, res, out) = run(&t, "s", &["--only", "teacher"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(res["resumed"]["teacher"], steps[0], "{out}");

    // --fresh: the checkpoints are dropped, the stage starts at step 0, same weights.
    let mut child = spawn(&t, "f");
    let dir = checkpoints_dir(&t, "f", "teacher");
    common::wait_for(&dir.join("progress.json"));
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_eq!(checkpoint_steps(&dir).len(), 1);
    let (code, res, out) = run(&t, "f", &["--only", "teacher", "--fresh"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(res["resumed"], serde_json::json!({}), "{out}");
    assert!(output(&t, "f", "teacher", "model.safetensors") == output(&t, "s", "teacher", "model.safetensors"));
}

#[test]
fn gc_removes_the_checkpoints_no_kept_pipeline_needs() {
    let t = Test::new().file("p.rkd", PIPELINE);
    let dir = checkpoints_dir(&t, ".rkd", "teacher");
    let mut child = t.spawn(&["run", "p.rkd", "-j", "1"]);
    wait_for_checkpoint(&mut child, &dir, 4);
    child.kill().unwrap();
    child.wait().unwrap();
    // A kept pipeline still needs the stage: gc keeps its checkpoints.
    let gc = t.run_with(&["gc", "--keep", "p.rkd"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(!checkpoint_steps(&dir).is_empty(), "{}", gc.stdout);
    // Once the pipeline no longer has that stage, they go.
    std::fs::write(t.path().join("p.rkd"), "stage other = exec(cmd: \"true\")\n").unwrap();
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    let gc = t.run_with(&["gc", "--keep", "p.rkd"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(gc.stdout.contains("checkpoints of 1 unfinished stage"), "{}", gc.stdout);
    assert!(!dir.exists());
}

#[test]
fn a_failure_that_may_pass_is_retried_and_one_that_cannot_is_not() {
    // Each fails the first time and succeeds the second (a file outside the store remembers).
    let flaky = |name: &str, retries: usize| {
        format!(
            "stage {name} = exec(cmd: \"if [ -f {name}.tried ]; then echo ok > $RKD_OUT/x; else touch {name}.tried; exit 1; fi\", retries: {retries})\n"
        )
    };
    let t = Test::new()
        .file(
            "p.rkd",
            &format!(
                "{}{}stage bad = train(model: bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 16, \
                 vocab_size: 500), data: text_table(path: \"t\", text: \"text\", label: \"label\", max_len: 8), epochs: 1)\n",
                flaky("again", 1),
                flaky("once", 0)
            ),
        )
        // A vocabulary size the table's tokenizer contradicts: the same failure every time.
        .file("t/train.csv", "text,label\ngood film,1\nbad film,0\n");
    // A stage's own `retries` wins over `--retries`, both ways.
    let out = t.run_with(&[
        "run",
        "p.rkd",
        "--json",
        "--keep-going",
        "--retries",
        "3",
        "--retry-delay",
        "0s",
    ]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with('{'), "{}{}", out.stdout, out.stderr);
    let res: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(res["ran"], serde_json::json!(["again"]));
    assert_eq!(res["attempts"]["again"], 2, "{}", out.stdout);
    // `once` has `retries: 0`; `bad` cannot build its model, which fails the same way every time.
    assert_eq!(common::sorted(&res["failed"]), ["bad", "once"]);
    assert!(
        res["attempts"].get("bad").is_none() && res["attempts"].get("once").is_none(),
        "{}",
        out.stdout
    );
    // `retries` is not part of the key: the stored result serves a run without it.
    std::fs::write(t.path().join("p.rkd"), flaky("again", 1).replace(", retries: 1", "")).unwrap();
    let out = t.run_with(&["run", "p.rkd", "--json"]);
    let res: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(res["cached"], serde_json::json!(["again"]), "{}", out.stdout);
}

//! `rkd run` to the end of a study — pruning and a report — then `rkd report` and `rkd export`.

mod common;
use common::{key_of, sorted, Test};
use serde_json::Value;
use std::path::Path;

const PIPELINE: &str = r#"
let data = synthetic_text(seed: 3, classes: 2, train_size: 256, val_size: 128, max_len: 16, vocab_size: 48)
let big = bert(layers: 2, hidden: 32, heads: 2, intermediate: 64, vocab_size: 48, max_position: 32)
let tiny = bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, vocab_size: 48, max_position: 32)
stage teacher = train(model: big, data: data, epochs: 2, batch_size: 16, lr: 3e-3, seed: 1)
stage student = distill(teacher: teacher, student: tiny, data: data, epochs: 1, batch_size: 16, lr: 3e-3)
stage pruned = prune(model: student, sparsity: 0.3)
stage results = report(models: [teacher, student, pruned], data: data, baseline: teacher)
"#;

fn run_ok(t: &Test, args: &[&str]) -> String {
    let out = t.run_with(args);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    out.stdout
}

#[test]
fn a_study_ends_in_a_report_and_its_models_export() {
    let t = Test::new().file("p.rkd", PIPELINE);
    // Before the run there is nothing to show.
    let early = t.run_with(&["report", "p.rkd"]);
    assert_eq!(early.code, 1);
    assert!(early.stderr.contains("not run yet"), "{}", early.stderr);

    run_ok(&t, &["run", "p.rkd", "-j", "2"]);
    let table = run_ok(&t, &["report", "p.rkd"]);
    for needle in [
        "teacher",
        "student",
        "pruned",
        "report.md",
        "params_vs_accuracy.png",
        "size_vs_accuracy.svg",
        "training_curves.png",
        "training_curves.csv",
    ] {
        assert!(table.contains(needle), "{needle} missing from\n{table}");
    }
    let plan: Value = serde_json::from_str(&run_ok(&t, &["plan", "p.rkd", "--json"])).unwrap();
    let key = |name: &str| key_of(&plan, name);
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(
            t.path()
                .join(".rkd/entries")
                .join(key("results"))
                .join("out/report.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let rows = report["rows"].as_array().unwrap();
    let row = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap().clone();
    // Training curves of the trained models, from their stages' steps.csv and epochs.csv.
    let curves = std::fs::read_to_string(
        t.path()
            .join(".rkd/entries")
            .join(key("results"))
            .join("out/training_curves.csv"),
    )
    .unwrap();
    assert!(curves.starts_with("model,series,x,value\n"), "{curves}");
    for needle in [
        "\nteacher,train_loss,1,",
        "\nteacher,validation_accuracy,1,",
        "\nstudent,train_loss,1,",
    ] {
        assert!(curves.contains(needle), "{needle} missing from the curves");
    }
    assert_eq!(row("teacher")["strategy"], "teacher");
    assert_eq!(row("student")["strategy"], "straightforward");
    assert_eq!(row("pruned")["strategy"], "prune");
    // 30% of the student's linear weights are zero: same dense size, fewer nonzeros.
    assert_eq!(row("pruned")["dense_bytes"], row("student")["dense_bytes"]);
    assert!(row("pruned")["nonzeros"].as_u64() < row("student")["nonzeros"].as_u64());
    assert!(row("student")["compression_params"].as_f64().unwrap() > 1.0);

    // Export the student; a pipeline that loads it with pretrained(path:) measures the same accuracy.
    let out = run_ok(&t, &["export", "p.rkd", "student", "--out", "exported"]);
    assert!(out.contains("exported `student`"), "{out}");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(t.path().join("exported").join(f).is_file(), "{f}");
    }
    assert!(!t.path().join("exported/train_metrics.json").exists());
    std::fs::write(
        t.path().join("q.rkd"),
        "let data = synthetic_text(seed: 3, classes: 2, train_size: 256, val_size: 128, max_len: 16, vocab_size: 48)\nstage again = eval(model: pretrained(path: \"exported\"), data: data)\n",
    )
    .unwrap();
    run_ok(&t, &["run", "q.rkd"]);
    let qplan: Value = serde_json::from_str(&run_ok(&t, &["plan", "q.rkd", "--json"])).unwrap();
    let again_key = qplan["stages"][0]["key"].as_str().unwrap();
    let metrics: Value = serde_json::from_str(
        &std::fs::read_to_string(t.path().join(".rkd/entries").join(again_key).join("metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["accuracy"], row("student")["quality"]);
    // Exporting a stage that is not a model, or into a non-empty directory, is a clear error.
    let bad = t.run_with(&["export", "p.rkd", "results", "--out", "x"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("no model to export"), "{}", bad.stderr);
    let full = t.run_with(&["export", "p.rkd", "student", "--out", "exported"]);
    assert!(full.stderr.contains("not empty"), "{}", full.stderr);
    // Exported files are the user's to change (the store's own copies are read-only).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(t.path().join("exported/config.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    // A damaged stored model is never exported.
    let weights = t
        .path()
        .join(".rkd/entries")
        .join(key("student"))
        .join("out/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::set_permissions(&weights, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&weights, bytes).unwrap();
    let damaged = t.run_with(&["export", "p.rkd", "student", "--out", "exported2"]);
    assert_eq!(damaged.code, 1);
    assert!(
        damaged
            .stderr
            .contains("the stored result of `student` is damaged (out/model.safetensors: content changed)"),
        "{}",
        damaged.stderr
    );
    assert!(!t.path().join("exported2").exists(), "nothing was copied");
}

/// The quickstart's shape at toy size: teacher, the three strategies, a sweep, QLoRA, pruning of
/// the QLoRA output, and one report.
fn study(alphas: &str) -> String {
    format!(
        r#"
use std::strategies::{{straightforward, successive, multi_agent}}
let data = synthetic_text(seed: 3, classes: 2, train_size: 192, val_size: 64, max_len: 16, vocab_size: 48)
let big = bert(layers: 2, hidden: 32, heads: 2, intermediate: 64, vocab_size: 48, max_position: 32)
let small = bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, vocab_size: 48, max_position: 32)
let tiny = bert(layers: 1, hidden: 8, heads: 2, intermediate: 16, vocab_size: 48, max_position: 32)
stage teacher = train(model: big, data: data, epochs: 1, batch_size: 16, lr: 3e-3, seed: 1)
let kd = {{epochs: 1, batch_size: 16, lr: 3e-3, seed: 1}}
let direct = straightforward(teacher: teacher, students: [small, tiny], data: data, ..kd)
let chain = successive(teacher: teacher, students: [small, tiny], data: data, ..kd)
stage fused = multi_agent(teachers: [teacher, chain[0]], student: tiny, data: data, fusion: "confidence", ..kd)
sweep a in {alphas} {{
  stage tuned = distill(teacher: teacher, student: tiny, data: data, temperature: 2.0, alpha: a, ..kd)
}}
stage q = qlora(base: chain[-1], data: data, rank: 2, alpha: 4, epochs: 1, batch_size: 16, lr: 1e-3)
stage p = prune(model: q, sparsity: 0.3)
stage results = report(models: [teacher] + direct + chain + [fused] + tuned + [q, p], data: data, baseline: teacher)
"#
    )
}

fn ran(t: &Test) -> Vec<String> {
    let out = run_ok(t, &["run", "p.rkd", "--json", "-j", "2"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    sorted(&v["ran"])
}

#[test]
fn changing_one_sweep_value_reruns_only_that_branch_and_the_report() {
    let t = Test::new().file("p.rkd", &study("[0.0, 0.5]"));
    let first = ran(&t);
    for stage in ["teacher/predictions", "q", "p", "results", "tuned[a=0.0]", "fused"] {
        assert!(first.contains(&stage.to_string()), "{stage} not in {first:?}");
    }
    std::fs::write(t.path().join("p.rkd"), study("[0.0, 0.9]")).unwrap();
    // The plan names the new point after the one it replaces.
    let plan = run_ok(&t, &["plan", "p.rkd"]);
    let line = plan.lines().find(|l| l.starts_with("tuned[a=0.9]")).unwrap();
    assert!(
        line.contains("sweep value changed: a 0.5 → 0.9 (was tuned[a=0.5])") && line.contains("alpha 0.5 → 0.9"),
        "{line}"
    );
    assert_eq!(ran(&t), ["results", "tuned[a=0.9]"]);
    let table = run_ok(&t, &["report", "p.rkd"]);
    for needle in ["tuned[a=0.9]", "qlora", "prune", "multi-agent", "successive"] {
        assert!(table.contains(needle), "{needle} missing from\n{table}");
    }
    // The sweep as a pivot table, one column per value of `a`.
    assert!(table.contains("Sweep tuned: accuracy by a\n"), "{table}");
    assert!(
        table.lines().any(|l| l.contains("a=0.0") && l.contains("a=0.9")),
        "{table}"
    );
    // An exported QLoRA stage names itself as the adapter's base (it holds the NF4 base), not a
    // directory inside the store; rkd's own bookkeeping stays behind.
    run_ok(&t, &["export", "p.rkd", "q", "--out", "q_export"]);
    let dir = t.path().join("q_export");
    let ac: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    let base = ac["base_model_name_or_path"].as_str().unwrap();
    assert_eq!(Path::new(base), std::fs::canonicalize(&dir).unwrap(), "{base}");
    assert!(!dir.join("selection.json").exists());
}

/// Names are not part of keys: renaming a stage reruns nothing, and `rkd report` shows the
/// model under its new name.
#[test]
fn renaming_a_stage_relabels_the_report_without_rerunning() {
    let t = Test::new().file("p.rkd", PIPELINE);
    run_ok(&t, &["run", "p.rkd", "-j", "2"]);
    std::fs::write(
        t.path().join("p.rkd"),
        PIPELINE
            .replace("stage student", "stage pupil")
            .replace("model: student", "model: pupil")
            .replace(", student,", ", pupil,"),
    )
    .unwrap();
    let again: Value = serde_json::from_str(run_ok(&t, &["run", "p.rkd", "--json"]).trim()).unwrap();
    assert_eq!(again["ran"], serde_json::json!([]), "{again}");
    let table = run_ok(&t, &["report", "p.rkd"]);
    assert!(table.contains("pupil"), "{table}");
    assert!(!table.lines().any(|l| l.starts_with("student")), "{table}");
    assert!(table.contains("1 model shown under its current name"), "{table}");
}

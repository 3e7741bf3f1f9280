//! `rkd compare`: two runs of a pipeline whose temperature changed show that parameter, the
//! metric deltas, and McNemar's test on the evaluations of the same examples.

mod common;
use common::Test;
use serde_json::Value;

fn pipeline(temperature: &str) -> String {
    format!(
        r#"let data = synthetic_text(seed: 1, train_size: 256, val_size: 64, test_size: 64, max_len: 16, vocab_size: 60)
stage teacher = train(model: bert(layers: 1, hidden: 32, heads: 2, intermediate: 64, max_position: 32), data: data, epochs: 6, batch_size: 16, lr: 3e-3, seed: 1)
stage student = distill(teacher: teacher, student: bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 32), data: data, epochs: 4, batch_size: 16, lr: 3e-3, seed: 1, temperature: {temperature})
stage score = eval(model: student, data: data, split: "test", batch_size: 16)
"#
    )
}

fn run(t: &Test) {
    let out = t.run_with(&["run", "p.rkd", "-j", "1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

#[test]
fn two_runs_with_another_temperature_show_the_parameter_and_the_metric_deltas() {
    let t = Test::new().file("p.rkd", &pipeline("2.0"));
    run(&t);
    let one = t.run_with(&["compare", "p.rkd"]);
    assert_eq!(one.code, 2);
    assert!(one.stderr.contains("has 1 recorded run"), "{}", one.stderr);

    std::fs::write(t.path().join("p.rkd"), pipeline("4.0")).unwrap();
    run(&t);
    let out = t.run_with(&["compare", "p.rkd", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let c: Value = serde_json::from_str(&out.stdout).unwrap();
    let mut keys: Vec<&String> = c.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["a", "b", "stages"]);
    let stage = |name: &str| {
        c["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    assert_eq!(stage("teacher")["status"], "same");
    let student = stage("student");
    assert_eq!(student["status"], "changed");
    assert_eq!(
        student["changes"],
        serde_json::json!(["parameter changed: temperature 2.0 → 4.0"])
    );
    // Each metric: A's, B's, and B − A, as the two runs recorded them.
    let records: Vec<std::path::PathBuf> = {
        let mut r: Vec<_> = std::fs::read_dir(t.path().join(".rkd/runs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("20"))
            .collect();
        r.sort();
        r
    };
    let recorded = |i: usize, stage: &str, metric: &str| -> f64 {
        let run: Value = serde_json::from_slice(&std::fs::read(&records[i]).unwrap()).unwrap();
        run["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == stage)
            .unwrap()["metrics"][metric]
            .as_f64()
            .unwrap()
    };
    let score = stage("score");
    assert_eq!(score["status"], "changed");
    let acc = score["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "accuracy")
        .unwrap();
    let (a, b) = (recorded(0, "score", "accuracy"), recorded(1, "score", "accuracy"));
    assert_eq!((acc["a"].as_f64(), acc["b"].as_f64()), (Some(a), Some(b)));
    assert!((acc["delta"].as_f64().unwrap() - (b - a)).abs() < 1e-12);
    // Both evaluations predicted the same 64 test examples: McNemar pairs them.
    let m = &score["mcnemar"];
    assert_eq!(m["examples"], 64);
    let (only_a, only_b) = (
        m["only_a_correct"].as_i64().unwrap(),
        m["only_b_correct"].as_i64().unwrap(),
    );
    assert_eq!(
        only_b - only_a,
        ((b - a) * 64.0).round() as i64,
        "the accuracy difference is the discordant pairs'"
    );
    assert!((0.0..=1.0).contains(&m["p_value"].as_f64().unwrap()));

    // The same comparison from the two record files; as text and markdown.
    let args: Vec<&str> = ["compare"]
        .into_iter()
        .chain(records.iter().map(|p| p.to_str().unwrap()))
        .chain(["--json"])
        .collect();
    let again: Value = serde_json::from_str(&t.run_with(&args).stdout).unwrap();
    assert_eq!(again["stages"], c["stages"]);
    let text = t.run_with(&["compare", "p.rkd"]).stdout;
    assert!(
        text.contains("student (distill): changed\n  parameter changed: temperature 2.0 → 4.0"),
        "{text}"
    );
    assert!(text.contains("McNemar on the same 64 examples"), "{text}");
    // The student's accuracy is the one that selected its epochs, and is named so.
    assert!(text.contains("  selection_accuracy  "), "{text}");
    assert!(text.contains("the same in both (one key): teacher"), "{text}");
    let md = t.run_with(&["compare", "p.rkd", "--md"]).stdout;
    assert!(md.contains("| Stage | Change | Metric | A | B | B − A |"), "{md}");
    assert!(
        md.contains("| student | parameter changed: temperature 2.0 → 4.0 |"),
        "{md}"
    );
    // The current file against its store: the second run, stage for stage.
    let now: Value = serde_json::from_str(
        &t.run_with(&["compare", records[1].to_str().unwrap(), "p.rkd", "--json"])
            .stdout,
    )
    .unwrap();
    assert!(
        now["stages"].as_array().unwrap().iter().all(|s| s["status"] == "same"),
        "{now}"
    );
}

#[test]
fn a_pipeline_at_a_git_revision_is_compared_with_the_file_now() {
    let t = Test::new().file("p.rkd", &pipeline("2.0"));
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(t.path())
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "p.rkd"]);
    git(&["commit", "-qm", "temperature 2"]);
    run(&t);
    std::fs::write(t.path().join("p.rkd"), pipeline("4.0")).unwrap();
    run(&t);
    let out = t.run_with(&["compare", "p.rkd@HEAD", "p.rkd", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let c: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(c["a"], "p.rkd at HEAD");
    let student = c["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "student")
        .unwrap();
    assert_eq!(
        student["changes"],
        serde_json::json!(["parameter changed: temperature 2.0 → 4.0"])
    );
    // Both versions ran, so both sides have their metrics from the store.
    let acc = student["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "accuracy")
        .unwrap();
    assert!(acc["a"].is_number() && acc["b"].is_number(), "{acc}");
    // The temporary copy of the old version is gone.
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".rkd-compare-"))
        .collect();
    assert!(left.is_empty());
    let bad = t.run_with(&["compare", "p.rkd@nope", "p.rkd"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("git cannot show p.rkd at nope"), "{}", bad.stderr);
}

#[test]
fn results_lists_every_runs_metrics_filtered_and_sorted() {
    let t = Test::new().file("p.rkd", &pipeline("2.0"));
    run(&t);
    std::fs::write(t.path().join("p.rkd"), pipeline("4.0")).unwrap();
    run(&t);
    let out = t.run_with(&["results", "p.rkd", "--stage", "score", "--sort", "loss", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    // Both runs evaluated `score` (its upstream changed), the teacher ran once.
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["stage"] == "score" && r["op"] == "eval"));
    let loss: Vec<f64> = rows.iter().map(|r| r["metrics"]["loss"].as_f64().unwrap()).collect();
    assert!(loss[0] >= loss[1], "highest first: {loss:?}");
    let all = t.run_with(&["results", "p.rkd", "--metric", "accuracy,loss"]).stdout;
    let header = all.lines().next().unwrap();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns, ["RUN", "STAGE", "OP", "ACCURACY", "LOSS"], "{all}");
    // teacher, its predictions, student and score in the first run; student and score again.
    assert!(all.contains("(6 stage runs;"), "{all}");
    // A training stage's accuracy is the one that selected its epochs: never ranked with evals.
    let teacher = t.run_with(&["results", "p.rkd", "--stage", "teacher", "--json"]).stdout;
    let rows: Value = serde_json::from_str(&teacher).unwrap();
    let metrics = &rows.as_array().unwrap()[0]["metrics"];
    assert!(
        metrics.get("selection_accuracy").is_some() && metrics.get("accuracy").is_none(),
        "{teacher}"
    );
}

/// A stage recorded under one name is found by its other one, and shown under it.
#[test]
fn results_find_a_stage_by_its_other_name() {
    let t = Test::new().file(
        "p.rkd",
        "stage a = exec(cmd: \"echo 1 > $RKD_OUT/x\")\nstage b = exec(cmd: \"echo 1 > $RKD_OUT/x\")\n",
    );
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    let out = t.run_with(&["results", "p.rkd", "--stage", "b", "--json"]);
    let rows: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["stage"], "b");
}

#[test]
fn compare_draws_both_runs_reports_in_one_plot() {
    let with_report = |t: &str| {
        format!(
            "{}stage results = report(models: [teacher, student], data: data, baseline: teacher)\n",
            pipeline(t)
        )
    };
    let t = Test::new().file("p.rkd", &with_report("2.0"));
    run(&t);
    std::fs::write(t.path().join("p.rkd"), with_report("4.0")).unwrap();
    run(&t);
    let out = t.run_with(&["compare", "p.rkd", "--plot", "overlay"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let svg = std::fs::read_to_string(t.path().join("overlay/size_vs_accuracy.svg")).unwrap();
    assert!(
        svg.contains("student (A)") && svg.contains("run A"),
        "A's student beside B's"
    );
    assert!(t.path().join("overlay/params_vs_accuracy.png").is_file());
}

#[test]
fn a_run_that_used_stored_results_compares_with_their_metrics() {
    let pipeline = |lr: &str| common::SHARED_PIPELINE.replace("batch_size: 16)", &format!("batch_size: 16, lr: {lr})"));
    let t = Test::new().file("p.rkd", &pipeline("1e-3"));
    run(&t);
    run(&t); // all cached: the run record holds no metrics of its own
    std::fs::write(t.path().join("p.rkd"), pipeline("2e-3")).unwrap();
    run(&t);
    let out = t.run_with(&["compare", "p.rkd", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let c: Value = serde_json::from_str(&out.stdout).unwrap();
    let score = c["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "score")
        .unwrap();
    let acc = score["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "accuracy");
    let acc = acc.unwrap_or_else(|| panic!("no accuracy: {score}"));
    assert!(acc["a"].is_number() && acc["b"].is_number(), "{acc}");
}

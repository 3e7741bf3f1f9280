//! Seeds: a model trained with several seeds (`sweep seed in [1, 2, 3]`) is summarised in the
//! report by mean ± sample standard deviation and a 95% confidence interval, checked here
//! against the same numbers computed by hand from the per-seed rows.

mod common;
use common::{entry_of, Test};
use serde_json::Value;

const PIPELINE: &str = r#"let data = synthetic_text(seed: 1, train_size: 256, val_size: 64, test_size: 64, max_len: 16, vocab_size: 60)
stage teacher = train(model: bert(layers: 1, hidden: 32, heads: 2, intermediate: 64, max_position: 32), data: data, epochs: 6, batch_size: 16, lr: 3e-3, seed: 1)
sweep seed in [1, 2, 3] {
  stage student = distill(teacher: teacher, student: bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 32), data: data, epochs: 4, batch_size: 16, lr: 3e-3, seed: seed)
}
stage results = report(models: [teacher] + student, data: data, baseline: teacher)
"#;

#[test]
fn a_three_seed_sweep_is_reported_as_mean_and_sample_standard_deviation() {
    let t = Test::new().file("p.rkd", PIPELINE);
    let out = t.run_with(&["run", "p.rkd", "-j", "1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let dir = entry_of(&t, "p.rkd", "results").join("out");
    let report: Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let acc: Vec<f64> = ["student[seed=1]", "student[seed=2]", "student[seed=3]"]
        .iter()
        .map(|name| {
            rows.iter()
                .find(|r| r["name"] == *name)
                .unwrap_or_else(|| panic!("no row {name}"))["quality"]
                .as_f64()
                .unwrap()
        })
        .collect();
    // By hand: the mean, the sample variance (n − 1), and t(0.975, 2 degrees of freedom).
    let mean = (acc[0] + acc[1] + acc[2]) / 3.0;
    let var = ((acc[0] - mean).powi(2) + (acc[1] - mean).powi(2) + (acc[2] - mean).powi(2)) / 2.0;
    assert!(var > 0.0, "the seeds gave different students: {acc:?}");
    let half = 4.302652729911275 * var.sqrt() / 3f64.sqrt();
    let groups = report["seed_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "the teacher is no seed group: {groups:?}");
    let g = &groups[0];
    assert_eq!(g["name"], "student");
    assert_eq!(g["seeds"], serde_json::json!(["1", "2", "3"]));
    let q = &g["quality"];
    assert_eq!(q["n"], 3);
    assert!((q["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!((q["std"].as_f64().unwrap() - var.sqrt()).abs() < 1e-12);
    assert!((q["ci95"][0].as_f64().unwrap() - (mean - half)).abs() < 1e-9);
    assert!((q["ci95"][1].as_f64().unwrap() - (mean + half)).abs() < 1e-9);
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let shown = format!("{:.1}% ± {:.1} (n=3)", 100.0 * mean, 100.0 * var.sqrt());
    assert!(md.contains("### Seeds") && md.contains(&shown), "{shown} in\n{md}");
    // The plots draw the spread as a bar, and say so.
    let svg = std::fs::read_to_string(dir.join("params_vs_accuracy.svg")).unwrap();
    assert!(
        svg.contains("Bars: the mean over seeds"),
        "the legend says what the bars are"
    );
}

#[test]
fn a_seeds_argument_is_a_sweep_over_seed() {
    let head =
        "let data = synthetic_text(seed: 1)\nlet tiny = bert(layers: 1, hidden: 16, heads: 2, intermediate: 32)\n";
    let t = Test::new()
        .file(
            "a.rkd",
            &format!("{head}stage s = train(model: tiny, data: data, seeds: [1, 2, 3])\nstage r = report(models: s, data: data)\n"),
        )
        .file(
            "b.rkd",
            &format!(
                "{head}sweep seed in [1, 2, 3] {{\n  stage s = train(model: tiny, data: data, seed: seed)\n}}\nstage r = report(models: s, data: data)\n"
            ),
        )
        .file("c.rkd", &format!("{head}stage s = train(model: tiny, data: data, seed: 4, seeds: [1, 2])\n"));
    let plan = |file: &str| common::plan_keys(&t, file);
    let a = plan("a.rkd");
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["s[seed=1]", "s[seed=2]", "s[seed=3]", "r"]);
    assert_eq!(a, plan("b.rkd"), "the same stages, with the same keys, as the sweep");
    let both = t.run_with(&["check", "c.rkd"]);
    assert_eq!(both.code, 1);
    assert!(
        both.stderr.contains("give `seed:` or `seeds:`, not both"),
        "{}",
        both.stderr
    );
}

//! `rkd run` on distillation pipelines: the three strategies of std::strategies, a sweep of
//! students sharing one teacher whose predictions are computed once, and what reruns after an edit.

mod common;
use common::{by_name, sorted, Test};
use serde_json::Value;

const HEADER: &str = r#"
use std::strategies::{straightforward, successive, multi_agent}
let data = synthetic_text(seed: 3, classes: 2, train_size: 256, val_size: 128, max_len: 16, vocab_size: 48)
let big = bert(layers: 2, hidden: 32, heads: 2, intermediate: 64, vocab_size: 48, max_position: 32)
let small = bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, vocab_size: 48, max_position: 32)
let tiny = bert(layers: 1, hidden: 8, heads: 2, intermediate: 16, vocab_size: 48, max_position: 32)
stage teacher = train(model: big, data: data, epochs: 2, batch_size: 16, lr: 3e-3, seed: 1)
let kd = {epochs: 1, batch_size: 16, lr: 3e-3, seed: 1}
"#;

fn run_json(t: &Test) -> Value {
    let out = t.run_with(&["run", "p.rkd", "--json", "-j", "2"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr))
}

fn sweep(alphas: &str) -> String {
    format!(
        "{HEADER}sweep t in [2.0, 4.0], a in {alphas} {{\n  stage s = distill(teacher: teacher, student: tiny, data: data, temperature: t, alpha: a, ..kd)\n}}\n"
    )
}

#[test]
fn a_temperature_alpha_sweep_runs_the_teacher_and_its_predictions_once() {
    let t = Test::new().file("p.rkd", &sweep("[0.5, 0.9]"));
    let first = run_json(&t);
    assert_eq!(
        sorted(&first["ran"]),
        [
            "s[t=2.0,a=0.5]",
            "s[t=2.0,a=0.9]",
            "s[t=4.0,a=0.5]",
            "s[t=4.0,a=0.9]",
            "teacher",
            "teacher/predictions"
        ]
    );
    assert_eq!(first["failed"], serde_json::json!([]));
    // Another alpha: only its two students run; the teacher and its predictions are cached.
    std::fs::write(t.path().join("p.rkd"), sweep("[0.5, 0.7]")).unwrap();
    let second = run_json(&t);
    assert_eq!(sorted(&second["ran"]), ["s[t=2.0,a=0.7]", "s[t=4.0,a=0.7]"]);
    assert!(sorted(&second["cached"]).contains(&"teacher/predictions".to_string()));
}

#[test]
fn the_three_strategies_run_end_to_end() {
    let src = format!(
        "{HEADER}let direct = straightforward(teacher: teacher, students: [small, tiny], data: data, ..kd)\nlet chain = successive(teacher: teacher, students: [small, tiny], data: data, temperature: 2.0, ..kd)\nstage fused = multi_agent(teachers: [teacher, chain[0]], student: tiny, data: data, fusion: \"confidence\", ..kd)\n"
    );
    let t = Test::new().file("p.rkd", &src);
    let res = run_json(&t);
    assert_eq!(
        sorted(&res["ran"]),
        [
            "chain/step[0]",
            "chain/step[0]/predictions",
            "chain/step[1]",
            "direct/step[0]",
            "direct/step[1]",
            "fused",
            "teacher",
            "teacher/predictions"
        ]
    );
    let plan: Value = serde_json::from_str(&t.run_with(&["plan", "p.rkd", "--json"]).stdout).unwrap();
    let stage = |name: &str| by_name(&plan, name);
    // successive: the second student learns from the first; the options reach every stage.
    assert!(stage("chain/step[1]")["inputs"]
        .as_array()
        .unwrap()
        .contains(&Value::from("chain/step[0]")));
    assert_eq!(stage("chain/step[1]")["params"]["temperature"], 2.0);
    assert_eq!(stage("direct/step[1]")["params"]["temperature"], 4.0);
    // Every stage is cached now, and the fused student's metrics name its teachers' weights.
    let again = run_json(&t);
    assert_eq!(again["ran"], serde_json::json!([]));
    let key = stage("fused")["key"].as_str().unwrap().to_string();
    let metrics: Value = serde_json::from_str(
        &std::fs::read_to_string(t.path().join(".rkd/entries").join(key).join("metrics.json")).unwrap(),
    )
    .unwrap();
    let w = |n: &str| metrics[format!("weight/{n}")].as_f64().unwrap();
    assert!((w("teacher") + w("chain/step[0]") - 1.0).abs() < 1e-9, "{metrics}");
}

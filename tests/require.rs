//! Gates: `require` stops a compression chain when a recorded metric misses its bound. A
//! failing gate exits non-zero with the value, the bound and the stage that measured it, and
//! what depends on it is skipped; a passing gate passes its model on and is cached.

mod common;
use common::{entry_json, sorted, Test};
use serde_json::Value;

const PIPELINE: &str = r#"let data = synthetic_text(seed: 1, train_size: 96, val_size: 48, test_size: 48, max_len: 16, vocab_size: 60)
let tiny = bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 32)
stage teacher = train(model: tiny, data: data, epochs: 4, batch_size: 16, lr: 3e-3, seed: 1)
stage teacher_eval = eval(model: teacher, data: data, split: "test", batch_size: 16)
stage pruned = prune(model: teacher, sparsity: 0.3)
stage pruned_eval = eval(model: pruned, data: data, split: "test", batch_size: 16)
stage kept = require(model: pruned, measured_by: pruned_eval, baseline: teacher_eval, max_drop: 1.0)
stage refused = require(model: pruned, measured_by: pruned_eval, metric: "accuracy", at_least: 1.0)
stage kept_eval = eval(model: kept, data: data, split: "test", batch_size: 16)
stage refused_eval = eval(model: refused, data: data, split: "test", batch_size: 16)
"#;

fn run(t: &Test) -> (i32, Value, String) {
    let out = t.run_with(&["run", "p.rkd", "--json", "-j", "1", "--keep-going"]);
    let json =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    (out.code, json, format!("{}{}", out.stdout, out.stderr))
}

#[test]
fn a_failing_gate_stops_what_depends_on_it_and_a_passing_one_passes_its_model_on() {
    let t = Test::new().file("p.rkd", PIPELINE);
    let (code, res, text) = run(&t);
    assert_eq!(code, 1, "{text}");
    assert_eq!(sorted(&res["failed"]), ["refused"]);
    assert_eq!(sorted(&res["skipped"]), ["refused_eval"]);
    let measured = entry_json(&t, "p.rkd", "pruned_eval", "metrics.json")["accuracy"]
        .as_f64()
        .unwrap();
    let why = format!("requirement not met: `pruned_eval` measured accuracy {measured:.4}, below at_least 1");
    assert!(text.contains(&why), "the failure names value, bound and stage: {text}");
    assert!(res["errors"]["refused"].as_str().unwrap().contains(&why), "{res}");

    // The model that passed is the pruned model: evaluated again, it scores the same.
    let kept = entry_json(&t, "p.rkd", "kept_eval", "metrics.json")["accuracy"]
        .as_f64()
        .unwrap();
    assert_eq!(kept, measured);
    let gate = entry_json(&t, "p.rkd", "kept", "metrics.json");
    assert_eq!(gate["accuracy"].as_f64(), Some(measured));
    assert!(gate["baseline_accuracy"].as_f64().is_some());

    // A passing gate is cached; the failing one runs again (nothing of it was stored) and fails.
    let (code, res, _) = run(&t);
    assert_eq!(code, 1);
    assert!(sorted(&res["cached"]).contains(&"kept".to_string()), "{res}");
    assert_eq!(sorted(&res["failed"]), ["refused"]);
}

#[test]
fn a_gate_without_a_condition_or_with_half_of_one_is_refused_before_anything_runs() {
    let cases = [
        ("require(model: m)", "a gate needs a condition"),
        (
            "require(model: m, baseline: m, at_least: 0.5)",
            "a baseline needs `max_drop:`",
        ),
        (
            "require(model: m, max_drop: 0.1)",
            "`max_drop` is measured from a baseline",
        ),
        ("require(model: m, at_least: 0.9, at_most: 0.5)", "no value passes"),
        (
            "require(model: m, at_least: 85)",
            "`accuracy` is a fraction from 0 to 1, so at_least: 85 can never be what is meant: write 0.85",
        ),
    ];
    for (call, message) in cases {
        let t = Test::new().file(
            "p.rkd",
            &format!(
                "let data = synthetic_text(seed: 1)\nstage m = train(model: bert(layers: 1, hidden: 16, heads: 2, intermediate: 32), data: data)\nstage g = {call}\n"
            ),
        );
        let out = t.run_with(&["check", "p.rkd"]);
        assert_eq!(out.code, 1, "{call}: {}", out.stderr);
        assert!(out.stderr.contains(message), "{call}: {}", out.stderr);
    }
}

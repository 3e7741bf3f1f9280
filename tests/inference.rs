//! `eval` runs compressed models compressed: a QLoRA output multiplies with its 4-bit weights
//! (and its adapter beside them), a heavily pruned model with the sparse kernel, and the report
//! says so, with the weights held in memory and the peak RSS.

mod common;
use common::{entry_json, Test};

const PIPELINE: &str = r#"
let data = synthetic_text(seed: 3, classes: 2, train_size: 256, val_size: 128, max_len: 24, vocab_size: 64)
let tiny = bert(layers: 2, hidden: 64, heads: 2, intermediate: 128, vocab_size: 64, max_position: 32)
stage teacher = train(model: tiny, data: data, epochs: 2, batch_size: 16, lr: 3e-3, seed: 1)
stage q = qlora(base: teacher, data: data, rank: 2, alpha: 4, epochs: 1, batch_size: 16, lr: 1e-3)
stage sparse = prune(model: teacher, sparsity: 0.9, scope: "encoder")
stage dense_eval = eval(model: teacher, data: data, batch_size: 16)
stage q_eval = eval(model: q, data: data, batch_size: 16)
stage sparse_eval = eval(model: sparse, data: data, batch_size: 16)
"#;

#[test]
fn eval_reports_how_each_model_was_held_and_multiplied() {
    let t = Test::new().file("p.rkd", PIPELINE);
    let out = t.run_with(&["run", "p.rkd", "-j", "2"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report = |stage: &str| entry_json(&t, "p.rkd", stage, "out/eval.json");
    let (dense, q, sparse) = (report("dense_eval"), report("q_eval"), report("sparse_eval"));
    // The dense model: every weight dense, held as its f32 bytes.
    assert_eq!(dense["memory"]["nf4_weights"], 0);
    assert_eq!(dense["memory"]["sparse_weights"], 0);
    let dense_held = dense["memory"]["weights_in_memory_bytes"].as_u64().unwrap();
    assert_eq!(dense_held, dense["dense_bytes"].as_u64().unwrap());
    // QLoRA: every encoder linear and the pooler in NF4 (2 × 6 + 1), far less memory held, and
    // the same parameter count as the merged dense model it stands for.
    assert_eq!(q["memory"]["nf4_weights"], 13);
    let q_held = q["memory"]["weights_in_memory_bytes"].as_u64().unwrap();
    assert!(q_held < dense_held * 3 / 4, "{q_held} vs {dense_held}");
    assert_eq!(q["params"], dense["params"]);
    // Pruned to 90 %: the encoder's 12 linears on the sparse kernel.
    assert_eq!(sparse["memory"]["sparse_weights"], 12);
    assert!(sparse["memory"]["weights_in_memory_bytes"].as_u64().unwrap() < dense_held);
    for r in [&dense, &q, &sparse] {
        assert!(r["memory"]["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{r}");
        assert!(r["accuracy"].as_f64().unwrap() > 0.0);
    }
    // Per-example predictions come back in example order (batches ran longest sentence first).
    let csv = std::fs::read_to_string(common::entry_of(&t, "p.rkd", "q_eval").join("out/predictions.csv")).unwrap();
    let indices: Vec<usize> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(indices, (0..indices.len()).collect::<Vec<_>>());
}

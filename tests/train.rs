//! `rkd run` on a real (tiny) training pipeline: a BERT trained on the generated text task,
//! then evaluated; the stored artifacts, the cache, and bit-identical weights across runs.

mod common;
use common::{key_of, Test};
use serde_json::Value;
use std::path::{Path, PathBuf};

const PIPELINE: &str = r#"
let data = synthetic_text(seed: 3, classes: 2, train_size: 512, val_size: 256, max_len: 24, vocab_size: 64)
let tiny = bert(layers: 1, hidden: 32, heads: 2, intermediate: 64, vocab_size: 64, max_position: 32)
stage teacher = train(model: tiny, data: data, epochs: 4, batch_size: 16, lr: 3e-3, seed: 1)
stage score = eval(model: teacher, data: data, batch_size: 16)
"#;

fn run_json(t: &Test, extra: &[&str]) -> Value {
    let mut args = vec!["run", "p.rkd", "--json"];
    args.extend_from_slice(extra);
    let out = t.run_with(&args);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr))
}

/// The store entry of each stage, by name, from `plan --json`.
fn entry(t: &Test, store: &str, name: &str) -> PathBuf {
    let out = t.run_with(&["plan", "p.rkd", "--json", "--store", store]);
    let plan: Value = serde_json::from_str(&out.stdout).unwrap();
    t.path().join(store).join("entries").join(key_of(&plan, name))
}

fn json_file(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn trains_evaluates_caches_and_repeats_bit_for_bit() {
    let t = Test::new().file("p.rkd", PIPELINE);
    let res = run_json(&t, &["--store", "a"]);
    assert_eq!(res["ran"], serde_json::json!(["teacher", "score"]));
    assert_eq!(res["failed"], serde_json::json!([]));

    let teacher = entry(&t, "a", "teacher");
    let metrics = json_file(&teacher.join("metrics.json"));
    let acc = metrics["accuracy"].as_f64().unwrap();
    assert!(acc > 0.62, "teacher validation accuracy {acc} (chance 0.5)");
    assert_eq!(metrics["steps"], 128.0);
    let out = teacher.join("out");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
        "train_metrics.json",
    ] {
        assert!(out.join(f).is_file(), "teacher/out/{f} missing");
    }
    let config = json_file(&out.join("config.json"));
    assert_eq!(config["model_type"], "bert");
    assert_eq!(config["vocab_size"], 64);
    assert_eq!(config["id2label"], serde_json::json!({"0": "class_0", "1": "class_1"}));
    let curve = json_file(&out.join("train_metrics.json"));
    assert_eq!(curve["steps"].as_array().unwrap().len(), 128);
    // The curves as CSV too: a header and one row per step / per epoch.
    let steps = std::fs::read_to_string(out.join("steps.csv")).unwrap();
    assert_eq!(steps.lines().next(), Some("step,epoch,loss,lr,grad_norm"));
    assert_eq!(steps.lines().count(), 1 + 128);
    let epochs = std::fs::read_to_string(out.join("epochs.csv")).unwrap();
    assert_eq!(
        epochs.lines().next(),
        Some("epoch,steps,train_loss,validation_loss,validation_accuracy")
    );
    assert_eq!(epochs.lines().count(), 1 + 4);

    let score = entry(&t, "a", "score");
    let eval = json_file(&score.join("metrics.json"));
    // eval reports the test split: validation chose the teacher's epoch, so it is not reported.
    let test_acc = eval["accuracy"].as_f64().unwrap();
    assert!(test_acc > 0.6, "teacher test accuracy {test_acc} (chance 0.5)");
    assert_eq!(eval["params"], metrics["params"]);
    let report = json_file(&score.join("out/eval.json"));
    assert_eq!(report["split"], "test");
    assert_eq!(
        report["selection"],
        serde_json::json!(["epochs selected on the validation split"])
    );
    assert_eq!(report["per_class"].as_array().unwrap().len(), 2);
    assert!(report["latency"]["batch_1_ms_per_example"].as_f64().unwrap() > 0.0);

    // Nothing changed: nothing runs.
    let again = run_json(&t, &["--store", "a"]);
    assert_eq!(again["cached"], serde_json::json!(["teacher", "score"]));
    assert_eq!(again["ran"], serde_json::json!([]));

    // The device is recorded, and is not part of any key.
    assert_eq!(report["latency"]["device"], "cpu");
    assert_eq!(json_file(&teacher.join("meta.json"))["device"], "cpu");
    let runs: Vec<PathBuf> = std::fs::read_dir(t.path().join("a/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("20"))
        .collect();
    assert!(runs.iter().all(|r| json_file(r)["device"] == "cpu"), "{runs:?}");

    // A fresh store, the same machine, the device named: the same keys and weights, byte for byte.
    run_json(&t, &["--store", "b", "--device", "cpu"]);
    assert_eq!(entry(&t, "b", "teacher").file_name(), teacher.file_name());
    let a = std::fs::read(out.join("model.safetensors")).unwrap();
    let b = std::fs::read(entry(&t, "b", "teacher").join("out/model.safetensors")).unwrap();
    assert!(a == b, "two runs of the same pipeline gave different weights");
}

#[test]
fn a_device_that_cannot_be_used_is_a_clear_error_before_anything_runs() {
    let t = Test::new().file("p.rkd", PIPELINE);
    let bad = t.run_with(&["run", "p.rkd", "--device", "tpu"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("unknown device `tpu`: use auto, cpu, cuda or cuda:N"),
        "{}",
        bad.stderr
    );
    let from_env = Test::new()
        .file("p.rkd", PIPELINE)
        .env("RKD_DEVICE", "cuda:x")
        .run_with(&["run", "p.rkd"]);
    assert_eq!(from_env.code, 2, "{}", from_env.stderr);
    if !cfg!(feature = "cuda") {
        let cuda = t.run_with(&["run", "p.rkd", "--device", "cuda"]);
        assert_eq!(cuda.code, 2, "{}", cuda.stderr);
        assert!(
            cuda.stderr.contains("built without CUDA") && cuda.stderr.contains("--features cuda"),
            "{}",
            cuda.stderr
        );
    }
    assert!(!t.path().join(".rkd/entries").exists(), "nothing ran");
}

/// `precision:` — the linear layers in bf16 or f16 (with loss scaling) on f32 weights: it learns on
/// the CPU too, it is part of the key unless it is the default, and f32 written out changes no key.
#[test]
fn mixed_precision_learns_and_is_keyed_unless_f32() {
    let with = |precision: &str| PIPELINE.replace("lr: 3e-3, seed: 1)", &format!("lr: 3e-3, seed: 1{precision})"));
    let key = |src: &str| {
        let t = Test::new().file("p.rkd", src);
        let plan: Value = serde_json::from_str(&t.run_with(&["plan", "p.rkd", "--json"]).stdout).unwrap();
        key_of(&plan, "teacher")
    };
    let plain = key(PIPELINE);
    assert_eq!(
        key(&with(", precision: \"f32\"")),
        plain,
        "f32 written out is the default"
    );
    assert_ne!(key(&with(", precision: \"bf16\"")), plain);
    assert_ne!(key(&with(", precision: \"f16\"")), key(&with(", precision: \"bf16\"")));
    for precision in ["bf16", "f16"] {
        let t = Test::new().file("p.rkd", &with(&format!(", precision: \"{precision}\"")));
        run_json(&t, &[]);
        let teacher = entry(&t, ".rkd", "teacher");
        let acc = json_file(&teacher.join("metrics.json"))["accuracy"].as_f64().unwrap();
        assert!(acc > 0.6, "{precision}: validation accuracy {acc} (chance 0.5)");
        let log = std::fs::read_to_string(teacher.join("log.txt")).unwrap();
        assert!(log.contains(&format!("precision: {precision}")), "{log}");
    }
    let bad = Test::new()
        .file("p.rkd", &with(", precision: \"fp8\""))
        .run_with(&["check", "p.rkd"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("bf16"), "{}", bad.stderr);
}

/// `select: "last"` selects nothing: the validation split stays unseen, so `eval` reports it,
/// and the stored record says the last epoch was kept.
#[test]
fn with_select_last_the_validation_split_can_be_reported() {
    let t = Test::new().file(
        "p.rkd",
        r#"
let data = synthetic_text(seed: 0, classes: 2, train_size: 64, val_size: 32, max_len: 16, vocab_size: 100)
let tiny = bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, vocab_size: 100, max_position: 16)
stage m = train(model: tiny, data: data, epochs: 2, batch_size: 16, select: "last")
stage s = eval(model: m, data: data, split: "validation")
"#,
    );
    let res = run_json(&t, &["--store", "a"]);
    assert_eq!(res["ran"], serde_json::json!(["m", "s"]));
    let m = entry(&t, "a", "m");
    let record = json_file(&m.join("out/train_metrics.json"));
    assert_eq!(record["kept_epoch"], "last");
    assert_eq!(record["selection_split"], Value::Null);
    let metrics = json_file(&m.join("metrics.json"));
    assert!(metrics.get("best_epoch").is_none(), "{metrics}");
    let report = json_file(&entry(&t, "a", "s").join("out/eval.json"));
    assert_eq!(report["split"], "validation");
    assert_eq!(report["selection"], serde_json::json!([]));
}

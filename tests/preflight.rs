//! `rkd run` (and `rkd check`) check what only a checkpoint's config.json tells before any stage starts: a
//! `pretrained(path:)` BERT whose positions are fewer than the data's `max_len` stops the run
//! before the first stage, with the diagnostic `rkd check` gives for an architecture.

mod common;
use candle_core::Device;
use common::Test;
use rkd::data::Tokenizer;
use rkd::ml::checkpoint::Pretrained;
use rkd::ml::{BertConfig, ModelConfig};
use std::path::Path;

/// A tiny BERT checkpoint (vocabulary 64, 2 labels, `max_position` positions) with its
/// tokenizer, in `dir`.
fn write_bert(dir: &Path, max_position: usize) {
    let mut cfg = BertConfig::new(64, 16, 1, 2, 32, 2);
    cfg.max_position_embeddings = max_position;
    Pretrained::random(&ModelConfig::Bert(cfg), 7, &Device::Cpu)
        .unwrap()
        .save(dir)
        .unwrap();
    Tokenizer::identity(64).unwrap().save(dir).unwrap();
}

fn pipeline(max_len: usize) -> String {
    format!(
        "let data = synthetic_text(seed: 1, classes: 2, train_size: 64, val_size: 32, max_len: {max_len}, vocab_size: 64)\n\
         stage first = exec(cmd: \"touch ran.txt\")\n\
         stage tuned = train(model: pretrained(path: \"ckpt\"), data: data, epochs: 1, batch_size: 16)\n"
    )
}

#[test]
fn a_checkpoint_with_too_few_positions_stops_the_run_before_any_stage() {
    let t = Test::new().file("p.rkd", &pipeline(32));
    write_bert(&t.path().join("ckpt"), 16);
    // The compiler cannot know the checkpoint's size: `rkd check` reads its config.json...
    let check = t.run_with(&["check", "p.rkd"]);
    assert_eq!(check.code, 1, "{}", check.stderr);
    assert!(
        check.stderr.contains("has 16 positions (max_position)"),
        "{}",
        check.stderr
    );
    // ...and so does the run, before it starts anything.
    let run = t.run_with(&["run", "p.rkd"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("`data` has max_len 32, but `pretrained(path: \"ckpt\")` has 16 positions (max_position)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("help: use synthetic_text(max_len: 16, ..)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("p.rkd:3:"),
        "points at the model argument: {}",
        run.stderr
    );
    assert!(!t.path().join("ran.txt").exists(), "no stage ran");
    assert!(
        !t.path().join(".rkd/entries").exists()
            || std::fs::read_dir(t.path().join(".rkd/entries"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn a_checkpoint_that_fits_runs() {
    let t = Test::new().file("p.rkd", &pipeline(16));
    write_bert(&t.path().join("ckpt"), 16);
    let run = t.run_with(&["run", "p.rkd"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(t.path().join("ran.txt").exists());
}

#[test]
fn a_cached_hub_model_is_checked_once_for_the_stages_trained_from_it() {
    // hf-hub's cache layout under HF_HOME/hub: refs/<revision> names the snapshot.
    let t = Test::new().file(
        "p.rkd",
        "let imgs = synthetic_images(seed: 1, classes: 3, train_size: 8, val_size: 4)\n\
         stage tuned = train(model: hf(repo: \"someone/vit\"), data: imgs)\n\
         stage score = eval(model: tuned, data: imgs)\n",
    );
    let repo = t.path().join("hf/hub/models--someone--vit");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc0abc0abc0abc0abc0abc0abc0abc0abc0abc0").unwrap();
    let snap = repo.join("snapshots/abc0abc0abc0abc0abc0abc0abc0abc0abc0abc0");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(
        snap.join("config.json"),
        r#"{"model_type": "vit", "image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}"#,
    )
    .unwrap();
    std::fs::write(snap.join("model.safetensors"), "").unwrap();
    let hf_home = t.path().join("hf");
    let run = t
        .env("HF_HOME", hf_home.to_str().unwrap())
        .env("HF_HUB_OFFLINE", "1")
        .args(&["run", "p.rkd"])
        .expect(1);
    // The model is named with the commit the lock pinned; the long line is wrapped.
    let unwrapped = run.stderr.replace("\n  │ ", " ");
    assert!(
        unwrapped
            .contains("`hf(repo: \"someone/vit\", revision: \"abc0abc0abc0abc0abc0abc0abc0abc0abc0abc0\")` expects 224×224 images, but `imgs` gives 32×32"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("help: use synthetic_images(image_size: 224, ..)"),
        "{}",
        run.stderr
    );
    // One problem: the eval of the stage trained from it is the same one, not reported twice.
    assert!(run.stderr.contains("p.rkd has 1 problem\n"), "{}", run.stderr);
}

//! Your own data: `text_table` (CSV, TSV, JSON Lines, Parquet; sentence pairs), `image_table`
//! (Parquet with embedded images) and `hf_dataset` (the Hub's files, from the Hugging Face cache
//! offline). The same rows in every format train to identical weights; string labels become the
//! model's classes in sorted order.

mod common;
use common::parquet::{write as write_parquet, Col};
use common::{entry_json, entry_of, Test};

/// 240 short reviews, two classes, deterministic: (text, label).
fn rows() -> Vec<(String, &'static str)> {
    let good = ["great", "wonderful", "fun", "moving", "brilliant", "lovely"];
    let bad = ["boring", "awful", "dull", "tedious", "clumsy", "weak"];
    let nouns = ["film", "story", "cast", "ending", "score", "script"];
    (0..240)
        .map(|i| {
            let positive = (i * 7 + i / 5) % 2 == 0;
            let words = if positive { &good } else { &bad };
            let text = format!(
                "the {} was {} and {}, \"really\" {}",
                nouns[i % 6],
                words[i % 6],
                words[(i / 6) % 6],
                nouns[(i / 3) % 6]
            );
            (text, if positive { "positive" } else { "negative" })
        })
        .collect()
}

fn csv(rows: &[(String, &str)]) -> String {
    let mut s = String::from("id,review,sentiment\n");
    for (i, (t, l)) in rows.iter().enumerate() {
        s.push_str(&format!("{i},\"{}\",{l}\n", t.replace('"', "\"\"")));
    }
    s
}

fn jsonl(rows: &[(String, &str)]) -> String {
    rows.iter()
        .map(|(t, l)| serde_json::json!({"sentiment": l, "review": t}).to_string() + "\n")
        .collect()
}

/// The rows as the Hub's Parquet: the text, and the label as a string column.
fn parquet(path: &std::path::Path, rows: &[(String, &str)], per_group: usize) {
    write_parquet(
        path,
        &[
            Col::Int("idx", (0..rows.len() as i64).collect()),
            Col::Str("review", rows.iter().map(|(t, _)| t.clone()).collect()),
            Col::Str("sentiment", rows.iter().map(|(_, l)| l.to_string()).collect()),
        ],
        per_group,
    );
}

fn pipeline(dir: &str) -> String {
    pipeline_from(&format!("text_table(path: \"{dir}\""))
}

/// The pipeline on a dataset call opened by `call` (its arguments are appended).
fn pipeline_from(call: &str) -> String {
    format!(
        r#"let tiny = bert(layers: 1, hidden: 32, heads: 2, intermediate: 64, max_position: 32)
let reviews = {call}, text: "review", label: "sentiment", max_len: 24, vocab_size: 200)
stage model = train(model: tiny, data: reviews, epochs: 10, batch_size: 16, lr: 3e-3, seed: 1)
stage score = eval(model: model, data: reviews, split: "test", batch_size: 16)
"#
    )
}

#[test]
fn the_same_rows_as_csv_json_lines_parquet_and_a_cached_hub_dataset_train_identical_weights() {
    let rows = rows();
    let (train, rest) = rows.split_at(160);
    let (dev, test) = rest.split_at(40);
    let t = Test::new()
        .file("csv/train.csv", &csv(train))
        .file("csv/validation.csv", &csv(dev))
        .file("csv/test.csv", &csv(test))
        // The Hub's layout: a data/ folder, the training split in shards.
        .file("jsonl/data/train-00000-of-00002.jsonl", &jsonl(&train[..100]))
        .file("jsonl/data/train-00001-of-00002.jsonl", &jsonl(&train[100..]))
        .file("jsonl/data/validation.jsonl", &jsonl(dev))
        .file("jsonl/data/test.jsonl", &jsonl(test))
        .file("a.rkd", &pipeline("csv"))
        .file("b.rkd", &pipeline("jsonl"))
        .file("c.rkd", &pipeline("parquet"))
        .file(
            "d.rkd",
            &pipeline_from("hf_dataset(repo: \"someone/reviews\", revision: \"v1\""),
        );
    // Parquet in row groups of 64 rows: the reader crosses row-group boundaries.
    parquet(&t.path().join("parquet/train.parquet"), train, 64);
    parquet(&t.path().join("parquet/validation.parquet"), dev, 64);
    parquet(&t.path().join("parquet/test.parquet"), test, 64);
    // A Hugging Face cache as hf-hub lays it out: refs/<revision> names the snapshot.
    let hf = t.path().join("hf");
    let repo = hf.join("hub/datasets--someone--reviews");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/v1"), "0123abcd0123abcd0123abcd0123abcd0123abcd").unwrap();
    let snapshot = repo.join("snapshots/0123abcd0123abcd0123abcd0123abcd0123abcd/data");
    parquet(&snapshot.join("train-00000-of-00001.parquet"), train, 1000);
    parquet(&snapshot.join("validation-00000-of-00001.parquet"), dev, 1000);
    parquet(&snapshot.join("test-00000-of-00001.parquet"), test, 1000);
    let t = t.env("HF_HOME", hf.to_str().unwrap()).env("HF_HUB_OFFLINE", "1");
    let mut weights = Vec::new();
    for file in ["a.rkd", "b.rkd", "c.rkd", "d.rkd"] {
        let out = t.run_with(&["run", file, "--json", "-j", "1"]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        let model = entry_of(&t, file, "model").join("out");
        weights.push(std::fs::read(model.join("model.safetensors")).unwrap());
        let config = entry_json(&t, file, "model", "out/config.json");
        assert_eq!(
            config["id2label"],
            serde_json::json!({"0": "negative", "1": "positive"})
        );
        let acc = entry_json(&t, file, "score", "metrics.json")["accuracy"]
            .as_f64()
            .unwrap();
        assert!(acc > 0.8, "{file}: test accuracy {acc}");
    }
    for (i, format) in ["JSON Lines", "Parquet", "the cached Hub dataset"].iter().enumerate() {
        assert!(
            weights[0] == weights[i + 1],
            "the same rows in CSV and {format} trained different weights"
        );
    }
}

#[test]
fn a_hub_dataset_not_in_the_cache_offline_is_a_clear_error() {
    let t = Test::new().file("p.rkd", &pipeline_from("hf_dataset(repo: \"someone/missing\""));
    let hf = t.path().join("hf");
    let out = t
        .env("HF_HOME", hf.to_str().unwrap())
        .env("HF_HUB_OFFLINE", "1")
        .run_with(&["run", "p.rkd"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("cannot resolve dataset someone/missing@main to a commit")
            && out.stderr.contains("HF_HUB_OFFLINE is set"),
        "{}",
        out.stderr
    );
}

/// Pairs whose label is the polarity of the second text (the first is a distraction): a model
/// must read past the first [SEP] to learn it.
fn pairs() -> Vec<(String, String, &'static str)> {
    rows()
        .into_iter()
        .enumerate()
        .map(|(i, (text, label))| {
            let other = [
                "the film was shown on a tuesday",
                "a story about a family",
                "the cast was large",
            ];
            (other[i % 3].to_string(), text, label)
        })
        .collect()
}

#[test]
fn sentence_pairs_train_distil_and_evaluate() {
    let pairs = pairs();
    let jsonl = |rows: &[(String, String, &str)]| -> String {
        rows.iter()
            .map(|(a, b, l)| serde_json::json!({"premise": a, "hypothesis": b, "label": l}).to_string() + "\n")
            .collect()
    };
    let (train, rest) = pairs.split_at(160);
    let (dev, test) = rest.split_at(40);
    let t = Test::new()
        .file("pairs/train.jsonl", &jsonl(train))
        .file("pairs/validation.jsonl", &jsonl(dev))
        .file("pairs/test.jsonl", &jsonl(test))
        .file(
            "p.rkd",
            r#"let data = text_table(path: "pairs", text: "premise", text_pair: "hypothesis", label: "label", max_len: 32, vocab_size: 200)
stage teacher = train(model: bert(layers: 1, hidden: 32, heads: 2, intermediate: 64, max_position: 32), data: data, epochs: 10, batch_size: 16, lr: 3e-3, seed: 1)
stage student = distill(teacher: teacher, student: bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 32), data: data, epochs: 10, batch_size: 16, lr: 3e-3, seed: 1)
stage score = eval(model: student, data: data, split: "test", batch_size: 16)
"#,
        );
    let out = t.run_with(&["run", "p.rkd", "--json", "-j", "1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let acc = entry_json(&t, "p.rkd", "score", "metrics.json")["accuracy"]
        .as_f64()
        .unwrap();
    assert!(acc > 0.8, "a student distilled on sentence pairs: test accuracy {acc}");
    // The table was read and tokenised once, by the teacher (which trained the vocabulary);
    // its predictions, the student (which brings the teacher's tokenizer) and eval read it.
    let log = |stage: &str| std::fs::read_to_string(entry_of(&t, "p.rkd", stage).join("log.txt")).unwrap();
    assert!(
        log("teacher").contains("kept in the store for the next stage"),
        "{}",
        log("teacher")
    );
    for stage in ["teacher/predictions", "student", "score"] {
        assert!(
            log(stage).contains("prepared once, read from the store"),
            "{stage}: {}",
            log(stage)
        );
    }
    // The prepared copies are a cache: gc removes them, and nothing needs them again. The
    // teacher kept one copy under two keys (its own vocabulary's, the trained tokenizer's), each
    // with its hash.
    let prepared = t.path().join(".rkd/cache/prepared");
    assert_eq!(std::fs::read_dir(&prepared).unwrap().count(), 4);
    let gc = t.run_with(&["gc", "--keep", "p.rkd"]);
    // Four prepared copies and the pipeline's manifest cache.
    assert!(gc.stdout.contains("and 5 cache files"), "{}", gc.stdout);
    assert_eq!(std::fs::read_dir(&prepared).unwrap().count(), 0);
    let again = t.run_with(&["run", "p.rkd", "--json", "-j", "1"]);
    let again: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(
        common::sorted(&again["cached"]),
        ["score", "student", "teacher", "teacher/predictions"]
    );
}

/// A 16×16 PNG: reddish for class "angular_leaf_spot", greenish for "healthy", with noise.
fn leaf(i: usize, healthy: bool) -> Vec<u8> {
    let img = image::RgbImage::from_fn(16, 16, |x, y| {
        let noise = ((i * 31 + x as usize * 7 + y as usize * 13) % 40) as u8;
        if healthy {
            image::Rgb([30 + noise, 160 + noise, 40])
        } else {
            image::Rgb([170 + noise, 60, 30 + noise])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn parquet_with_embedded_images_trains_a_vit() {
    let t = Test::new().file(
        "p.rkd",
        r#"let beans = image_table(path: "beans", image: "image", label: "labels", image_size: 16, augment: false)
stage model = train(model: vit(layers: 1, hidden: 32, heads: 2, patch: 8, image_size: 16), data: beans, epochs: 8, batch_size: 8, lr: 3e-3, seed: 1)
stage score = eval(model: model, data: beans, split: "test", batch_size: 8)
"#,
    );
    // The Hub's Beans layout: data/<split>-*.parquet, an image struct and an integer label.
    for (split, n) in [("train", 48), ("validation", 16), ("test", 16)] {
        let images: Vec<(Vec<u8>, String)> = (0..n)
            .map(|i| (leaf(i, i % 2 == 0), format!("{split}/{i}.png")))
            .collect();
        write_parquet(
            &t.path().join(format!("beans/data/{split}-00000-of-00001.parquet")),
            &[
                Col::Image("image", images),
                Col::Int("labels", (0..n as i64).map(|i| i % 2).collect()),
            ],
            20,
        );
    }
    let out = t.run_with(&["run", "p.rkd", "--json", "-j", "1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let acc = entry_json(&t, "p.rkd", "score", "metrics.json")["accuracy"]
        .as_f64()
        .unwrap();
    assert!(acc > 0.9, "a ViT on Parquet images: test accuracy {acc}");
}

#[test]
fn a_table_without_the_named_column_fails_naming_the_file_and_the_columns() {
    let t = Test::new().file("t/train.csv", "text,label\nfine,1\nbad,0\n").file(
        "p.rkd",
        "stage m = train(model: bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 16), \
             data: text_table(path: \"t\", text: \"review\", label: \"label\", max_len: 8), epochs: 1)\n",
    );
    // Both `rkd run` (before any stage starts) and `rkd check` find it.
    for command in ["run", "check"] {
        let out = t.run_with(&[command, "p.rkd"]);
        assert_eq!(out.code, 1);
        assert!(
            out.stderr
                .contains("t/train.csv:1: no column `review`; the columns are text, label"),
            "{}",
            out.stderr
        );
        assert!(!t.path().join(".rkd/entries").exists(), "nothing ran");
    }
    // A format that does not exist is a compile error.
    std::fs::write(
        t.path().join("q.rkd"),
        "let d = text_table(path: \"t\", text: \"text\", label: \"label\", format: \"xlsx\")\n\
         stage m = train(model: bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 128), data: d, epochs: 1)\n",
    )
    .unwrap();
    let bad = t.run_with(&["check", "q.rkd"]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("csv") && bad.stderr.contains("jsonl"),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_cached_hub_dataset_is_checked_before_anything_runs() {
    let t = Test::new().file("p.rkd", &pipeline_from("hf_dataset(repo: \"someone/reviews\""));
    let repo = t.path().join("hf/hub/datasets--someone--reviews");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "beef42beef42beef42beef42beef42beef42beef").unwrap();
    // The cached files name the text column `sentence`, not `review`.
    let rows = rows();
    write_parquet(
        &repo.join("snapshots/beef42beef42beef42beef42beef42beef42beef/data/train-00000-of-00001.parquet"),
        &[
            Col::Str("sentence", rows.iter().map(|(t, _)| t.clone()).collect()),
            Col::Str("sentiment", rows.iter().map(|(_, l)| l.to_string()).collect()),
        ],
        100,
    );
    let hf = t.path().join("hf");
    let t = t.env("HF_HOME", hf.to_str().unwrap()).env("HF_HUB_OFFLINE", "1");
    let out = t.run_with(&["check", "p.rkd"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    // The message is wrapped at the cache's long snapshot path.
    let unwrapped = out.stderr.replace("\n  │ ", " ");
    assert!(
        unwrapped.contains("row 1: no column `review`; the columns are sentence, sentiment"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_datasets_key_is_the_files_it_reads_wherever_the_folder_is() {
    let rows = rows();
    let key = |t: &Test, file: &str| -> String {
        let out = t.run_with(&["plan", file, "--json"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        common::key_of(&serde_json::from_str(&out.stdout).unwrap(), "model")
    };
    let t = Test::new()
        .file("reviews/train.csv", &csv(&rows[..160]))
        .file("reviews/validation.csv", &csv(&rows[160..200]))
        .file("reviews/test.csv", &csv(&rows[200..]))
        .file("a.rkd", &pipeline("reviews"))
        .file("b.rkd", &pipeline("moved/here"));
    let before = key(&t, "a.rkd");

    // Files that are not read change nothing: a README, notes, a table of no split.
    std::fs::write(t.path().join("reviews/README.md"), "# reviews\n").unwrap();
    std::fs::write(t.path().join("reviews/notes.csv"), "a,b\n1,2\n").unwrap();
    assert_eq!(key(&t, "a.rkd"), before);

    // Moved and renamed, the same files: the same key.
    std::fs::create_dir(t.path().join("moved")).unwrap();
    std::fs::rename(t.path().join("reviews"), t.path().join("moved/here")).unwrap();
    assert_eq!(key(&t, "b.rkd"), before);

    // A file that is read changed: a new key.
    std::fs::write(t.path().join("moved/here/test.csv"), csv(&rows[199..])).unwrap();
    assert_ne!(key(&t, "b.rkd"), before);
}

/// A `vocab_size` written in `bert(...)` that the table's tokenizer contradicts fails the stage
/// before training, saying what to write; left out, the table's vocabulary sizes the model.
#[test]
fn a_written_vocabulary_the_tables_tokenizer_contradicts_fails_the_stage() {
    let rows: String = (0..16)
        .map(|i| format!("{} film,{}\n", ["good", "bad"][i % 2], 1 - i % 2))
        .collect();
    let model = "bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 16";
    let t = Test::new().file("t/train.csv", &format!("text,label\n{rows}")).file(
        "p.rkd",
        &format!(
            "let d = text_table(path: \"t\", text: \"text\", label: \"label\", max_len: 8)\n\
                 stage m = train(model: {model}, vocab_size: 500), data: d, epochs: 1, select: \"last\")\n\
                 stage n = train(model: {model}), data: d, epochs: 1, select: \"last\")\n"
        ),
    );
    let out = t.run_with(&["run", "p.rkd", "--keep-going"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("sets vocab_size 500, but the data's tokenizer has ")
            && out.stderr.contains("or leave vocab_size out"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("1 ran, 0 cached, 1 failed"), "{}", out.stdout);
}

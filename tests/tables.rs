//! `text_table`: your own labelled text in CSV, TSV or JSON Lines. The same rows in two formats
//! train to identical weights; string labels become the model's classes in sorted order.

mod common;
use common::{key_of, Test};
use serde_json::Value;

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

fn pipeline(dir: &str) -> String {
    format!(
        r#"let tiny = bert(layers: 1, hidden: 32, heads: 2, intermediate: 64, max_position: 32)
let reviews = text_table(path: "{dir}", text: "review", label: "sentiment", max_len: 24, vocab_size: 200)
stage model = train(model: tiny, data: reviews, epochs: 10, batch_size: 16, lr: 3e-3, seed: 1)
stage score = eval(model: model, data: reviews, split: "test", batch_size: 16)
"#
    )
}

#[test]
fn the_same_rows_as_csv_and_json_lines_train_identical_weights() {
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
        .file("b.rkd", &pipeline("jsonl"));
    let mut weights = Vec::new();
    for file in ["a.rkd", "b.rkd"] {
        let out = t.run_with(&["run", file, "--json", "-j", "1"]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        let plan: Value = serde_json::from_str(&t.run_with(&["plan", file, "--json"]).stdout).unwrap();
        let entry = t.path().join(".rkd/entries");
        let model = entry.join(key_of(&plan, "model")).join("out");
        weights.push(std::fs::read(model.join("model.safetensors")).unwrap());
        let config: Value = serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
        assert_eq!(
            config["id2label"],
            serde_json::json!({"0": "negative", "1": "positive"})
        );
        let metrics: Value =
            serde_json::from_slice(&std::fs::read(entry.join(key_of(&plan, "score")).join("metrics.json")).unwrap())
                .unwrap();
        let acc = metrics["accuracy"].as_f64().unwrap();
        assert!(acc > 0.8, "{file}: test accuracy {acc}");
    }
    assert!(
        weights[0] == weights[1],
        "the same rows in CSV and JSON Lines trained different weights"
    );
}

#[test]
fn a_table_without_the_named_column_fails_naming_the_file_and_the_columns() {
    let t = Test::new().file("t/train.csv", "text,label\nfine,1\nbad,0\n").file(
        "p.rkd",
        "stage m = train(model: bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 16), \
             data: text_table(path: \"t\", text: \"review\", label: \"label\", max_len: 8), epochs: 1)\n",
    );
    let out = t.run_with(&["run", "p.rkd"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("train.csv:1: no column `review`; the columns are text, label"),
        "{}",
        out.stderr
    );
    // A format that does not exist is a compile error.
    let bad = t.run_with(&["check", "p.rkd"]);
    assert_eq!(bad.code, 0, "{}", bad.stderr);
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

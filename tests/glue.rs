//! `glue(task:)`: the GLUE tasks in GLUE's own TSV files and in the Hub's Parquet (read from a
//! Hugging Face cache laid out by the test, offline), each scored by its metric: CoLA by
//! Matthews correlation, MRPC by F1, MNLI on its matched and mismatched validation sets.

mod common;
use common::parquet::{write as write_parquet, Col};
use common::{entry_json, entry_of, Test};
use serde_json::Value;

/// Sentences whose label (1 acceptable, 0 not) follows from their words, deterministically,
/// with every sixth label flipped so that the model is not perfect and MCC is not trivially 1.
fn sentences(n: usize, offset: usize) -> Vec<(String, u32)> {
    let good = [
        "the cat sat on the mat",
        "she reads books",
        "we walked home",
        "they sang loudly",
    ];
    let bad = [
        "cat the mat sat on",
        "books she reads reads",
        "home walked we we",
        "loudly sang they the",
    ];
    (0..n)
        .map(|k| {
            let i = k + offset;
            let ok = (i * 5 + i / 3).is_multiple_of(2);
            let text = if ok { good[i % 4] } else { bad[i % 4] };
            let label = u32::from(ok) ^ u32::from(i % 6 == 5);
            (format!("{text} {}", ["today", "again", "now"][i % 3]), label)
        })
        .collect()
}

/// CoLA as GLUE ships it: no header; source, label, original mark, sentence.
fn cola_tsv(rows: &[(String, u32)]) -> String {
    rows.iter()
        .map(|(t, l)| format!("gj04\t{l}\t{}\t{t}\n", if *l == 0 { "*" } else { "" }))
        .collect()
}

fn metrics(t: &Test, file: &str, stage: &str) -> Value {
    entry_json(t, file, stage, "metrics.json")
}

/// Matthews correlation of (label, predicted) pairs, two classes, by the textbook formula.
fn mcc(pairs: &[(u32, u32)]) -> f64 {
    let count = |l: u32, p: u32| pairs.iter().filter(|&&x| x == (l, p)).count() as f64;
    let (tp, tn, fp, fn_) = (count(1, 1), count(0, 0), count(0, 1), count(1, 0));
    let d = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
    if d == 0.0 {
        0.0
    } else {
        (tp * tn - fp * fn_) / d
    }
}

/// The (label, predicted) columns of an eval's `predictions.csv`.
fn predictions(out_dir: &std::path::Path) -> Vec<(f64, f64)> {
    let csv = std::fs::read_to_string(out_dir.join("predictions.csv")).unwrap();
    csv.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
            (f[1], f[2])
        })
        .collect()
}

const TINY: &str = "bert(layers: 1, hidden: 32, heads: 2, intermediate: 64, max_position: 32)";

#[test]
fn cola_is_scored_by_matthews_correlation_in_eval_and_report() {
    let t = Test::new()
        .file("cola/train.tsv", &cola_tsv(&sentences(192, 0)))
        .file("cola/dev.tsv", &cola_tsv(&sentences(60, 1000)))
        .file(
            "p.rkd",
            &format!(
                "let cola = glue(task: \"cola\", path: \"cola\", max_len: 16, vocab_size: 120, holdout: 0.1)\n\
                 stage m = train(model: {TINY}, data: cola, epochs: 6, batch_size: 16, lr: 3e-3, seed: 1)\n\
                 stage score = eval(model: m, data: cola, batch_size: 16)\n\
                 stage r = report(models: [m], data: cola, baseline: m)\n"
            ),
        );
    let out = t.run_with(&["run", "p.rkd", "-j", "1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let m = metrics(&t, "p.rkd", "score");
    let out_dir = entry_of(&t, "p.rkd", "score").join("out");
    let pairs: Vec<(u32, u32)> = predictions(&out_dir)
        .into_iter()
        .map(|(l, p)| (l as u32, p as u32))
        .collect();
    assert_eq!(pairs.len(), 60);
    let by_hand = mcc(&pairs);
    assert!((m["mcc"].as_f64().unwrap() - by_hand).abs() < 1e-9, "{m} vs {by_hand}");
    assert!(by_hand > 0.3, "the model learned something: MCC {by_hand}");
    let eval: Value = serde_json::from_slice(&std::fs::read(out_dir.join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["mcc"], m["mcc"]);
    // The report shows the task's metric beside accuracy.
    let report_dir = entry_of(&t, "p.rkd", "r").join("out");
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("| Accuracy | MCC |"), "{md}");
    let json: Value = serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["score_name"], "MCC");
    // Its plots show the task's metric.
    assert!(md.contains("![parameters vs MCC](params_vs_accuracy.svg)"), "{md}");
    let svg = std::fs::read_to_string(report_dir.join("params_vs_accuracy.svg")).unwrap();
    assert!(svg.contains("Matthews correlation (× 100)"), "the y axis is MCC");
    // GLUE hides its test labels: asking for the test split is refused before anything runs.
    std::fs::write(
        t.path().join("q.rkd"),
        format!(
            "let cola = glue(task: \"cola\", path: \"cola\", max_len: 16)\n\
             stage m = train(model: {TINY}, data: cola)\n\
             stage s = eval(model: m, data: cola, split: \"test\")\n"
        ),
    )
    .unwrap();
    let refused = t.run_with(&["check", "q.rkd"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("has no test split (GLUE hides the labels"),
        "{}",
        refused.stderr
    );
}

/// Paraphrase pairs, equivalent (1) or not: the second sentence's wording gives it away.
fn paraphrases(n: usize, offset: usize) -> Vec<(String, String, i64)> {
    let subjects = ["the bank", "a company", "the court", "the team"];
    (0..n)
        .map(|k| {
            let i = k + offset;
            let same = (i * 7 + i / 4).is_multiple_of(2);
            let a = format!("{} said on monday", subjects[i % 4]);
            let b = if same {
                format!("indeed {} said it monday", subjects[i % 4])
            } else {
                format!("however {} denied it friday", subjects[(i + 1) % 4])
            };
            (a, b, i64::from(same))
        })
        .collect()
}

fn mrpc_parquet(path: &std::path::Path, rows: &[(String, String, i64)]) {
    write_parquet(
        path,
        &[
            Col::Str("sentence1", rows.iter().map(|r| r.0.clone()).collect()),
            Col::Str("sentence2", rows.iter().map(|r| r.1.clone()).collect()),
            Col::Int("label", rows.iter().map(|r| r.2).collect()),
            Col::Int("idx", (0..rows.len() as i64).collect()),
        ],
        50,
    );
}

#[test]
fn mrpc_from_the_hubs_parquet_offline_is_scored_by_f1() {
    let t = Test::new().file(
        "p.rkd",
        &format!(
            "let mrpc = glue(task: \"mrpc\", max_len: 24, vocab_size: 120, holdout: 0.1)\n\
             stage m = train(model: {TINY}, data: mrpc, epochs: 8, batch_size: 16, lr: 3e-3, seed: 1)\n\
             stage score = eval(model: m, data: mrpc, batch_size: 16)\n"
        ),
    );
    // nyu-mll/glue in a Hugging Face cache: one folder per task.
    let repo = t.path().join("hf/hub/datasets--nyu-mll--glue");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "cafe01cafe01cafe01cafe01cafe01cafe01cafe").unwrap();
    let task = repo.join("snapshots/cafe01cafe01cafe01cafe01cafe01cafe01cafe/mrpc");
    mrpc_parquet(&task.join("train-00000-of-00001.parquet"), &paraphrases(160, 0));
    mrpc_parquet(&task.join("validation-00000-of-00001.parquet"), &paraphrases(48, 500));
    // The Hub's test labels are -1: never read.
    mrpc_parquet(
        &task.join("test-00000-of-00001.parquet"),
        &[("a".into(), "b".into(), -1)],
    );
    let hf = t.path().join("hf");
    let t = t.env("HF_HOME", hf.to_str().unwrap()).env("HF_HUB_OFFLINE", "1");
    let out = t.run_with(&["run", "p.rkd", "-j", "1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let m = metrics(&t, "p.rkd", "score");
    assert_eq!(m["examples"], 48.0);
    let (acc, f1) = (m["accuracy"].as_f64().unwrap(), m["f1"].as_f64().unwrap());
    assert!(acc > 0.8 && f1 > 0.8, "accuracy {acc}, F1 {f1}");
}

#[test]
fn mnli_trains_once_and_is_evaluated_on_matched_and_mismatched() {
    let header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n";
    let labels = ["entailment", "neutral", "contradiction"];
    let rows = |n: usize, offset: usize| -> String {
        let mut s = String::from(header);
        for k in 0..n {
            let i = k + offset;
            let l = (i * 5 + i / 7) % 3;
            let hyp = ["yes certainly", "perhaps maybe", "never wrong"][l];
            s.push_str(&format!(
                "{i}\t0\t0e\tgov\t-\t-\t-\t-\tthe man spoke {}\t{hyp}\t{}\t{}\n",
                i % 5,
                labels[l],
                labels[l]
            ));
        }
        s
    };
    let t = Test::new()
        .file("mnli/train.tsv", &rows(180, 0))
        .file("mnli/dev_matched.tsv", &rows(30, 1000))
        .file("mnli/dev_mismatched.tsv", &rows(36, 2000))
        .file(
            "p.rkd",
            &format!(
                "let mnli = glue(task: \"mnli\", path: \"mnli\", max_len: 24, vocab_size: 120, holdout: 0.1)\n\
                 stage m = train(model: {TINY}, data: mnli, epochs: 15, batch_size: 16, lr: 1e-3, seed: 1)\n\
                 stage matched = eval(model: m, data: mnli, batch_size: 16)\n\
                 stage mismatched = eval(model: m, data: glue(task: \"mnli_mismatched\", path: \"mnli\", max_len: 24, vocab_size: 120), batch_size: 16)\n"
            ),
        );
    let out = t.run_with(&["run", "p.rkd", "-j", "1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let matched = metrics(&t, "p.rkd", "matched");
    let mismatched = metrics(&t, "p.rkd", "mismatched");
    assert_eq!(
        (matched["examples"].as_f64(), mismatched["examples"].as_f64()),
        (Some(30.0), Some(36.0))
    );
    for m in [&matched, &mismatched] {
        assert!(m["accuracy"].as_f64().unwrap() > 0.9, "{m}");
        assert!(m.get("f1").is_none() && m.get("mcc").is_none(), "{m}");
    }
}

/// Pearson correlation, by the textbook formula.
fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let syy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    sxy / (sxx * syy).sqrt()
}

#[test]
fn stsb_is_a_regression_that_trains_distils_and_is_scored_by_correlation() {
    let header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n";
    // The second sentence's first word says how similar the pair is; the score adds a little
    // deterministic noise.
    let words = ["unrelated", "barely", "somewhat", "mostly", "nearly", "exactly"];
    let rows = |n: usize, offset: usize| -> String {
        let mut s = String::from(header);
        for k in 0..n {
            let i = k + offset;
            let level = (i * 7 + i / 5) % 6;
            let score = level as f64 + ((i % 3) as f64 - 1.0) * 0.2;
            let score = score.clamp(0.0, 5.0);
            s.push_str(&format!(
                "{i}\tmain\tx\t2012\t{i}\tnone\tnone\ta man plays music {}\t{} the same thing\t{score:.3}\n",
                i % 4,
                words[level]
            ));
        }
        s
    };
    let t = Test::new()
        .file("stsb/train.tsv", &rows(240, 0))
        .file("stsb/dev.tsv", &rows(60, 1000))
        .file(
            "p.rkd",
            &format!(
                "let stsb = glue(task: \"stsb\", path: \"stsb\", max_len: 24, vocab_size: 120, holdout: 0.1)\n\
                 stage teacher = train(model: {TINY}, data: stsb, epochs: 15, batch_size: 16, lr: 1e-3, seed: 1)\n\
                 stage student = distill(teacher: teacher, student: bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 32), data: stsb, epochs: 15, batch_size: 16, lr: 3e-3, seed: 1)\n\
                 stage teacher_score = eval(model: teacher, data: stsb, batch_size: 16)\n\
                 stage student_score = eval(model: student, data: stsb, batch_size: 16)\n\
                 stage r = report(models: [teacher, student], data: stsb, baseline: teacher)\n"
            ),
        );
    let out = t.run_with(&["run", "p.rkd", "-j", "1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("selection Pearson"), "{}", out.stdout);
    for stage in ["teacher_score", "student_score"] {
        let m = metrics(&t, "p.rkd", stage);
        assert!(m.get("accuracy").is_none(), "a regression has no accuracy: {m}");
        let p = m["pearson"].as_f64().unwrap();
        assert!(p > 0.8, "{stage}: Pearson {p}");
        // The reported correlation is the one of the predictions it wrote.
        let dir = entry_of(&t, "p.rkd", stage).join("out");
        let csv = std::fs::read_to_string(dir.join("predictions.csv")).unwrap();
        assert!(csv.starts_with("index,label,predicted\n"), "{csv}");
        let (y, x): (Vec<f64>, Vec<f64>) = predictions(&dir).into_iter().unzip();
        assert_eq!(x.len(), 60);
        assert!(
            (pearson(&x, &y) - p).abs() < 1e-4,
            "{stage}: {} vs {p}",
            pearson(&x, &y)
        );
        assert!(m["spearman"].as_f64().unwrap() > 0.7, "{m}");
    }
    // The model has one output, as Hugging Face's regression heads do.
    let config = entry_json(&t, "p.rkd", "teacher", "out/config.json");
    assert_eq!(config["id2label"], serde_json::json!({"0": "score"}));
    let train = entry_json(&t, "p.rkd", "teacher", "out/train_metrics.json");
    assert_eq!(train["selection_metric"], "pearson");
    // The report compares the models by Pearson's r, with Spearman beside it, in its table,
    // CSV, JSON and plots; its numbers are eval's.
    let report_dir = entry_of(&t, "p.rkd", "r").join("out");
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("| Pearson | Spearman |"), "{md}");
    assert!(md.contains("Retention = pearson / baseline pearson"), "{md}");
    let csv = std::fs::read_to_string(report_dir.join("report.csv")).unwrap();
    assert!(csv.starts_with("name,strategy,op,pearson,score,"), "{csv}");
    let json: Value = serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        (json["quality_name"].as_str(), json["score_name"].as_str()),
        (Some("pearson"), Some("Spearman"))
    );
    for (row, stage) in json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(["teacher_score", "student_score"])
    {
        let m = metrics(&t, "p.rkd", stage);
        let (r, p) = (row["quality"].as_f64().unwrap(), m["pearson"].as_f64().unwrap());
        assert!((r - p).abs() < 1e-4, "{stage}: report {r} vs eval {p}");
        let (rs, s) = (row["score"].as_f64().unwrap(), m["spearman"].as_f64().unwrap());
        assert!((rs - s).abs() < 1e-4, "{stage}: report {rs} vs eval {s}");
    }
    let svg = std::fs::read_to_string(report_dir.join("size_vs_accuracy.svg")).unwrap();
    assert!(
        svg.contains("Pearson r (× 100)") && svg.contains("o correlation (0)"),
        "the y axis is Pearson: {svg}"
    );
}

/// `glue_sst2`'s files are checked by `rkd check` (and before `rkd run` starts anything), at
/// its `path:`, as `glue(task: "sst2")`'s are: a missing dev.tsv, a label that is not 0 or 1.
#[test]
fn glue_sst2_files_are_checked_before_anything_runs() {
    let train = "sentence\tlabel\na fine film \t1\na dull film \t0\n";
    let pipeline = "let sst2 = glue_sst2(path: \"s\", max_len: 16)\n\
                    stage t = train(model: bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 16), \
                    data: sst2, max_steps: 1, select: \"last\")\n";
    let t = Test::new().file("s/train.tsv", train).file("p.rkd", pipeline);
    for command in ["check", "run"] {
        let out = t.run_with(&[command, "p.rkd"]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(
            out.stderr.contains("dev.tsv") && out.stderr.contains("p.rkd:1:"),
            "{}",
            out.stderr
        );
    }
    let t = Test::new()
        .file("s/train.tsv", train)
        .file("s/dev.tsv", "sentence\tlabel\nan odd film \t2\n")
        .file("p.rkd", pipeline);
    let out = t.run_with(&["check", "p.rkd"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("dev.tsv:2"), "{}", out.stderr);
    assert!(!t.path().join(".rkd/entries").exists(), "nothing ran");
}

//! Snapshot tests of the diagnostics for bad tables and image folders: each points at the
//! dataset call in the `.rkd` file and names the file, row and column. `rkd run` reads every row before any stage
//! starts, so a bad row deep in a file fails at once, never hours into a run.

mod common;
use common::parquet::{write as write_parquet, Col};
use common::Test;

const TEXT_MODEL: &str = "bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 16)";

/// A pipeline training on `dataset`.
fn pipeline(dataset: &str) -> String {
    format!("let data = {dataset}\nstage m = train(model: {TEXT_MODEL}, data: data, epochs: 1)\n")
}

/// A pipeline training a ViT on `dataset` (16×16 images).
fn image_pipeline(dataset: &str) -> String {
    format!(
        "let data = {dataset}\nstage m = train(model: vit(layers: 1, hidden: 16, heads: 2, patch: 8, image_size: 16), data: data, epochs: 1)\n"
    )
}

/// `rkd <command> p.rkd` in `t`, which must fail before any stage runs; returns stderr.
fn fails(t: &Test, command: &str) -> String {
    let out = t.run_with(&[command, "p.rkd"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let entries = t.path().join(".rkd/entries");
    let stored = std::fs::read_dir(&entries).map_or(0, |d| d.count());
    assert_eq!(stored, 0, "a stage ran: {}", out.stdout);
    out.stderr
}

fn csv_table(dataset: &str, train: &str) -> Test {
    Test::new().file("t/train.csv", train).file("p.rkd", &pipeline(dataset))
}

#[test]
fn a_missing_column_lists_the_columns_there_are() {
    let t = csv_table(
        r#"text_table(path: "t", text: "review", label: "label", max_len: 8)"#,
        "text,label\nfine,1\nbad,0\n",
    );
    let check = fails(&t, "check");
    assert_eq!(check, fails(&t, "run"));
    insta::assert_snapshot!(check);
}

#[test]
fn a_missing_parquet_column_lists_the_columns_there_are() {
    let t = Test::new().file(
        "p.rkd",
        &pipeline(r#"text_table(path: "t", text: "sentence", label: "sentiment", max_len: 8)"#),
    );
    write_parquet(
        &t.path().join("t/data/train-00000-of-00001.parquet"),
        &[
            Col::Int("idx", vec![0, 1]),
            Col::Str("sentence", vec!["fine".into(), "bad".into()]),
            Col::Int("label", vec![1, 0]),
        ],
        10,
    );
    insta::assert_snapshot!(fails(&t, "check"));
}

#[test]
fn an_empty_split() {
    let t = csv_table(
        r#"text_table(path: "t", text: "text", label: "label", max_len: 8)"#,
        "text,label\n",
    );
    insta::assert_snapshot!(fails(&t, "check"));
}

#[test]
fn a_label_that_is_neither_an_integer_nor_a_string() {
    let t = Test::new().file(
        "p.rkd",
        &pipeline(r#"text_table(path: "t", text: "sentence", label: "score", max_len: 8)"#),
    );
    write_parquet(
        &t.path().join("t/train.parquet"),
        &[
            Col::Str("sentence", vec!["fine".into(), "bad".into()]),
            Col::Float("score", vec![0.75, 0.25]),
        ],
        10,
    );
    insta::assert_snapshot!(fails(&t, "check"));
}

#[test]
fn a_corrupt_parquet_file() {
    let t = Test::new()
        .file("t/train.parquet", "PAR1 this is not really parquet")
        .file(
            "p.rkd",
            &pipeline(r#"text_table(path: "t", text: "sentence", label: "label", max_len: 8)"#),
        );
    insta::assert_snapshot!(fails(&t, "check"));
}

#[test]
fn a_corrupt_image() {
    let t = Test::new().file(
        "p.rkd",
        &image_pipeline(r#"image_table(path: "beans", image: "image", label: "labels", image_size: 16)"#),
    );
    write_parquet(
        &t.path().join("beans/data/train-00000-of-00001.parquet"),
        &[
            Col::Image("image", vec![(b"\x89PNG but cut short".to_vec(), "leaf.png".into())]),
            Col::Int("labels", vec![0]),
        ],
        10,
    );
    insta::assert_snapshot!(fails(&t, "check"));
}

#[test]
fn a_row_with_too_few_fields_deep_in_the_file_fails_the_run_before_it_starts() {
    let mut rows = String::from("text,label\n");
    for i in 0..500 {
        rows.push_str(&format!("row number {i},{}\n", i % 2));
    }
    rows.push_str("a row without its label\n");
    let t = csv_table(
        r#"text_table(path: "t", text: "text", label: "label", max_len: 8)"#,
        &rows,
    );
    // `rkd check` reads first rows only; `rkd run` reads every row before it starts.
    assert_eq!(t.run_with(&["check", "p.rkd"]).code, 0);
    insta::assert_snapshot!(fails(&t, "run"));
}

#[test]
fn a_glue_task_without_its_validation_file() {
    let t = Test::new()
        .file(
            "rte/train.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n",
        )
        .file("p.rkd", &pipeline(r#"glue(task: "rte", path: "rte", max_len: 8)"#));
    insta::assert_snapshot!(fails(&t, "check"));
}

#[test]
fn a_split_in_two_sets_of_files() {
    let t = csv_table(
        r#"text_table(path: "t", text: "text", label: "label", max_len: 8)"#,
        "text,label\nfine,1\nbad,0\n",
    )
    .file("t/train.jsonl", "{\"text\": \"fine\", \"label\": 1}\n");
    insta::assert_snapshot!(fails(&t, "check"));
}

#[test]
fn a_json_file_holding_one_array() {
    let t = Test::new()
        .file(
            "t/train.json",
            "[{\"text\": \"fine\", \"label\": 1}, {\"text\": \"bad\", \"label\": 0}]\n",
        )
        .file(
            "p.rkd",
            &pipeline(r#"text_table(path: "t", text: "text", label: "label", max_len: 8)"#),
        );
    insta::assert_snapshot!(fails(&t, "check"));
}

#[test]
fn an_image_in_a_hidden_folder_is_refused() {
    // The stage key leaves hidden entries out: an image there could change and the cached result
    // stay.
    let t = Test::new()
        .file("beans/train.csv", "image,labels\n.images/leaf.png,0\n")
        .file(
            "p.rkd",
            &image_pipeline(r#"image_table(path: "beans", image: "image", label: "labels", image_size: 16)"#),
        );
    insta::assert_snapshot!(fails(&t, "check"));
}

#[test]
fn a_validation_label_the_training_split_lacks_fails_the_run_before_it_starts() {
    let t = csv_table(
        r#"text_table(path: "t", text: "text", label: "label", max_len: 8)"#,
        "text,label\nfine,pos\nbad,neg\ngood,pos\n",
    )
    .file("t/validation.csv", "text,label\nok,pos\nmeh,neutral\n");
    // `rkd check` reads first rows only; `rkd run` reads every row and checks the labels.
    assert_eq!(t.run_with(&["check", "p.rkd"]).code, 0);
    insta::assert_snapshot!(fails(&t, "run"));
}

#[test]
fn an_id_column_given_as_the_label_fails_the_run_before_it_starts() {
    let mut rows = String::from("id,text,sentiment\n");
    for i in 0..40 {
        rows.push_str(&format!("{i},review number {i},{}\n", ["pos", "neg"][i % 2]));
    }
    let t = csv_table(r#"text_table(path: "t", text: "text", label: "id", max_len: 8)"#, &rows);
    insta::assert_snapshot!(fails(&t, "run"));
}

#[test]
fn image_labels_that_mix_integers_and_names_fail_the_run_before_it_starts() {
    let t = Test::new()
        .file("beans/train.csv", "image,labels\na.png,0\nb.png,healthy\n")
        .file(
            "p.rkd",
            &image_pipeline(r#"image_table(path: "beans", image: "image", label: "labels", image_size: 16)"#),
        );
    for name in ["a", "b"] {
        image::RgbImage::new(16, 16)
            .save(t.path().join(format!("beans/{name}.png")))
            .unwrap();
    }
    insta::assert_snapshot!(fails(&t, "run"));
}

#[test]
fn training_labels_of_one_class_fail_the_run_before_it_starts() {
    let t = csv_table(
        r#"text_table(path: "t", text: "text", label: "label", max_len: 8)"#,
        "text,label\nfine,1\ngood,1\n",
    );
    insta::assert_snapshot!(fails(&t, "run"));
}

/// A pipeline training a ViT on `image_folder(path: "beans")`, with 16×16 PNGs at `images`.
fn image_folder(images: &[&str]) -> Test {
    let t = Test::new().file(
        "p.rkd",
        &image_pipeline(r#"image_folder(path: "beans", image_size: 16)"#),
    );
    for path in images {
        let path = t.path().join("beans").join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::new(16, 16).save(path).unwrap();
    }
    t
}

#[test]
fn an_image_folder_with_one_class_fails_the_check() {
    let t = image_folder(&["train/healthy/a.png", "train/healthy/b.png"]);
    let check = fails(&t, "check");
    assert_eq!(check, fails(&t, "run"));
    insta::assert_snapshot!(check);
}

#[test]
fn a_validation_class_the_training_split_lacks_fails_the_check() {
    let t = image_folder(&[
        "train/healthy/a.png",
        "train/rust/b.png",
        "validation/healthy/c.png",
        "validation/mildew/d.png",
    ]);
    insta::assert_snapshot!(fails(&t, "check"));
}

#[test]
fn a_corrupt_first_image_in_a_folder_fails_the_check() {
    let t = image_folder(&["train/healthy/b.png", "train/rust/c.png"]).file("beans/train/healthy/a.png", "not a png");
    insta::assert_snapshot!(fails(&t, "check"));
}

#[test]
fn files_an_image_folder_does_not_read_are_a_warning_before_the_run() {
    let t = image_folder(&["train/healthy/a.png", "train/rust/b.png"]).file("beans/train/rust/notes.txt", "x");
    let check = t.run_with(&["check", "p.rkd"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    let warning = "warning: 1 file in beans/train is not an image and is not read (e.g. rust/notes.txt)";
    assert!(check.stderr.contains(warning), "{}", check.stderr);
    let run = t.run_with(&["run", "p.rkd"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains(warning), "{}", run.stderr);
}

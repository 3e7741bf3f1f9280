//! Bundles: `rkd bundle` packs a pipeline with its modules, lock, data and results; unpacked
//! elsewhere, `rkd run` pulls every result from it (verified) and runs nothing.

mod common;
use common::{sorted, Test};
use serde_json::Value;

const MODULE: &str = "fn counted(src) {\n  stage n = exec(cmd: \"wc -w < $RKD_INPUTS/words.txt > $RKD_OUT/n.txt\", inputs: [src])\n  n\n}\n";

const PIPELINE: &str = "\
use \"lib/steps.rkd\" as steps
stage words = exec(cmd: \"cat data/words.txt > $RKD_OUT/words.txt\", files: [\"data/words.txt\"])
let n = steps::counted(src: words)
";

#[test]
fn a_bundle_with_results_reruns_elsewhere_as_pulls_only() {
    let t = Test::new()
        .file("exp/p.rkd", PIPELINE)
        .file("exp/lib/steps.rkd", MODULE)
        .file("exp/data/words.txt", "a bundle of words\n")
        .file("exp/notes.md", "not part of the pipeline\n");
    let run = t.run_with(&["run", "exp/p.rkd"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = t.run_with(&[
        "bundle",
        "exp/p.rkd",
        "-o",
        "exp.tar.zst",
        "--with-results",
        "--with-data",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("2 of 2 stage results"), "{}", out.stdout);

    let out = t.run_with(&["unbundle", "exp.tar.zst", "-C", "review"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("rkd run review/p/p.rkd"), "{}", out.stdout);
    let unpacked = t.path().join("review/p");
    for f in ["p.rkd", "p.lock", "lib/steps.rkd", "data/words.txt", "rkd.toml"] {
        assert!(unpacked.join(f).is_file(), "{f} is in the bundle");
    }
    assert!(!unpacked.join("notes.md").exists(), "only what the pipeline reads");
    let out = t.run_with(&["run", "review/p/p.rkd", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(sorted(&json["pulled"]), ["n/n", "words"], "{}", out.stderr);
    assert_eq!(sorted(&json["ran"]), Vec::<String>::new());
    let n = |dir: &str| {
        let plan: Value =
            serde_json::from_str(&t.run_with(&["plan", &format!("{dir}/p.rkd"), "--json"]).stdout).unwrap();
        let key = common::key_of(&plan, "n/n");
        std::fs::read_to_string(t.path().join(dir).join(".rkd/entries").join(key).join("out/n.txt")).unwrap()
    };
    assert_eq!(n("review/p"), n("exp"));
    assert_eq!(
        t.run_with(&["check", "--locked", "review/p/p.rkd"]).code,
        0,
        "the bundled lock agrees"
    );
}

#[test]
fn unbundling_over_changed_files_is_refused_unless_forced() {
    let t = Test::new()
        .file("exp/p.rkd", PIPELINE)
        .file("exp/lib/steps.rkd", MODULE)
        .file("exp/data/words.txt", "a bundle of words\n");
    assert_eq!(t.run_with(&["bundle", "exp/p.rkd", "-o", "exp.tar.zst"]).code, 0);
    assert_eq!(t.run_with(&["unbundle", "exp.tar.zst", "-C", "unb"]).code, 0);
    // Over identical files: nothing to lose, so it unpacks.
    let out = t.run_with(&["unbundle", "exp.tar.zst", "-C", "unb"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    let edited = t.path().join("unb/p/p.rkd");
    std::fs::write(&edited, "# my edit\n").unwrap();
    let out = t.run_with(&["unbundle", "exp.tar.zst", "-C", "unb"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("unb/p/p.rkd"), "names the file: {}", out.stderr);
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&edited).unwrap(),
        "# my edit\n",
        "the edit is kept"
    );

    let out = t.run_with(&["unbundle", "exp.tar.zst", "-C", "unb", "--force"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&edited).unwrap(), PIPELINE);
}

#[test]
fn a_module_outside_the_pipelines_folder_is_refused_by_name() {
    let t = Test::new()
        .file("exp/p.rkd", &PIPELINE.replace("lib/steps.rkd", "../shared/steps.rkd"))
        .file("shared/steps.rkd", MODULE)
        .file("exp/data/words.txt", "words\n");
    let out = t.run_with(&["bundle", "exp/p.rkd", "-o", "b.tar.zst"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("steps.rkd is outside the pipeline's folder"),
        "{}",
        out.stderr
    );
    assert!(!t.path().join("b.tar.zst").exists());
}

/// `-o` naming a FIFO or a folder is refused: the bundle is written aside and renamed into
/// place, which would replace the FIFO instead of writing into it. Nothing is left behind.
#[test]
fn a_bundle_is_not_written_over_a_fifo_or_a_folder() {
    let t = Test::new()
        .file("exp/p.rkd", PIPELINE)
        .file("exp/lib/steps.rkd", MODULE)
        .file("exp/data/words.txt", "words\n")
        .file("folder/keep.txt", "");
    let made = std::process::Command::new("mkfifo")
        .arg(t.path().join("pipe"))
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    for out in ["pipe", "folder"] {
        let res = t.run_with(&["bundle", "exp/p.rkd", "-o", out]);
        assert_eq!(res.code, 1, "{}", res.stderr);
        assert!(
            res.stderr
                .contains(&format!("cannot write {out}: it exists and is not a regular file")),
            "{}",
            res.stderr
        );
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(t.path().join("pipe")).unwrap().file_type().is_fifo());
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

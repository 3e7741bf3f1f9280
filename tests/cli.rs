//! Integration tests: the `rkd` binary on real `.rkd` files.
// Test output to the harness: eprintln! is fine here (src/ uses crate::say!).
#![allow(clippy::disallowed_macros)]

mod common;
use common::{by_name, repo, Test};
use serde_json::Value;

const TEACHER: &str =
    "use std::bert\nlet data = synthetic_text(seed: 1)\nstage teacher = train(model: bert::mini, data: data)\n";

fn plan_json(t: &Test, file: &str) -> Value {
    let out = t.run_with(&["plan", file, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("plan --json prints JSON")
}

fn stages(plan: &Value) -> &Vec<Value> {
    plan["stages"].as_array().unwrap()
}

#[test]
fn the_shipped_pipelines_and_examples_check_clean() {
    // `rkd check` lists image folders: beans.rkd's (RKD_BEANS) is a tiny one of two classes.
    let beans = tempfile::tempdir().unwrap();
    for image in ["train/healthy/a.png", "train/bean_rust/b.png"] {
        let path = beans.path().join(image);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::new(8, 8).save(path).unwrap();
    }
    // And reads GLUE SST-2's files: sst2.rkd's (RKD_SST2) hold two sentences each.
    let sst2 = tempfile::tempdir().unwrap();
    for file in ["train.tsv", "dev.tsv"] {
        std::fs::write(
            sst2.path().join(file),
            "sentence\tlabel\na fine film \t1\na dull film \t0\n",
        )
        .unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rkd"))
        .env("RKD_BEANS", beans.path())
        .env("RKD_SST2", sst2.path())
        .args([
            "check",
            "pipelines/sst2.rkd",
            "pipelines/beans.rkd",
            "examples/quickstart.rkd",
            "examples/exec.rkd",
            "examples/train.rkd",
            "examples/own_text.rkd",
            "examples/own_pairs.rkd",
            "examples/own_images.rkd",
            "examples/hub_dataset.rkd",
            "examples/seeds.rkd",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("ok: ").count(), 10, "{stdout}");
}

#[test]
fn check_reports_each_file_and_fails_if_any_fails() {
    let out = Test::new()
        .file("good.rkd", TEACHER)
        .file("bad.rkd", "stage x = trian()\n")
        .args(&["check", "good.rkd", "bad.rkd"])
        .expect(1);
    assert!(out.stdout.contains("ok: good.rkd (1 stage)"), "{}", out.stdout);
    assert!(out.stderr.contains("error: bad.rkd has 1 problem"), "{}", out.stderr);
}

/// A chain of 2,000 files, each `use`ing the next, checks (finding import cycles walked the
/// stack of files being loaded at each `use`: O(n²) path comparisons; 25,000 files took 19 s).
#[test]
fn a_long_chain_of_used_files_checks() {
    const N: usize = 2000;
    let mut t = Test::new();
    for i in 0..N - 1 {
        t = t.file(
            &format!("f{i}.rkd"),
            &format!("use \"f{}.rkd\" as m\nlet x{i} = 1\n", i + 1),
        );
    }
    t = t.file(&format!("f{}.rkd", N - 1), "stage a = exec(cmd: \"true\")\n");
    let out = t.run_with(&["check", "f0.rkd"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("ok: f0.rkd (1 stage)"), "{}", out.stdout);
}

#[test]
fn plan_json_lists_every_stage_with_key_inputs_and_status() {
    let t = Test::new().file(
        "p.rkd",
        &format!(
            "{TEACHER}sweep t in [2.0, 4.0], a in [0.5, 0.9] {{\n  stage mini = distill(teacher: teacher, student: bert::tiny, data: data, temperature: t, alpha: a)\n}}\nstage r = report(models: [teacher] + mini, data: data)\n"
        ),
    );
    let plan = plan_json(&t, "p.rkd");
    let names: Vec<&str> = stages(&plan).iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "teacher",
            "teacher/predictions",
            "mini[t=2.0,a=0.5]",
            "mini[t=2.0,a=0.9]",
            "mini[t=4.0,a=0.5]",
            "mini[t=4.0,a=0.9]",
            "r"
        ]
    );
    let r = by_name(&plan, "r");
    assert_eq!(r["op"], "report");
    // After the sweep, `mini` is the list of instances in product order.
    assert_eq!(
        r["inputs"],
        serde_json::json!([
            "teacher",
            "mini[t=2.0,a=0.5]",
            "mini[t=2.0,a=0.9]",
            "mini[t=4.0,a=0.5]",
            "mini[t=4.0,a=0.9]"
        ])
    );
    for s in stages(&plan) {
        let key = s["key"].as_str().unwrap();
        assert_eq!(key.len(), 64);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(s["status"], "run");
        assert!(s["reasons"][0].as_str().unwrap().starts_with("new"));
    }
    // The four students share one stage of teacher predictions.
    for mini in ["mini[t=2.0,a=0.5]", "mini[t=4.0,a=0.9]"] {
        assert_eq!(
            by_name(&plan, mini)["inputs"],
            serde_json::json!(["teacher/predictions", "teacher"])
        );
    }
    assert_eq!(by_name(&plan, "teacher/predictions")["op"], "predict");
    // Defaults are filled in.
    assert_eq!(by_name(&plan, "mini[t=2.0,a=0.5]")["params"]["t2_scale"], true);
    // (bert::mini is an architecture: it trains from scratch, with 5 epochs.)
    assert_eq!(by_name(&plan, "teacher")["params"]["epochs"], 5);
}

#[test]
fn a_stored_entry_makes_a_stage_cached() {
    let t = Test::new().file("p.rkd", TEACHER);
    let plan = plan_json(&t, "p.rkd");
    let key = by_name(&plan, "teacher")["key"].as_str().unwrap().to_string();
    let entry = t.path().join(".rkd/entries").join(&key);
    std::fs::create_dir_all(&entry).unwrap();
    // An entry without its manifest is not a finished result.
    assert_eq!(by_name(&plan_json(&t, "p.rkd"), "teacher")["status"], "run");
    std::fs::write(entry.join("manifest.json"), r#"{"files":{}}"#).unwrap();
    let plan = plan_json(&t, "p.rkd");
    assert_eq!(by_name(&plan, "teacher")["status"], "cached");
    // --store points elsewhere: not cached there.
    let out = t.run_with(&["plan", "p.rkd", "--json", "--store", "other"]);
    let plan: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(by_name(&plan, "teacher")["status"], "run");
}

#[test]
fn input_files_are_fingerprinted_by_content() {
    let t = Test::new()
        .file("data/train.tsv", "sentence\tlabel\ngood film \t1\n")
        .file("data/dev.tsv", "sentence\tlabel\nbad film \t0\n")
        .file(
            "p.rkd",
            "use std::bert\nlet d = glue_sst2(path: \"data\")\nstage a = train(model: bert::tiny, data: d)\nstage b = train(model: bert::mini, data: synthetic_text(seed: 3))\n",
        );
    let first = plan_json(&t, "p.rkd");
    // Same bytes, new mtime: same keys.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(t.path().join("data/dev.tsv"), "sentence\tlabel\nbad film \t0\n").unwrap();
    let touched = plan_json(&t, "p.rkd");
    assert_eq!(first, touched);
    // Different bytes: the stage reading them changes, the other does not.
    std::fs::write(t.path().join("data/dev.tsv"), "sentence\tlabel\nbad film \t1\n").unwrap();
    let changed = plan_json(&t, "p.rkd");
    assert_ne!(by_name(&first, "a")["key"], by_name(&changed, "a")["key"]);
    assert_eq!(by_name(&first, "b")["key"], by_name(&changed, "b")["key"]);
}

#[test]
fn local_modules_and_stdlib_strategies() {
    let t = Test::new()
        .file(
            "lib/models.rkd",
            "# shared definitions\nlet little = bert(layers: 1, hidden: 32, heads: 2, intermediate: 64)\nfn teach(teacher, students, data) {\n  for s in students {\n    stage kd = distill(teacher: teacher, student: s, data: data, temperature: 2.0)\n  }\n  kd\n}\n",
        )
        .file(
            "p.rkd",
            &format!(
                "use \"lib/models.rkd\" as m\nuse std::strategies::{{successive, multi_agent}}\n{TEACHER}let mine = m::teach(teacher: teacher, students: [m::little, bert::tiny], data: data)\nlet chain = successive(teacher: teacher, students: [bert::small, m::little], data: data, epochs: 1)\nstage f = multi_agent(teachers: [teacher] + chain, student: m::little, data: data)\n"
            ),
        );
    let plan = plan_json(&t, "p.rkd");
    let names: Vec<&str> = stages(&plan).iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "teacher",
            "teacher/predictions",
            "mine/kd[0]",
            "mine/kd[1]",
            "chain/step[0]",
            "chain/step[0]/predictions",
            "chain/step[1]",
            "chain/step[1]/predictions",
            "f"
        ]
    );
    // successive: each student's teacher is the previous stage.
    assert_eq!(
        by_name(&plan, "chain/step[0]")["inputs"],
        serde_json::json!(["teacher/predictions", "teacher"])
    );
    assert_eq!(
        by_name(&plan, "chain/step[1]")["inputs"],
        serde_json::json!(["chain/step[0]/predictions", "chain/step[0]"])
    );
    assert_eq!(by_name(&plan, "chain/step[1]")["params"]["epochs"], 1);
    assert_eq!(by_name(&plan, "f")["op"], "fuse");
    assert_eq!(
        by_name(&plan, "f")["inputs"],
        serde_json::json!([
            "teacher/predictions",
            "chain/step[0]/predictions",
            "chain/step[1]/predictions",
            "teacher",
            "chain/step[0]",
            "chain/step[1]"
        ])
    );
    assert_eq!(by_name(&plan, "mine/kd[1]")["params"]["temperature"], 2.0);
}

#[test]
fn identical_stages_are_one_stage_with_aliases() {
    let t = Test::new().file(
        "p.rkd",
        &format!("{TEACHER}stage again = train(model: bert::mini, data: data)\n"),
    );
    let plan = plan_json(&t, "p.rkd");
    assert_eq!(stages(&plan).len(), 1);
    assert_eq!(by_name(&plan, "teacher")["aliases"], serde_json::json!(["again"]));
}

#[test]
fn env_supplies_paths_with_a_fallback() {
    let src = format!("{TEACHER}stage e = exec(cmd: env(name: \"RKD_TEST_CMD\", default: \"true\"))\n");
    let t = Test::new().file("p.rkd", &src);
    let plan = plan_json(&t, "p.rkd");
    assert_eq!(by_name(&plan, "e")["params"]["cmd"], "true");
    let out = Test::new()
        .file("p.rkd", &src)
        .env("RKD_TEST_CMD", "echo hi")
        .args(&["plan", "p.rkd", "--json"])
        .expect(0);
    let plan: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(by_name(&plan, "e")["params"]["cmd"], "echo hi");
}

#[test]
fn graph_in_dot_and_mermaid() {
    let t = Test::new().file("p.rkd", &format!("{TEACHER}stage p = prune(model: teacher)\n"));
    let dot = t.run_with(&["graph", "p.rkd"]);
    assert_eq!(dot.code, 0);
    assert!(dot.stdout.starts_with("digraph rkd {"), "{}", dot.stdout);
    assert!(dot.stdout.contains("n0 [label=\"teacher\\ntrain\"]"), "{}", dot.stdout);
    assert!(dot.stdout.contains("n0 -> n1;"));
    let mermaid = t.run_with(&["graph", "p.rkd", "--format", "mermaid"]);
    assert!(mermaid.stdout.starts_with("flowchart LR"));
    assert!(mermaid.stdout.contains("n0 --> n1"));
}

#[test]
fn ops_reference() {
    let all = Test::new().args(&["ops"]).expect(0).stdout;
    for name in [
        "train",
        "distill",
        "fuse",
        "qlora",
        "prune",
        "eval",
        "report",
        "exec",
        "glue_sst2",
        "image_folder",
        "synthetic_text",
        "synthetic_images",
        "bert",
        "vit",
        "pretrained",
        "hf",
    ] {
        assert!(all.contains(&format!("  {name} ")), "{name} missing:\n{all}");
    }
    let distill = Test::new().args(&["ops", "distill"]).expect(0).stdout;
    assert!(distill.contains("temperature"), "{distill}");
    assert!(distill.contains("4.0") && distill.contains("> 0"), "{distill}");
    let err = Test::new().args(&["ops", "distil"]).expect(1).stderr;
    assert!(err.contains("did you mean `distill`?"), "{err}");
}

#[test]
fn help_and_completions() {
    let help = Test::new().args(&["--help"]).expect(0).stdout;
    for cmd in ["check", "plan", "graph", "ops", "completions"] {
        assert!(help.contains(cmd), "{help}");
    }
    let bash = Test::new().args(&["completions", "bash"]).expect(0).stdout;
    assert!(bash.contains("_rkd()"), "{}", &bash[..bash.len().min(200)]);
    let usage = Test::new().args(&["plan"]).run();
    assert_eq!(usage.code, 2, "usage errors exit with 2");
}

#[test]
fn a_missing_file_is_an_error_not_a_panic() {
    let out = Test::new().args(&["check", "nope.rkd"]).expect(1);
    assert!(out.stderr.contains("cannot read nope.rkd"), "{}", out.stderr);
}

/// The table lines of a `plan` or `run` answer: from the header to the first empty line.
fn table_rows(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("STAGE"))
        .take_while(|l| !l.is_empty())
        .collect()
}

#[test]
fn long_and_multiline_stage_names_keep_one_table_line_per_stage() {
    let long = "s".repeat(65_536);
    let src = format!(
        "sweep v in [\"a\\nb\", \"c\\td\"] {{\n  stage e = exec(cmd: \"true\", params: {{v: v}})\n}}\n\
         stage {long} = exec(cmd: \"true\", params: {{v: 3}})\n"
    );
    let t = Test::new().file("p.rkd", &src);
    for cmd in ["plan", "run"] {
        let out = t.run_with(&[cmd, "p.rkd"]);
        assert_eq!(out.code, 0, "rkd {cmd}: {}", out.stderr);
        let rows = table_rows(&out.stdout);
        assert_eq!(
            rows.len(),
            4,
            "rkd {cmd}: a header and one line per stage\n{}",
            out.stdout
        );
        assert!(rows.iter().any(|r| r.starts_with("e[v=a\\nb]")), "{}", out.stdout);
        assert!(rows.iter().any(|r| r.starts_with("e[v=c\\td]")), "{}", out.stdout);
        assert!(
            rows.iter().any(|r| r.starts_with("sssss") && r.contains("s…")),
            "{}",
            out.stdout
        );
        assert!(rows.iter().all(|r| r.chars().count() < 160), "{}", out.stdout);
    }
}

#[test]
fn bench_compile_prints_a_table() {
    let out = Test::new()
        .args(&["bench", "compile", "--stages", "100", "--runs", "1"])
        .expect(0);
    assert!(
        out.stdout.contains("stages") && out.stdout.contains("100"),
        "{}",
        out.stdout
    );
    // Sizes are chains of 10 stages: another size is a usage error that says so.
    for bad in ["5", "15", "0", "ten"] {
        let out = Test::new().args(&["bench", "compile", "--stages", bad]).expect(2);
        assert!(out.stderr.contains("--stages"), "{bad}: {}", out.stderr);
    }
    let out = Test::new().args(&["bench", "compile", "--stages", "15"]).expect(2);
    assert!(
        out.stderr.contains("multiple of 10") && out.stderr.contains("try 20"),
        "{}",
        out.stderr
    );
}

#[test]
fn selftest_compares_the_device_generic_path_with_the_cpu_kernels() {
    let out = Test::new().args(&["selftest", "--device", "cpu", "--json"]).expect(0);
    let v: Value = serde_json::from_str(&out.stdout).expect("selftest --json prints JSON");
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["failed"], 0);
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["check"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "nf4 dequantization (bits)",
            "bert training step",
            "vit training step",
            "qlora step (nf4 base)"
        ]
    );
    assert!(
        checks
            .iter()
            .all(|c| c["ok"] == true && c["error"].as_f64().unwrap() <= 1e-4),
        "{checks:?}"
    );
    let table = Test::new().args(&["selftest", "--device", "cpu"]).expect(0);
    assert!(table.stdout.contains("4 of 4 checks passed"), "{}", table.stdout);
    if !cfg!(feature = "cuda") {
        let cuda = Test::new().args(&["selftest", "--device", "cuda"]).expect(2);
        assert!(cuda.stderr.contains("built without CUDA"), "{}", cuda.stderr);
    }
}

/// With the shared development data (RKD_SHARED_DATA), the study's pipelines plan on real files.
#[test]
fn the_study_pipelines_plan_on_the_shared_samples() {
    let Some(data) = std::env::var_os("RKD_SHARED_DATA") else {
        eprintln!("RKD_SHARED_DATA is not set: skipping the plan of pipelines/*.rkd on the shared samples");
        return;
    };
    let data = std::path::PathBuf::from(data);
    for (file, var, dir) in [
        ("pipelines/sst2.rkd", "RKD_SST2", "sst2-sample"),
        ("pipelines/beans.rkd", "RKD_BEANS", "beans-sample"),
    ] {
        let store = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rkd"))
            .args(["plan", file, "--json", "--store"])
            .arg(store.path())
            .env(var, data.join(dir))
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(stages(&plan).len() >= 10);
        assert!(store.path().join("stat-cache.json").exists());
    }
}

/// A model trained from random weights gets a larger learning rate and more epochs than one
/// fine-tuned from a checkpoint or a stage, unless the pipeline says otherwise.
#[test]
fn training_from_scratch_gets_its_own_defaults() {
    let t = Test::new().file(
        "p.rkd",
        "use std::bert\nlet data = synthetic_text(seed: 1)\n\
         stage scratch = train(model: bert::mini, data: data)\n\
         stage told = train(model: bert::mini, data: data, lr: 1e-4, epochs: 2)\n\
         stage further = train(model: scratch, data: data)\n\
         stage student = distill(teacher: scratch, student: bert::tiny, data: data)\n\
         stage copied = distill(teacher: scratch, student: bert::tiny, data: data, init: \"teacher_layers\")\n",
    );
    let plan = plan_json(&t, "p.rkd");
    let got = |name: &str| {
        let s = by_name(&plan, name);
        (
            s["params"]["lr"].as_f64().unwrap(),
            s["params"]["epochs"].as_i64().unwrap(),
        )
    };
    assert_eq!(got("scratch"), (3e-4, 5));
    assert_eq!(got("told"), (1e-4, 2));
    assert_eq!(got("further"), (1e-4, 3));
    assert_eq!(got("student"), (3e-4, 5));
    assert_eq!(got("copied"), (1e-4, 3));
    let ops = t.run_with(&["ops", "train"]);
    assert!(
        ops.stdout.contains("3e-4 when the model starts from random weights"),
        "{}",
        ops.stdout
    );
}

/// A file without stages runs "successfully", but says that there was nothing to run.
#[test]
fn a_file_without_stages_warns() {
    let t = Test::new().file("p.rkd", "# nothing yet\nlet x = 1\n");
    for cmd in ["plan", "run"] {
        let out = t.run_with(&[cmd, "p.rkd"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stderr.contains("defines no stages"), "{cmd}: {}", out.stderr);
    }
}

/// `rkd log FILE` and `rkd verify FILE` read the store `rkd run FILE` wrote, from any directory.
#[test]
fn log_and_verify_take_the_pipeline_file() {
    let t = Test::new().file("d/p.rkd", "stage a = exec(cmd: \"echo hi > $RKD_OUT/x\")\n");
    assert_eq!(t.run_with(&["run", "d/p.rkd"]).code, 0);
    let log = t.run_with(&["log", "d/p.rkd"]);
    assert_eq!(log.code, 0, "{}", log.stderr);
    assert!(log.stdout.contains("p.rkd"), "{}", log.stdout);
    let verify = t.run_with(&["verify", "d/p.rkd"]);
    assert_eq!(verify.code, 0, "{}", verify.stderr);
    assert!(verify.stdout.contains("1 entry checked"), "{}", verify.stdout);
    // Without the file, the current directory's store is meant: there is none here.
    assert!(t.run_with(&["log"]).stdout.contains("no runs recorded"));
}

/// A FILE that does not exist (a typo) or is a folder is a usage error for `log`, `verify`
/// and `results`, not a report on whatever store lies beside it.
#[test]
fn log_verify_and_results_refuse_a_file_that_is_not_one() {
    let t = Test::new().file("d/p.rkd", "stage a = exec(cmd: \"echo hi > $RKD_OUT/x\")\n");
    assert_eq!(t.run_with(&["run", "d/p.rkd"]).code, 0);
    for cmd in ["log", "verify", "results"] {
        for (file, why) in [("d/q.rkd", "does not exist"), ("d", "is not a file")] {
            let out = t.run_with(&[cmd, file]);
            assert_eq!(out.code, 2, "{cmd} {file}: {}", out.stdout);
            assert!(
                out.stderr.contains(&format!("error: the pipeline file {file} {why}")),
                "{cmd} {file}: {}",
                out.stderr
            );
        }
    }
}

#[test]
fn log_shows_at_least_one_run() {
    let t = Test::new().file("p.rkd", "stage a = exec(cmd: \"echo hi > $RKD_OUT/x\")\n");
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    let out = t.run_with(&["log", "p.rkd", "-n", "0"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("'0' for '--limit <LIMIT>': must be at least 1"),
        "{}",
        out.stderr
    );
    let out = t.run_with(&["log", "p.rkd", "-n", "1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("p.rkd") && out.stdout.contains("ok"),
        "{}",
        out.stdout
    );
}

/// `rkd run p.rkd | head -0`: the reader is gone by the time the summary is printed, and rkd
/// ends as Unix tools do (SIGPIPE) instead of panicking with exit code 101; what ran is stored
/// and recorded.
#[test]
fn run_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let t = Test::new().file("p.rkd", "stage a = exec(cmd: \"sleep 0.3; echo hi > $RKD_OUT/x\")\n");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rkd"))
        .args(["run", "p.rkd"])
        .current_dir(t.path())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?} {stderr}", out.status);
    let log = t.run_with(&["log", "p.rkd"]);
    assert!(log.stdout.contains("ok"), "{}", log.stdout);
    assert_eq!(t.run_with(&["verify", "p.rkd"]).code, 0);
}

/// `rkd results --sort NAME` or `--metric NAME` with a metric no listed stage recorded warns
/// (a typo left the rows unsorted without a word); empty `--metric` names make no column.
#[test]
fn results_warn_about_a_metric_nothing_recorded() {
    let t = Test::new().file("p.rkd", "stage a = exec(cmd: \"true\")\n");
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    let out = t.run_with(&["results", "p.rkd", "--sort", "acuracy", "--metric", "loss,,"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("warning: no stage listed here recorded the metric `acuracy`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("the metric `loss`"), "{}", out.stderr);
    assert!(!out.stderr.contains("metric ``"), "{}", out.stderr);
    let header: Vec<&str> = out.stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["RUN", "STAGE", "OP", "LOSS"], "{}", out.stdout);
}

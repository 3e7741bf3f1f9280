//! A small builder for running the `rkd` binary on files in a temporary directory.
#![allow(dead_code)]

pub mod parquet;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small real pipeline for the sharing tests: data written by a command, a word count of it,
/// a tiny BERT trained and evaluated on generated text (four stages, a second or so).
pub const SHARED_PIPELINE: &str = "\
stage words = exec(cmd: \"echo 'a table of words' > $RKD_OUT/words.txt\")
stage counted = exec(cmd: \"wc -w < $RKD_INPUTS/words.txt > $RKD_OUT/count.txt\", inputs: [words])
let data = synthetic_text(seed: 3, classes: 2, train_size: 64, val_size: 32, max_len: 16, vocab_size: 48)
let tiny = bert(layers: 1, hidden: 16, heads: 2, intermediate: 32, vocab_size: 48, max_position: 16)
stage teacher = train(model: tiny, data: data, epochs: 1, batch_size: 16)
stage score = eval(model: teacher, data: data)
";

/// One invocation of `rkd` in a fresh temporary directory.
pub struct Test {
    dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// What the invocation printed and how it exited.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Test {
    pub fn new() -> Test {
        Test {
            dir: tempfile::tempdir().expect("temp dir"),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Writes a file (creating parent directories) relative to the test directory.
    pub fn file(self, path: &str, contents: &str) -> Test {
        let p = self.dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
        self
    }

    pub fn args(mut self, args: &[&str]) -> Test {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Test {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `rkd` with the builder's arguments, in the test directory.
    pub fn run(&self) -> Output {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.run_with(&args)
    }

    /// Runs `rkd` with these arguments (instead of the builder's), in the test directory.
    pub fn run_with(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rkd"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("RKD_STORE")
            .env_remove("RKD_REMOTE")
            .env_remove("RKD_DEVICE")
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("rkd runs");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and asserts the exit code.
    pub fn expect(&self, code: i32) -> Output {
        let out = self.run();
        assert_eq!(
            out.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            out.stdout, out.stderr
        );
        out
    }
}

impl Test {
    /// Starts `rkd` with these arguments in the test directory (output discarded), for tests that
    /// interrupt it or run it beside another.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.spawn_with_stderr(args, std::process::Stdio::null())
    }

    /// [`Test::spawn`] with its standard error piped, to show when it fails.
    pub fn spawn_capturing(&self, args: &[&str]) -> std::process::Child {
        self.spawn_with_stderr(args, std::process::Stdio::piped())
    }

    fn spawn_with_stderr(&self, args: &[&str], stderr: std::process::Stdio) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_rkd"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RKD_STORE")
            .env_remove("RKD_REMOTE")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("rkd starts")
    }
}

/// Waits until a file exists (a stage's command says it started); fails after 20 s.
pub fn wait_for(path: &Path) {
    let t0 = std::time::Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The stage named `name` in a `plan --json` answer.
pub fn by_name<'a>(plan: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    plan["stages"]
        .as_array()
        .expect("a plan lists stages")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {plan:#}"))
}

/// Every stage's (name, key) in plan order, from `rkd plan FILE --json` in `t` (which must plan).
pub fn plan_keys(t: &Test, file: &str) -> Vec<(String, String)> {
    let out = t.run_with(&["plan", file, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).expect("plan --json");
    plan["stages"]
        .as_array()
        .expect("a plan lists stages")
        .iter()
        .map(|s| {
            let text = |k: &str| s[k].as_str().expect("a string").to_string();
            (text("name"), text("key"))
        })
        .collect()
}

/// The key of the stage named `name` in a `plan --json` answer.
pub fn key_of(plan: &serde_json::Value, name: &str) -> String {
    by_name(plan, name)["key"].as_str().expect("a key").to_string()
}

/// The store entry of the stage named `stage` of the pipeline `file` in `t` (by `rkd plan`).
pub fn entry_of(t: &Test, file: &str, stage: &str) -> PathBuf {
    let plan: serde_json::Value =
        serde_json::from_str(&t.run_with(&["plan", file, "--json"]).stdout).expect("plan --json");
    t.path().join(".rkd/entries").join(key_of(&plan, stage))
}

/// A JSON file of a stage's entry (`metrics.json`, `out/eval.json`).
pub fn entry_json(t: &Test, file: &str, stage: &str, name: &str) -> serde_json::Value {
    let path = entry_of(t, file, stage).join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("JSON")
}

/// A JSON list of names, sorted.
pub fn sorted(v: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|x| x.as_str().expect("a name").to_string())
        .collect();
    names.sort();
    names
}

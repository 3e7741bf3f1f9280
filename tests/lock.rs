//! Lock files: Hub revisions pinned to commits (asked of a Hub on loopback, or read from the
//! local cache offline), `rkd update` moving them, `check --locked` and `run --locked` failing
//! when the pipeline, its inputs or its references disagree with the lock.

mod common;
use common::{key_of, Test};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};

const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";
const C3: &str = "3333333333333333333333333333333333333333";

/// A stand-in for the Hugging Face Hub's API: answers every revision lookup of `org/tiny` with
/// the commit it currently holds.
struct Hub {
    commit: Arc<Mutex<String>>,
    url: String,
}

impl Hub {
    fn start(commit: &str) -> Hub {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let commit = Arc::new(Mutex::new(commit.to_string()));
        let current = commit.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap_or_default();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let (status, body) = if request.starts_with("GET /api/models/org/tiny/revision/main") {
                    let sha = current.lock().unwrap().clone();
                    ("200 OK", format!("{{\"sha\": \"{sha}\", \"siblings\": []}}"))
                } else {
                    ("404 Not Found", "{\"error\": \"Repository not found\"}".to_string())
                };
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Hub { commit, url }
    }

    fn set(&self, commit: &str) {
        *self.commit.lock().unwrap() = commit.to_string();
    }
}

const PIPELINE: &str = "\
let data = synthetic_text(seed: 1, classes: 2, train_size: 32, val_size: 16, max_len: 16, vocab_size: 48)
stage tuned = train(model: hf(repo: \"org/tiny\"), data: data, epochs: 1)
stage score = eval(model: tuned, data: data)
";

fn plan(t: &Test) -> Value {
    let out = t.run_with(&["plan", "p.rkd", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

fn with_hub(t: Test, hub: &Hub) -> Test {
    let home = t.path().join("hf");
    t.env("HF_ENDPOINT", &hub.url).env("HF_HOME", home.to_str().unwrap())
}

#[test]
fn update_pins_the_hubs_commit_and_the_key_follows_the_pin() {
    let hub = Hub::start(C1);
    let t = with_hub(Test::new().file("p.rkd", PIPELINE), &hub);
    let out = t.run_with(&["update", "p.rkd"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("model org/tiny@main: pinned to 111111111111"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("wrote p.lock (1 pin, 2 stages)"), "{}", out.stdout);
    let lock = std::fs::read_to_string(t.path().join("p.lock")).unwrap();
    assert!(lock.contains(&format!("\"org/tiny@main\": \"{C1}\"")), "{lock}");
    let check = t.run_with(&["check", "--locked", "p.rkd"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(check.stdout.contains("agrees with its lock file"));
    let first = plan(&t);
    let tuned = common::by_name(&first, "tuned");
    assert_eq!(
        tuned["params"]["model"]["hf"]["revision"], C1,
        "the stage downloads the pinned commit: {tuned}"
    );

    // The Hub moves: the lock holds (no network needed to check it), until `rkd update`.
    hub.set(C2);
    assert_eq!(key_of(&plan(&t), "tuned"), key_of(&first, "tuned"));
    assert_eq!(t.run_with(&["check", "--locked", "p.rkd"]).code, 0);
    let out = t.run_with(&["update", "p.rkd"]);
    assert!(
        out.stdout.contains("model org/tiny@main: 111111111111 → 222222222222"),
        "{}",
        out.stdout
    );
    let moved = plan(&t);
    assert_ne!(key_of(&moved, "tuned"), key_of(&first, "tuned"));
    assert_ne!(
        key_of(&moved, "score"),
        key_of(&first, "score"),
        "what the model feeds moves too"
    );

    // The file changes: the lock disagrees, and a --locked run refuses.
    let t = t.file("p.rkd", &PIPELINE.replace("epochs: 1", "epochs: 2"));
    let check = t.run_with(&["check", "--locked", "p.rkd"]);
    assert_eq!(check.code, 1);
    assert!(check.stderr.contains("stage `tuned`: key"), "{}", check.stderr);
    assert!(check.stderr.contains("p.rkd disagrees with p.lock"), "{}", check.stderr);
    let run = t.run_with(&["run", "--locked", "p.rkd"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("nothing was run"), "{}", run.stderr);
}

#[test]
fn offline_the_local_cache_pins_and_without_it_the_error_says_what_to_do() {
    let t = Test::new().file("p.rkd", PIPELINE);
    let home = t.path().join("hf");
    let t = t.env("HF_HOME", home.to_str().unwrap()).env("HF_HUB_OFFLINE", "1");
    // Looking works offline (the stages keyed by the revision as written, with a warning);
    // running refuses: its results would be keyed by a name, not a commit.
    let out = t.run_with(&["plan", "p.rkd"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("warning: cannot resolve model org/tiny@main to a commit")
            && out
                .stderr
                .contains("keyed by the revision as written until it is pinned"),
        "{}",
        out.stderr
    );
    let out = t.run_with(&["run", "p.rkd"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("error: cannot resolve model org/tiny@main to a commit")
            && out.stderr.contains("revision:"),
        "{}",
        out.stderr
    );
    assert!(!t.path().join(".rkd/entries").exists(), "nothing ran");
    let refs = home.join("hub/models--org--tiny/refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join("main"), C3).unwrap();
    let out = t.run_with(&["plan", "p.rkd"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("pinned model org/tiny@main to 333333333333 (offline: the local cache's current commit)"),
        "{}",
        out.stderr
    );
    // A --locked check never resolves: without a lock file it fails.
    let check = t.run_with(&["check", "--locked", "p.rkd"]);
    assert_eq!(check.code, 1);
    assert!(check.stderr.contains("is not pinned in"), "{}", check.stderr);
}

#[test]
fn a_run_writes_the_lock_and_a_changed_input_is_named() {
    let t = Test::new().file("words.txt", "one two three\n").file(
        "p.rkd",
        "stage count = exec(cmd: \"wc -w < words.txt > $RKD_OUT/n.txt\", files: [\"words.txt\"])\n",
    );
    let out = t.run_with(&["run", "p.rkd"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("note: wrote"), "{}", out.stderr);
    let lock = std::fs::read_to_string(t.path().join("p.lock")).unwrap();
    assert!(
        lock.contains("\"words.txt\": ") && lock.contains("\"count\": "),
        "{lock}"
    );
    assert_eq!(t.run_with(&["check", "--locked", "p.rkd"]).code, 0);
    assert_eq!(t.run_with(&["run", "--locked", "p.rkd"]).code, 0);

    let t = t.file("words.txt", "one two three four\n");
    let check = t.run_with(&["check", "--locked", "p.rkd"]);
    assert_eq!(check.code, 1);
    assert!(check.stderr.contains("input `words.txt` changed"), "{}", check.stderr);
    // A plain run brings the lock up to date.
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    assert_eq!(t.run_with(&["check", "--locked", "p.rkd"]).code, 0);
}

//! Remote caches on a directory (a cluster's shared filesystem): a second store pulls what the
//! first pushed and runs nothing; a damaged remote copy is found and rerun; `rkd push`/`pull`;
//! rkd.toml and RKD_REMOTE; a read-only remote; killed uploads and downloads leave nothing
//! that is trusted.
// Test output to the harness: eprintln! is fine here (src/ uses crate::say!).
#![allow(clippy::disallowed_macros)]

mod common;
use common::server::LoopbackServer;
use common::{by_name, sorted, Test};
use serde_json::Value;
use std::path::{Path, PathBuf};

const PIPELINE: &str = common::SHARED_PIPELINE;

const NAMES: [&str; 4] = ["counted", "score", "teacher", "words"];

fn run_json(t: &Test, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["run", "p.rkd", "--json"];
    all.extend_from_slice(args);
    let out = t.run_with(&all);
    let json =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    (out.code, json, out.stderr)
}

fn plan(t: &Test, args: &[&str]) -> Value {
    let mut all = vec!["plan", "p.rkd", "--json"];
    all.extend_from_slice(args);
    let out = t.run_with(&all);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr))
}

fn status(plan: &Value, stage: &str) -> String {
    by_name(plan, stage)["status"].as_str().unwrap().to_string()
}

/// The remote record of a stage, and the blob of one of its files.
fn blob_of(t: &Test, remote: &str, store: &str, stage: &str, file: &str) -> PathBuf {
    let key = common::key_of(&plan(t, &["--store", store]), stage);
    let record: Value =
        serde_json::from_slice(&std::fs::read(t.path().join(remote).join(format!("entries/{key}.json"))).unwrap())
            .unwrap();
    let b3 = record["files"][file]["blake3"].as_str().unwrap().to_string();
    t.path().join(remote).join("blobs").join(&b3[..2]).join(&b3)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_second_store_pulls_every_stage_and_runs_none_and_a_damaged_copy_is_rerun() {
    let t = Test::new().file("p.rkd", PIPELINE);
    let (code, first, stderr) = run_json(&t, &["--store", "a", "--remote", "team", "--push"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sorted(&first["ran"]), NAMES);
    assert!(stderr.contains("pushed 4 results"), "{stderr}");
    assert_eq!(
        status(&plan(&t, &["--store", "b", "--remote", "team"]), "teacher"),
        "remote"
    );

    let out = t.run_with(&["run", "p.rkd", "--store", "b", "--remote", "team"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("pulled 4 stored results"), "{}", out.stderr);
    assert!(out.stdout.contains("0 ran, 4 pulled, 0 cached"), "{}", out.stdout);
    // The pulled model is the trained one, byte for byte, and eval's metrics came with it.
    for store in ["a", "b"] {
        let p = plan(&t, &["--store", store]);
        assert!(NAMES.iter().all(|n| status(&p, n) == "cached"), "{store}: {p}");
    }
    let key = common::key_of(&plan(&t, &["--store", "a"]), "teacher");
    let weights = |store: &str| {
        read(
            &t.path()
                .join(store)
                .join("entries")
                .join(&key)
                .join("out/model.safetensors"),
        )
    };
    assert_eq!(weights("a"), weights("b"));
    assert!(
        out.stdout.contains("accuracy"),
        "the eval's headline is shown: {}",
        out.stdout
    );

    // A damaged blob in the remote: detected, not trusted, the stage runs here; --push mends it.
    let blob = blob_of(&t, "team", "a", "teacher", "out/model.safetensors");
    let mut bytes = read(&blob);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let (code, third, stderr) = run_json(&t, &["--store", "c", "--remote", "team", "--push"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("the remote's copy of `teacher` is damaged")
            && stderr.contains("out/model.safetensors: content differs from its recorded blake3"),
        "{stderr}"
    );
    // Only the damaged stage runs: the evaluation of it (same key) is still a valid result.
    assert_eq!(sorted(&third["ran"]), ["teacher"], "{third}");
    assert_eq!(sorted(&third["pulled"]), ["counted", "score", "words"]);
    let (_, fourth, stderr) = run_json(&t, &["--store", "d", "--remote", "team"]);
    assert_eq!(sorted(&fourth["pulled"]), NAMES, "{stderr}");
    // The run record names the remote.
    let runs = t.path().join("d/runs");
    let record = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().as_encoded_bytes()[0].is_ascii_digit())
        .unwrap();
    let record: Value = serde_json::from_slice(&read(&record.path())).unwrap();
    assert_eq!(record["remote"], "team");
    assert_eq!(record["counts"]["pulled"], 4);
}

#[test]
fn push_and_pull_move_results_explicitly_and_the_config_file_names_the_remote() {
    let t = Test::new().file("p.rkd", PIPELINE);
    assert_eq!(
        t.run_with(&["run", "p.rkd", "--store", "a", "--only", "counted"]).code,
        0
    );
    let out = t.run_with(&["push", "p.rkd", "--store", "a", "--remote", "shared"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("2 pushed, 0 already in the remote, 0 failed; 2 of 4 stages not stored here"),
        "{}",
        out.stdout
    );
    let again = t.run_with(&["push", "p.rkd", "--store", "a", "--remote", "shared"]);
    assert!(
        again.stdout.contains("0 pushed, 2 already in the remote"),
        "{}",
        again.stdout
    );
    let out = t.run_with(&["pull", "p.rkd", "--store", "b", "--remote", "shared"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("2 pulled, 0 damaged in the remote, 0 failed; 2 of 4 stages in neither store"),
        "{}",
        out.stdout
    );
    assert_eq!(status(&plan(&t, &["--store", "b"]), "counted"), "cached");

    // rkd.toml beside the pipeline: the remote and push = true.
    let t = t.file("rkd.toml", "[remote]\nurl = \"shared\"\npush = true\n");
    let (code, run, stderr) = run_json(&t, &["--store", "c"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sorted(&run["pulled"]), ["counted", "words"]);
    assert_eq!(sorted(&run["ran"]), ["score", "teacher"]);
    assert!(stderr.contains("pushed 2 results"), "{stderr}");
    // --no-remote ignores it; RKD_REMOTE overrides it.
    let (_, none, _) = run_json(&t, &["--store", "d", "--no-remote", "-n"]);
    assert_eq!(sorted(&none["would_run"]), NAMES);
    let t = t.env("RKD_REMOTE", "elsewhere");
    let (_, other, _) = run_json(&t, &["--store", "e", "-n"]);
    assert_eq!(
        sorted(&other["would_run"]),
        NAMES,
        "the empty remote `elsewhere` was used"
    );
    // A config file with a typo says where.
    let t = t.file("rkd.toml", "[remote]\nulr = \"x\"\n");
    let out = t.run_with(&["plan", "p.rkd", "--no-remote"]);
    assert_eq!(out.code, 0, "--no-remote does not read it: {}", out.stderr);
    let t = Test::new()
        .file("p.rkd", PIPELINE)
        .file("rkd.toml", "[remote]\nulr = \"x\"\n");
    let out = t.run_with(&["run", "p.rkd"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("rkd.toml") && out.stderr.contains("ulr"),
        "{}",
        out.stderr
    );
}

/// A read-only HTTP server on loopback serving `dir` (Python's http.server: GET and HEAD only).
struct StaticServer {
    _server: LoopbackServer,
    url: String,
}

impl StaticServer {
    fn start(dir: &Path) -> StaticServer {
        let server = LoopbackServer::start(|port| {
            let mut cmd = std::process::Command::new("python3");
            cmd.args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(dir);
            cmd
        });
        let url = format!("http://127.0.0.1:{}/", server.port);
        StaticServer { _server: server, url }
    }
}

#[test]
fn a_read_only_remote_is_pulled_from_and_a_push_to_it_is_a_warning() {
    let t = Test::new().file("p.rkd", PIPELINE);
    let out = t.run_with(&[
        "run", "p.rkd", "--store", "a", "--remote", "team", "--push", "--only", "words",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The same remote served read-only over HTTP.
    let server = StaticServer::start(&t.path().join("team"));
    let (code, run, stderr) = run_json(
        &t,
        &["--store", "b", "--remote", &server.url, "--push", "--only", "counted"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sorted(&run["pulled"]), ["words"], "{stderr}");
    assert_eq!(sorted(&run["ran"]), ["counted"]);
    assert!(stderr.contains("warning: cannot push `counted`"), "{stderr}");
}

/// Waits until `found` says so, for at most 20 s.
fn wait_until(mut found: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !found() {
        assert!(t0.elapsed().as_secs() < 20, "never happened");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn any_file_under(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.path().is_file() || (e.path().is_dir() && any_file_under(&e.path())))
    })
}

/// A stage with a large output, so that its transfer can be killed half way.
const BIG: &str = "stage big = exec(cmd: \"head -c 48000000 /dev/urandom > $RKD_OUT/big.bin\")\n";

#[test]
fn a_killed_upload_or_download_leaves_nothing_that_is_trusted() {
    let t = Test::new().file("p.rkd", BIG);
    assert_eq!(t.run_with(&["run", "p.rkd", "--store", "a"]).code, 0);
    let mut push = t.spawn(&["push", "p.rkd", "--store", "a", "--remote", "team"]);
    wait_until(|| any_file_under(&t.path().join("team/blobs")));
    let killed_early = push.try_wait().unwrap().is_none();
    eprintln!("push killed early: {killed_early}");
    push.kill().unwrap();
    push.wait().unwrap();
    if killed_early {
        assert_eq!(status(&plan(&t, &["--store", "b", "--remote", "team"]), "big"), "run");
    }
    assert_eq!(
        t.run_with(&["push", "p.rkd", "--store", "a", "--remote", "team"]).code,
        0
    );

    let mut pull = t.spawn(&["pull", "p.rkd", "--store", "b", "--remote", "team"]);
    wait_until(|| any_file_under(&t.path().join("b/tmp")));
    let killed_early = pull.try_wait().unwrap().is_none();
    eprintln!("pull killed early: {killed_early}");
    pull.kill().unwrap();
    pull.wait().unwrap();
    if killed_early {
        assert_eq!(
            status(&plan(&t, &["--store", "b"]), "big"),
            "run",
            "a half download is no entry"
        );
    }
    let out = t.run_with(&["pull", "p.rkd", "--store", "b", "--remote", "team"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(status(&plan(&t, &["--store", "b"]), "big"), "cached");
    assert!(
        !any_file_under(&t.path().join("b/tmp")),
        "the killed download's leftovers were removed"
    );
    let key = common::key_of(&plan(&t, &["--store", "a"]), "big");
    let file = |s: &str| read(&t.path().join(s).join("entries").join(&key).join("out/big.bin"));
    assert!(file("a") == file("b"));
}

#[test]
fn with_push_a_result_is_in_the_remote_while_later_stages_still_run() {
    // `b` waits (at most 10 s) until the remote holds one record, then counts the records.
    let t = Test::new().file(
        "p.rkd",
        "stage a = exec(cmd: \"echo first > $RKD_OUT/a.txt\")\n\
         stage b = exec(cmd: \"for i in $(seq 200); do ls team/entries/*.json >/dev/null 2>&1 && break; sleep 0.05; done; \
         ls team/entries 2>/dev/null | wc -l > $RKD_OUT/seen.txt\", inputs: [a])\n",
    );
    let (code, run, stderr) = run_json(&t, &["--remote", "team", "--push"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sorted(&run["ran"]), ["a", "b"]);
    assert!(stderr.contains("pushed 2 results"), "{stderr}");
    let key = common::key_of(&plan(&t, &[]), "b");
    let seen = std::fs::read_to_string(t.path().join(".rkd/entries").join(key).join("out/seen.txt")).unwrap();
    assert_eq!(seen.trim(), "1", "`a` was pushed before `b` finished");
}

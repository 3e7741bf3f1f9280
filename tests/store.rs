//! The store never trusts a wrong result: commands get absolute paths, die with rkd, cannot
//! change what they read; damaged entries are moved aside and rerun; gc leaves running
//! pipelines' entries alone; a vanished lock directory is made again.

mod common;
use common::{key_of, sorted, wait_for, Test};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn run_json(t: &Test, args: &[&str]) -> (i32, Value, String) {
    let out = t.run_with(args);
    let json =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    (out.code, json, out.stderr)
}

fn plan(t: &Test, file: &str, store: Option<&str>) -> Value {
    let mut args = vec!["plan", file, "--json"];
    if let Some(s) = store {
        args.extend(["--store", s]);
    }
    let out = t.run_with(&args);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr))
}

fn entry(t: &Test, store: &str, file: &str, stage: &str) -> PathBuf {
    let key = key_of(&plan(t, file, Some(store)), stage);
    t.path().join(store).join("entries").join(key)
}

fn lines(path: &Path) -> Vec<String> {
    let mut xs: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    xs.sort();
    xs
}

const CHAIN: &str = "stage s = exec(cmd: \"mkdir -p $RKD_OUT && echo hi > $RKD_OUT/f.txt\")\n\
                     stage t = exec(cmd: \"cat $RKD_INPUTS/f.txt > $RKD_OUT/g.txt\", inputs: [s])\n";

#[test]
fn exec_stages_run_from_another_directory_store_their_outputs() {
    let t = Test::new().file("d/p.rkd", CHAIN);
    let abs_store = t.path().join("abs-store");
    let abs = abs_store.to_str().unwrap();
    for (store, shown) in [(None, "d/.rkd"), (Some("rel-store"), "rel-store"), (Some(abs), abs)] {
        let mut args = vec!["run", "d/p.rkd", "--json"];
        if let Some(s) = store {
            args.extend(["--store", s]);
        }
        let (code, res, err) = run_json(&t, &args);
        assert_eq!(code, 0, "store {shown}: {err}");
        assert_eq!(sorted(&res["ran"]), ["s", "t"], "store {shown}");
        let g = entry(&t, shown, "d/p.rkd", "t").join("out/g.txt");
        assert_eq!(std::fs::read_to_string(&g).unwrap(), "hi\n", "store {shown}");
        let verify = t.run_with(&["verify", "--store", shown]);
        assert_eq!(verify.code, 0, "{}", verify.stdout);
    }
    // Nothing landed beside the pipeline in a store-shaped folder of its own.
    assert!(!t.path().join("d/d").exists());
    assert!(!t.path().join("d/rel-store").exists());
}

#[test]
fn a_killed_run_leaves_no_command_behind_and_the_rerun_runs_the_stage_once() {
    // The command starts a subshell that outlives its shell; it writes when it is done.
    let t = Test::new().file(
        "p.rkd",
        "stage s = exec(cmd: \"echo start >> starts.log; (sleep 1.5; echo finished >> starts.log; echo x > $RKD_OUT/x) & touch started; wait\")\n",
    );
    let mut child = t.spawn(&["run", "p.rkd"]);
    wait_for(&t.path().join("started"));
    child.kill().unwrap(); // kill -9: rkd gets no chance to clean up
    child.wait().unwrap();
    std::fs::remove_file(t.path().join("started")).unwrap();
    let out = t.run_with(&["run", "p.rkd", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Let any survivor of the first run finish what it would have written.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        lines(&t.path().join("starts.log")),
        ["finished", "start", "start"],
        "the first run's command was stopped before the rerun ran the stage"
    );
    assert_eq!(t.run_with(&["verify"]).code, 0);
    let tmp: Vec<_> = std::fs::read_dir(t.path().join(".rkd/tmp"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        tmp.is_empty(),
        "nothing recreated the killed run's work directory: {tmp:?}"
    );
}

#[test]
fn stored_entries_are_read_only() {
    let t = Test::new().file("p.rkd", CHAIN);
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    let e = entry(&t, ".rkd", "p.rkd", "s");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&e.join("out/f.txt")), 0o444);
    assert_eq!(mode(&e.join("manifest.json")), 0o444);
    assert_eq!(mode(&e.join("out")), 0o555);
    assert_eq!(mode(&e), 0o555);
}

/// Flips one byte of a stored file (same size, new modification time).
fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[0] ^= 1;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_entry_is_moved_aside_and_rerun_even_when_nothing_reads_it() {
    let t = Test::new().file("p.rkd", CHAIN);
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    flip_byte(&entry(&t, ".rkd", "p.rkd", "s").join("out/f.txt"));
    assert_eq!(t.run_with(&["verify"]).code, 1);
    // `plan` and `status` check what they call stored as `run` does, and touch nothing.
    let planned = t.run_with(&["plan", "p.rkd"]);
    assert!(
        planned
            .stdout
            .contains("stored result is damaged (out/f.txt: content changed)"),
        "{}",
        planned.stdout
    );
    let status = t.run_with(&["status", "p.rkd"]);
    let row = |name: &str| {
        status
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("s ").contains(" damaged "), "{}", status.stdout);
    assert!(row("t ").contains(" yes "), "{}", status.stdout);
    let (code, res, err) = run_json(&t, &["run", "p.rkd", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("the stored result of `s` is damaged (out/f.txt: content changed)"),
        "{err}"
    );
    assert!(err.contains("moved aside"), "{err}");
    assert_eq!(sorted(&res["ran"]), ["s"]);
    assert_eq!(sorted(&res["cached"]), ["t"]);
    let verify = t.run_with(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert_eq!(std::fs::read_dir(t.path().join(".rkd/damaged")).unwrap().count(), 1);
    // gc empties damaged/.
    let gc = t.run_with(&["gc", "--keep", "p.rkd"]);
    assert!(gc.stdout.contains("and 1 damaged entry"), "{}", gc.stdout);
    assert_eq!(std::fs::read_dir(t.path().join(".rkd/damaged")).unwrap().count(), 0);
}

#[test]
fn reruns_check_through_the_manifest_cache_and_still_find_damage() {
    let t = Test::new().file("p.rkd", CHAIN);
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    // The run remembered what it stored: one cache file for the pipeline.
    let caches = t.path().join(".rkd/cache/manifests");
    assert_eq!(std::fs::read_dir(&caches).unwrap().count(), 1);
    for _ in 0..2 {
        let (code, res, err) = run_json(&t, &["run", "p.rkd", "--json"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(sorted(&res["cached"]), ["s", "t"]);
    }
    // Damage found after no-op reruns: a changed byte, then a file added to an output.
    flip_byte(&entry(&t, ".rkd", "p.rkd", "t").join("out/g.txt"));
    let (code, res, err) = run_json(&t, &["run", "p.rkd", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sorted(&res["ran"]), ["t"]);
    assert!(err.contains("out/g.txt: content changed"), "{err}");
    let s = entry(&t, ".rkd", "p.rkd", "s");
    std::fs::set_permissions(s.join("out"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(s.join("out/extra.txt"), "x").unwrap();
    let (code, res, err) = run_json(&t, &["run", "p.rkd", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sorted(&res["ran"]), ["s"]);
    assert!(err.contains("out/extra.txt: not in the manifest"), "{err}");
    // A garbled cache is ignored (and rewritten), never trusted.
    for f in std::fs::read_dir(&caches).unwrap() {
        std::fs::write(f.unwrap().path(), "garbage").unwrap();
    }
    let (code, res, err) = run_json(&t, &["run", "p.rkd", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sorted(&res["cached"]), ["s", "t"]);
    assert_eq!(t.run_with(&["verify"]).code, 0);
}

#[test]
fn an_entry_without_a_valid_manifest_is_absent_and_rebuilt() {
    let t = Test::new().file("p.rkd", CHAIN);
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    // A truncated manifest, and a removed one.
    let s = entry(&t, ".rkd", "p.rkd", "s");
    let t_entry = entry(&t, ".rkd", "p.rkd", "t");
    for dir in [&s, &t_entry] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let m = s.join("manifest.json");
    let text = std::fs::read(&m).unwrap();
    std::fs::remove_file(&m).unwrap();
    std::fs::write(&m, &text[..text.len() / 2]).unwrap();
    std::fs::remove_file(t_entry.join("manifest.json")).unwrap();
    assert_eq!(plan(&t, "p.rkd", None)["stages"][0]["status"], "run");
    let (code, res, err) = run_json(&t, &["run", "p.rkd", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sorted(&res["ran"]), ["s", "t"]);
    let (code, res, _) = run_json(&t, &["run", "p.rkd", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        sorted(&res["cached"]),
        ["s", "t"],
        "the rebuilt entries are trusted again"
    );
    assert_eq!(t.run_with(&["verify"]).code, 0);
}

#[test]
fn verify_hashes_what_the_cheap_check_cannot_see() {
    let t = Test::new().file("p.rkd", CHAIN);
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    let f = entry(&t, ".rkd", "p.rkd", "s").join("out/f.txt");
    let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
    flip_byte(&f);
    // Same size, and the old modification time put back: only hashing can tell.
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (_, cheap, _) = run_json(&t, &["run", "p.rkd", "--json"]);
    assert_eq!(sorted(&cheap["cached"]), ["s", "t"]);
    let (code, hashed, err) = run_json(&t, &["run", "p.rkd", "--json", "--verify"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sorted(&hashed["ran"]), ["s"]);
    assert!(err.contains("out/f.txt: content changed"), "{err}");
}

#[test]
fn a_stage_that_writes_into_its_input_does_not_change_the_store() {
    let t = Test::new().file(
        "p.rkd",
        "stage s = exec(cmd: \"echo hi > $RKD_OUT/f.txt\")\n\
         stage t = exec(cmd: \"echo tampered >> $RKD_INPUTS/f.txt || true; echo y > $RKD_OUT/y\", inputs: [s])\n",
    );
    let out = t.run_with(&["run", "p.rkd"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root writes through read-only permissions; rkd sees the change after the stage.
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stderr.contains("the stage changed its input `s`"), "{}", out.stderr);
    } else {
        assert_eq!(out.code, 0, "the write was refused: {}", out.stderr);
    }
    let verify = t.run_with(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    if let Ok(text) = std::fs::read_to_string(entry(&t, ".rkd", "p.rkd", "s").join("out/f.txt")) {
        assert_eq!(text, "hi\n");
    }
}

#[test]
fn symlinks_in_an_output_are_stored_as_contents() {
    let t = Test::new().file("outside.txt", "data\n").file(
        "p.rkd",
        "stage s = exec(cmd: \"ln -s $PWD/outside.txt $RKD_OUT/link; ln -s link $RKD_OUT/rel\")\n\
         stage bad = exec(cmd: \"ln -s $PWD/nowhere.txt $RKD_OUT/gone\")\n",
    );
    let out = t.run_with(&["run", "p.rkd", "--keep-going"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("stage `bad` (exec) failed"), "{}", out.stderr);
    assert!(out.stderr.contains("out/gone is a symlink to"), "{}", out.stderr);
    assert!(out.stderr.contains("which does not exist"), "{}", out.stderr);
    let out = entry(&t, ".rkd", "p.rkd", "s").join("out");
    for name in ["link", "rel"] {
        let meta = std::fs::symlink_metadata(out.join(name)).unwrap();
        assert!(meta.is_file(), "{name} is stored as a file");
        assert_eq!(std::fs::read_to_string(out.join(name)).unwrap(), "data\n");
    }
    // The outside file changing later does not touch the entry.
    std::fs::write(t.path().join("outside.txt"), "other\n").unwrap();
    assert_eq!(t.run_with(&["verify"]).code, 0);
}

#[test]
fn gc_during_a_run_keeps_what_the_run_reads() {
    let t = Test::new()
        .file("other.rkd", "stage z = exec(cmd: \"echo z > $RKD_OUT/z\")\n")
        .file(
            "p.rkd",
            "stage u = exec(cmd: \"echo u > $RKD_OUT/u.txt\")\n\
             stage w = exec(cmd: \"touch started; while [ ! -f go ]; do sleep 0.05; done; cat $RKD_INPUTS/u.txt > $RKD_OUT/w.txt\", inputs: [u])\n",
        );
    assert_eq!(t.run_with(&["run", "other.rkd"]).code, 0);
    let mut run = t.spawn(&["run", "p.rkd"]);
    wait_for(&t.path().join("started"));
    // The last recorded run is other.rkd's: only the running pipeline's lease keeps `u`.
    let gc = t.run_with(&["gc", "--keep-runs", "1"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(gc.stdout.contains("in use by running pipelines"), "{}", gc.stdout);
    std::fs::write(t.path().join("go"), "").unwrap();
    assert!(run.wait().unwrap().success(), "the run read its input");
    let w = entry(&t, ".rkd", "p.rkd", "w").join("out/w.txt");
    assert_eq!(std::fs::read_to_string(w).unwrap(), "u\n");
    // With the run over, its entries are no longer in use.
    let gc = t.run_with(&["gc", "--keep-runs", "1", "--dry-run"]);
    assert!(!gc.stdout.contains("in use"), "{}", gc.stdout);
}

#[test]
fn gc_keeps_what_a_pipelines_recorded_run_used() {
    let t = Test::new().file(
        "e.rkd",
        "stage s = exec(cmd: \"echo $RKD_PARAM_V > $RKD_OUT/x\", params: {v: env(name: \"RKD_TEST_V\", default: \"plain\")})\n",
    );
    let t = t.env("RKD_TEST_V", "special");
    assert_eq!(t.run_with(&["run", "e.rkd"]).code, 0);
    // gc runs in a shell without the variable: the plan it computes has another key.
    let gc = Command::new(env!("CARGO_BIN_EXE_rkd"))
        .args(["gc", "--keep", "e.rkd"])
        .current_dir(t.path())
        .env_remove("RKD_STORE")
        .env_remove("RKD_TEST_V")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&gc.stdout);
    assert!(stdout.contains("removed 0 entries"), "{stdout}");
    let (_, res, _) = run_json(&t, &["run", "e.rkd", "--json"]);
    assert_eq!(sorted(&res["cached"]), ["s"]);
}

#[test]
fn runs_go_on_when_the_lock_directory_is_removed_under_them() {
    let mut src = String::new();
    for i in 0..6 {
        src.push_str(&format!(
            "stage s{i} = exec(cmd: \"sleep 0.3; echo s{i} > $RKD_OUT/x\")\n"
        ));
    }
    src.push_str("stage all = exec(cmd: \"echo all > $RKD_OUT/x\", inputs: [s0, s1, s2, s3, s4, s5])\n");
    let t = Test::new().file("p.rkd", &src);
    let mut a = t.spawn_capturing(&["run", "p.rkd", "-j", "2"]);
    let mut b = t.spawn_capturing(&["run", "p.rkd", "-j", "2"]);
    let locks = t.path().join(".rkd/locks");
    // Remove it over and over while both runs are going (try_wait keeps a finished one's status).
    while a.try_wait().unwrap().is_none() || b.try_wait().unwrap().is_none() {
        let _ = std::fs::remove_dir_all(&locks);
        std::thread::sleep(Duration::from_millis(1));
    }
    for (run, child) in [("first run", a), ("second run", b)] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{run}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(t.run_with(&["verify"]).code, 0);
    let (_, res, _) = run_json(&t, &["run", "p.rkd", "--json"]);
    assert_eq!(sorted(&res["cached"]).len(), 7);
}

#[test]
fn what_a_command_leaves_running_is_stopped_when_it_ends() {
    let t = Test::new().file(
        "p.rkd",
        "stage s = exec(cmd: \"(sleep 0.5; echo late > $RKD_OUT/late; echo late >> late.log) & echo x > $RKD_OUT/x\")\n",
    );
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!t.path().join("late.log").exists(), "the background job was stopped");
    assert_eq!(t.run_with(&["verify"]).code, 0);
}

#[test]
fn a_file_where_the_store_or_its_folders_should_be_is_an_error_naming_it() {
    let t = Test::new()
        .file("p.rkd", "stage a = exec(cmd: \"true\")\n")
        .file("somefile", "");
    let out = t.run_with(&["plan", "p.rkd", "--store", "somefile"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("somefile is not a folder"), "{}", out.stderr);
    assert!(out.stderr.contains("help:"), "{}", out.stderr);
    std::fs::create_dir(t.path().join(".rkd")).unwrap();
    std::fs::write(t.path().join(".rkd/entries"), "").unwrap();
    for args in [&["run", "p.rkd"][..], &["gc", "--keep", "p.rkd"]] {
        let out = t.run_with(args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("layout is damaged") && out.stderr.contains(".rkd/entries should be a folder"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn gc_errors_name_the_path_and_how_to_go_on() {
    let t = Test::new().file("p.rkd", "stage a = exec(cmd: \"echo 1 > $RKD_OUT/x\")\n");
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    let key = key_of(&plan(&t, "p.rkd", None), "a");
    std::fs::write(t.path().join("p.rkd"), "stage a = exec(cmd: \"echo 2 > $RKD_OUT/x\")\n").unwrap();
    assert_eq!(t.run_with(&["run", "p.rkd"]).code, 0);
    // The old entry's lock cannot be taken: something that is not a file stands in its place.
    let lock = t.path().join(".rkd/locks").join(format!("{key}.lock"));
    let _ = std::fs::remove_file(&lock);
    std::fs::create_dir_all(&lock).unwrap();
    let out = t.run_with(&["gc", "--keep", "p.rkd"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("cannot clean the store"), "{}", out.stderr);
    assert!(out.stderr.contains(".rkd/locks: "), "{}", out.stderr);
    assert!(out.stderr.contains("help:"), "{}", out.stderr);
}

/// A mistyped store is an error for gc, as for verify, and is not made.
#[test]
fn gc_of_a_store_that_does_not_exist_is_an_error() {
    let t = Test::new();
    let out = t.run_with(&["gc", "--keep-runs", "1", "--store", "nowhere"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains("there is no store at ") && out.stderr.contains("nowhere"),
        "{}",
        out.stderr
    );
    assert!(!t.path().join("nowhere").exists());
}

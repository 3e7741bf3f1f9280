//! The S3 remote against a real S3-compatible server on loopback (moto's server mode, which
//! `.ci/run` installs and names in RKD_MOTO_SERVER): two stores share it, a damaged object is
//! found and rerun, two pushers of one key leave one valid entry, and the credentials never
//! appear in what rkd prints or stores.
// Test output to the harness: eprintln! is fine here (src/ uses crate::say!).
#![allow(clippy::disallowed_macros)]

mod common;
use common::server::LoopbackServer;
use common::{sorted, Test};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;

const BUCKET: &str = "rkd-test";
const SECRET: &str = "moto-secret-that-must-never-be-printed";

/// moto's S3 server on a loopback port of its own, stopped when dropped.
struct Moto {
    server: LoopbackServer,
}

impl Moto {
    /// Started from RKD_MOTO_SERVER; `None` (the test says it is skipped) when that is unset.
    fn start() -> Option<Moto> {
        let Some(program) = std::env::var_os("RKD_MOTO_SERVER") else {
            eprintln!("skipped: RKD_MOTO_SERVER is not set (.ci/run installs moto and sets it)");
            return None;
        };
        let server = LoopbackServer::start(|port| {
            let mut cmd = std::process::Command::new(&program);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            cmd
        });
        let moto = Moto { server };
        // Public: the test reads and damages objects with plain requests.
        let (status, body) = moto.http("PUT", &format!("/{BUCKET}"), &[], &[("x-amz-acl", "public-read-write")]);
        assert_eq!(status, 200, "creating the bucket: {}", String::from_utf8_lossy(&body));
        Some(moto)
    }

    /// One plain HTTP request (moto accepts unsigned ones): status and body.
    fn http(&self, method: &str, path: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.server.port)).unwrap();
        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            self.server.port,
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response") + 4;
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let mut body = raw[split..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        (status, body)
    }

    /// The test's environment for rkd: credentials and the endpoint, as a user sets them.
    fn env(&self, t: Test) -> Test {
        t.env("AWS_ACCESS_KEY_ID", "AKIAMOTOTEST")
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{}", self.server.port))
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&body[..line]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&body[line + 2..line + 2 + n]);
        body = &body[line + 2 + n + 2..];
    }
}

const PIPELINE: &str = common::SHARED_PIPELINE;

fn run(t: &Test, store: &str, remote: &str, extra: &[&str], said: &mut String) -> Value {
    let mut args = vec!["run", "p.rkd", "--json", "--store", store, "--remote", remote];
    args.extend_from_slice(extra);
    let out = t.run_with(&args);
    said.push_str(&out.stdout);
    said.push_str(&out.stderr);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    serde_json::from_str(out.stdout.trim()).unwrap()
}

/// Every file's bytes under `dir`, concatenated (to look for a secret in them).
fn all_bytes(dir: &Path, out: &mut Vec<u8>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_bytes(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
}

#[test]
fn two_stores_share_an_s3_remote_and_a_damaged_object_is_rerun() {
    let Some(moto) = Moto::start() else { return };
    let t = moto.env(Test::new().file("p.rkd", PIPELINE));
    let remote = format!("s3://{BUCKET}/team/cache");
    let mut said = String::new();
    let first = run(&t, "a", &remote, &["--push"], &mut said);
    assert_eq!(sorted(&first["ran"]), ["counted", "score", "teacher", "words"]);
    let second = run(&t, "b", &remote, &[], &mut said);
    assert_eq!(
        sorted(&second["pulled"]),
        ["counted", "score", "teacher", "words"],
        "{said}"
    );
    assert_eq!(sorted(&second["ran"]), Vec::<String>::new());

    // Damage the trained model's object in the bucket.
    let plan: Value = serde_json::from_str(&t.run_with(&["plan", "p.rkd", "--json", "--store", "a"]).stdout).unwrap();
    let key = common::key_of(&plan, "teacher");
    let (status, record) = moto.http("GET", &format!("/{BUCKET}/team/cache/entries/{key}.json"), &[], &[]);
    assert_eq!(status, 200);
    let record: Value = serde_json::from_slice(&record).unwrap();
    let b3 = record["files"]["out/model.safetensors"]["blake3"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = format!("/{BUCKET}/team/cache/blobs/{}/{b3}", &b3[..2]);
    let (_, mut bytes) = moto.http("GET", &blob, &[], &[]);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    assert_eq!(moto.http("PUT", &blob, &bytes, &[]).0, 200);

    let before = said.len();
    let third = run(&t, "c", &remote, &["--push"], &mut said);
    assert!(
        said[before..].contains("the remote's copy of `teacher` is damaged"),
        "{said}"
    );
    assert_eq!(sorted(&third["ran"]), ["teacher"]);
    let fourth = run(&t, "d", &remote, &[], &mut said);
    assert_eq!(
        sorted(&fourth["pulled"]),
        ["counted", "score", "teacher", "words"],
        "mended: {said}"
    );

    // The secret key is in no output and no file of any store.
    assert!(!said.contains(SECRET));
    let mut stored = Vec::new();
    for s in ["a", "b", "c", "d"] {
        all_bytes(&t.path().join(s), &mut stored);
    }
    assert!(
        !stored.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "a store holds the secret"
    );
}

#[test]
fn two_pushers_of_one_key_at_once_leave_one_valid_entry() {
    let Some(moto) = Moto::start() else { return };
    // One key, different bytes on each machine (a time stamp and noise).
    let t = moto.env(Test::new().file(
        "p.rkd",
        "stage n = exec(cmd: \"date +%s%N > $RKD_OUT/when.txt; head -c 8000000 /dev/urandom > $RKD_OUT/noise.bin\")\n",
    ));
    let remote = format!("s3://{BUCKET}/race");
    for s in ["a", "b"] {
        assert_eq!(t.run_with(&["run", "p.rkd", "--store", s]).code, 0);
    }
    let mut pushers: Vec<_> = ["a", "b"]
        .iter()
        .map(|s| t.spawn(&["push", "p.rkd", "--store", s, "--remote", &remote]))
        .collect();
    for p in &mut pushers {
        assert!(p.wait().unwrap().success());
    }
    let out = t.run_with(&["pull", "p.rkd", "--store", "c", "--remote", &remote]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("1 pulled, 0 damaged"), "{}", out.stdout);
    let plan: Value = serde_json::from_str(&t.run_with(&["plan", "p.rkd", "--json", "--store", "c"]).stdout).unwrap();
    let key = common::key_of(&plan, "n");
    let noise = |s: &str| std::fs::read(t.path().join(s).join("entries").join(&key).join("out/noise.bin")).unwrap();
    let when = |s: &str| std::fs::read(t.path().join(s).join("entries").join(&key).join("out/when.txt")).unwrap();
    let from_a = noise("c") == noise("a") && when("c") == when("a");
    let from_b = noise("c") == noise("b") && when("c") == when("b");
    assert!(from_a ^ from_b, "the entry is one pusher's, whole");
}

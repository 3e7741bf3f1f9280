use super::*;
use crate::plan::fingerprint::Fingerprinter;

fn compiled(src: &str) -> Vec<StageDef> {
    let c = crate::compile::compile_source("p.rkd", Path::new("p.rkd"), src.into());
    assert!(c.diags.is_empty(), "{:?}", c.diags);
    c.stages
}

fn plan_of(stages: Vec<StageDef>) -> Plan {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fingerprinter::load(&dir.path().join("stat-cache.json"));
    Plan::from_stages(stages, &mut f).unwrap()
}

const SRC: &str = "let t = synthetic_text(seed: 1)\n\
    stage a = train(model: hf(repo: \"org/m\"), data: t)\n\
    stage b = train(model: hf(repo: \"org/m\", revision: \"0123456789abcdef0123456789abcdef01234567\"), data: t)\n\
    stage c = eval(model: a, data: glue(task: \"sst2\"))\n";

const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";

#[test]
fn moving_references_are_found_once_and_commits_are_not_moving() {
    let refs = pins::moving_refs(&compiled(SRC));
    let names: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
    assert_eq!(names, ["model org/m@main", "dataset nyu-mll/glue@main"]);
}

#[test]
fn a_pin_becomes_the_revision_and_changing_it_changes_the_key() {
    let model = HubRef {
        kind: HubKind::Model,
        repo: "org/m".into(),
        revision: "main".into(),
    };
    let glue = HubRef {
        kind: HubKind::Dataset,
        repo: pins::GLUE_REPO.into(),
        revision: "main".into(),
    };
    let keys = |commit: &str| {
        let mut stages = compiled(SRC);
        let pins = BTreeMap::from([(model.clone(), commit.to_string()), (glue.clone(), C1.to_string())]);
        pins::apply(&mut stages, &pins);
        let spec = match &stages[0].params["model"] {
            crate::value::Value::Spec(s) => s.clone(),
            v => panic!("{v:?}"),
        };
        assert!(matches!(&spec.params["revision"], crate::value::Value::Str(r) if &**r == commit));
        let plan = plan_of(stages);
        let lock = LockFile::of(&plan, &pins);
        assert_eq!(lock.models["org/m@main"], commit);
        assert_eq!(lock.datasets["nyu-mll/glue@main"], C1);
        plan.stages().map(|s| s.key).collect::<Vec<_>>()
    };
    let (k1, k2) = (keys(C1), keys(C2));
    assert_ne!(k1[0], k2[0], "the pinned model's stage");
    assert_ne!(k1[2], k2[2], "and what it feeds");
    assert_eq!(k1[1], k2[1], "a stage of a commit written in the file is not moved");
}

#[test]
fn the_lock_reads_back_and_says_how_the_pipeline_moved_away_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("exp.rkd");
    let mut lock = LockFile {
        version: VERSION,
        ..Default::default()
    };
    lock.models.insert("org/m@main".into(), C1.into());
    lock.data.insert("data".into(), "aa".repeat(32));
    lock.stages.insert("a".into(), "bb".repeat(32));
    assert!(lock.write_if_changed(&path_for(&pipeline)).unwrap());
    assert!(
        !lock.write_if_changed(&path_for(&pipeline)).unwrap(),
        "same text: not rewritten"
    );
    let text = std::fs::read_to_string(dir.path().join("exp.lock")).unwrap();
    assert!(text.contains(&format!("\"org/m@main\": \"{C1}\"")), "{text}");
    assert_eq!(LockFile::read(&path_for(&pipeline)).unwrap(), Some(lock.clone()));
    assert!(lock.differences(&lock).is_empty());

    let mut now = lock.clone();
    now.models.insert("org/m@main".into(), C2.into());
    now.models.insert("org/n@v1".into(), C2.into());
    now.data.insert("data".into(), "cc".repeat(32));
    now.stages.remove("a");
    now.stages.insert("b".into(), "dd".repeat(32));
    assert_eq!(
        lock.differences(&now),
        [
            "model org/m@main: pinned to 111111111111, now 222222222222",
            "model org/n@v1 is not pinned",
            "input `data` changed: aaaaaaaaaaaa in the lock, cccccccccccc now",
            "stage `b` is not in the lock (new)",
            "stage `a` is in the lock but no longer in the pipeline",
        ]
    );
    std::fs::write(path_for(&pipeline), "{\"version\": 1, \"modles\": {}}\n").unwrap();
    let e = LockFile::read(&path_for(&pipeline)).unwrap_err();
    assert!(e.contains("not a valid lock file") && e.contains("modles"), "{e}");
}

#[test]
fn locked_mode_refuses_a_reference_the_lock_does_not_pin() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("exp.rkd");
    let mut stages = compiled("stage a = train(model: hf(repo: \"org/m\"), data: synthetic_text(seed: 1))\n");
    let e = pin(&pipeline, &mut stages, Mode::Locked).unwrap_err();
    assert!(e[0].contains("model org/m@main is not pinned"), "{e:?}");
    let mut lock = LockFile {
        version: VERSION,
        ..Default::default()
    };
    lock.models.insert("org/m@main".into(), C1.into());
    lock.write_if_changed(&path_for(&pipeline)).unwrap();
    let pinned = pin(&pipeline, &mut stages, Mode::Locked).unwrap();
    assert_eq!(pinned.pins.values().collect::<Vec<_>>(), [C1]);
    assert!(pinned.resolved.is_empty(), "nothing was asked of the Hub");
}

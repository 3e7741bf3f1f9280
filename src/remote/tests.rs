use super::*;
use crate::store::writer::EntryWriter;

fn key(n: u8) -> Key {
    *blake3::hash(&[n]).as_bytes()
}

/// Stores an entry with `out/model.bin` (`content`) and a log.
fn stored(store: &Store, k: &Key, content: &[u8]) {
    let w = EntryWriter::create(store, k).unwrap();
    std::fs::write(w.out_dir().join("model.bin"), content).unwrap();
    std::fs::create_dir_all(w.out_dir().join("tokenizer")).unwrap();
    std::fs::write(w.out_dir().join("tokenizer/vocab.txt"), "[PAD]\n[UNK]\n").unwrap();
    w.write("log.txt", b"trained\n").unwrap();
    w.commit().unwrap();
}

fn dirs() -> (tempfile::TempDir, Store, Store, Remote) {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::at(&dir.path().join("a"));
    let b = Store::at(&dir.path().join("b"));
    let remote = Remote::open("remote", dir.path()).unwrap();
    (dir, a, b, remote)
}

#[test]
fn a_pushed_entry_is_pulled_into_another_store_byte_for_byte() {
    let (_dir, a, b, remote) = dirs();
    let k = key(1);
    stored(&a, &k, b"weights");
    assert_eq!(remote.holds(&[k]).unwrap(), [false]);
    let pushed = remote.push(&a, &[(k, false)], |_, _| {});
    assert!(matches!(pushed[0], Ok(Pushed::Done(n)) if n > 0), "{pushed:?}");
    assert_eq!(remote.holds(&[k, key(2)]).unwrap(), [true, false]);
    // Pushing again uploads nothing.
    assert!(matches!(
        remote.push(&a, &[(k, false)], |_, _| {})[0],
        Ok(Pushed::Already)
    ));

    let pulled = remote.pull(&b, &[k, key(2)], |_, _| {});
    assert!(matches!(pulled[0], Ok(Pulled::Done(_))), "{pulled:?}");
    assert!(matches!(pulled[1], Ok(Pulled::Missing)));
    assert!(b.contains(&k));
    assert!(Manifest::verify(&b.entry_dir(&k)).is_empty());
    for f in ["out/model.bin", "out/tokenizer/vocab.txt", "log.txt"] {
        assert_eq!(
            std::fs::read(a.entry_dir(&k).join(f)).unwrap(),
            std::fs::read(b.entry_dir(&k).join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(matches!(remote.pull(&b, &[k], |_, _| {})[0], Ok(Pulled::Already)));
}

/// The blob of `out/model.bin` in the remote directory.
fn model_blob(dir: &Path, store: &Store, k: &Key) -> std::path::PathBuf {
    let m = Manifest::read(&store.entry_dir(k)).unwrap();
    let b3 = &m.files["out/model.bin"].blake3;
    dir.join("remote/blobs").join(&b3[..2]).join(b3)
}

#[test]
fn a_damaged_or_missing_blob_is_reported_and_nothing_enters_the_store() {
    let (dir, a, b, remote) = dirs();
    let k = key(1);
    stored(&a, &k, b"weights");
    remote.push(&a, &[(k, false)], |_, _| {});
    let blob = model_blob(dir.path(), &a, &k);
    std::fs::write(&blob, b"weighTs").unwrap();
    match &remote.pull(&b, &[k], |_, _| {})[0] {
        Err(RemoteError::Damaged(p)) => assert_eq!(p, &["out/model.bin: content differs from its recorded blake3"]),
        other => panic!("{other:?}"),
    }
    assert!(!b.contains(&k));
    assert_eq!(std::fs::read_dir(b.tmp_dir()).unwrap().count(), 0, "no half entry left");

    std::fs::write(&blob, b"weights, and more").unwrap();
    match &remote.pull(&b, &[k], |_, _| {})[0] {
        Err(RemoteError::Damaged(p)) => assert!(p[0].contains("more than the 7 bytes"), "{p:?}"),
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(&blob).unwrap();
    match &remote.pull(&b, &[k], |_, _| {})[0] {
        Err(RemoteError::Damaged(p)) => assert_eq!(p, &["out/model.bin: missing from the remote"]),
        other => panic!("{other:?}"),
    }
    // A push that replaces mends it.
    assert!(matches!(
        remote.push(&a, &[(k, true)], |_, _| {})[0],
        Ok(Pushed::Done(_))
    ));
    assert!(matches!(remote.pull(&b, &[k], |_, _| {})[0], Ok(Pulled::Done(_))));
}

#[test]
fn blobs_without_their_record_are_no_entry() {
    let (dir, a, b, remote) = dirs();
    let k = key(1);
    stored(&a, &k, b"weights");
    remote.push(&a, &[(k, false)], |_, _| {});
    // What an upload killed before its last step leaves: the blobs, no record.
    std::fs::remove_file(dir.path().join(format!("remote/entries/{}.json", hex(&k)))).unwrap();
    assert_eq!(remote.holds(&[k]).unwrap(), [false]);
    assert!(matches!(remote.pull(&b, &[k], |_, _| {})[0], Ok(Pulled::Missing)));
    assert!(matches!(
        remote.push(&a, &[(k, false)], |_, _| {})[0],
        Ok(Pushed::Done(_))
    ));
    assert!(matches!(remote.pull(&b, &[k], |_, _| {})[0], Ok(Pulled::Done(_))));
}

#[test]
fn two_stores_pushing_one_key_at_once_leave_one_valid_entry() {
    let (dir, a, b, _) = dirs();
    let k = key(1);
    // The same key, different bytes (a log, a time): whichever record wins must be whole.
    stored(&a, &k, &vec![1u8; 3 << 20]);
    stored(&b, &k, &vec![2u8; 3 << 20]);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = [&a, &b]
            .map(|store| {
                let base = dir.path().to_path_buf();
                s.spawn(move || {
                    let remote = Remote::open("remote", &base).unwrap();
                    remote.push(store, &[(k, false)], |_, _| {}).remove(0)
                })
            })
            .into_iter()
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let c = Store::at(&dir.path().join("c"));
    let remote = Remote::open("remote", dir.path()).unwrap();
    assert!(matches!(remote.pull(&c, &[k], |_, _| {})[0], Ok(Pulled::Done(_))));
    let got = std::fs::read(c.entry_dir(&k).join("out/model.bin")).unwrap();
    assert!(got == vec![1u8; 3 << 20] || got == vec![2u8; 3 << 20]);
}

#[test]
fn a_damaged_local_entry_is_not_pushed() {
    let (_dir, a, _, remote) = dirs();
    let k = key(1);
    stored(&a, &k, b"weights");
    let f = a.entry_dir(&k).join("out/model.bin");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&f, b"weighTs").unwrap();
    match &remote.push(&a, &[(k, false)], |_, _| {})[0] {
        Err(RemoteError::Local(e)) => assert!(e.contains("damaged"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(remote.holds(&[k]).unwrap(), [false]);
}

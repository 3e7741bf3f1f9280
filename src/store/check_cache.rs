//! The check of the stored results a run is about to trust, through a per-pipeline cache of what
//! their manifests say (`cache/manifests/<id>.bin`), so that a rerun reads one file instead of
//! one `manifest.json` per stage.
//!
//! The cache never vouches for anything: it holds what manifests said (each file's path, size
//! and modification time), nothing else. A remembered manifest is used only while its
//! `manifest.json` still has the size, modification time and inode it had when it was
//! remembered (one stat, no read) — what reading that file again would give, as entries are
//! written once, read-only, and replaced only by a rename. The entry's files are then compared
//! with it exactly as [`Manifest::check_entry`] compares them, and what fails the comparison is
//! decided by the manifest itself (read and hashed). No cache, a damaged or foreign one, an
//! entry removed, moved aside or stored again: the manifest is read, as without a cache. (A
//! manifest edited in place with its size and time put back is not read again; the entry's
//! files are still checked, and `rkd verify` reads every manifest.)

use super::key::Key;
use super::manifest::{Manifest, MANIFEST};
use super::Store;
use rayon::prelude::*;
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Version of the cache file's layout; a file of another version is ignored (and rewritten).
const VERSION: u32 = 1;

/// What one key's stored result is.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// Not in the store (no entry with a valid manifest).
    Absent,
    /// Stored, and its check passed.
    Intact,
    /// Stored, and its check found these problems.
    Damaged(Vec<String>),
    /// Not looked at (not asked for).
    Unchecked,
}

/// What identifies one `manifest.json` on disk without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: u64,
    ino: u64,
}

/// What the cheap check of one entry needs of its manifest: the path, size and modification time
/// of each file, and the time of each subdirectory (borrowed from the cache file or a manifest).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Remembered<'a> {
    key: Key,
    stamp: Stamp,
    #[serde(borrow)]
    files: Vec<(&'a str, u64, u64)>,
    #[serde(borrow)]
    dirs: Vec<(&'a str, u64)>,
}

impl<'a> Remembered<'a> {
    /// What `manifest` says, when it records a time for every file (manifests of older rkd do not).
    fn of(key: Key, stamp: Stamp, manifest: &'a Manifest) -> Option<Remembered<'a>> {
        let files = manifest
            .files
            .iter()
            .map(|(p, f)| Some((p.as_str(), f.size, f.mtime_ns?)))
            .collect::<Option<Vec<_>>>()?;
        (!manifest.dirs.is_empty()).then(|| Remembered {
            key,
            stamp,
            files,
            dirs: manifest.dirs.iter().map(|(p, t)| (p.as_str(), *t)).collect(),
        })
    }

    /// Whether the entry's manifest is the one remembered and every file still has its size and
    /// time, and every subdirectory its time: one stat each, relative to `entries` (the store's
    /// open entries directory, so each stat walks two or three path components), no reading.
    fn current(&self, entries: &OwnedFd) -> bool {
        let mut path = Vec::with_capacity(128);
        path.extend_from_slice(blake3::Hash::from(self.key).to_hex().as_bytes());
        path.push(b'/');
        let base = path.len();
        let mut stat = |rel: &str| {
            path.truncate(base);
            path.extend_from_slice(rel.as_bytes());
            Seen::at(entries, &path)
        };
        stat(MANIFEST).is_some_and(|m| m.file && m.stamp() == Some(self.stamp))
            && self.files.iter().all(|(rel, size, mtime)| {
                stat(rel).is_some_and(|m| m.file && m.size == *size && m.mtime_ns == Some(*mtime))
            })
            && self
                .dirs
                .iter()
                .all(|(rel, mtime)| stat(rel).is_some_and(|m| m.dir && m.mtime_ns == Some(*mtime)))
    }
}

/// What one stat (not following symlinks) says of a path.
struct Seen {
    file: bool,
    dir: bool,
    size: u64,
    mtime_ns: Option<u64>,
    ino: u64,
}

impl Seen {
    /// Stats `rel` relative to the directory `dir`.
    fn at(dir: &OwnedFd, rel: &[u8]) -> Option<Seen> {
        Some(Seen::from(
            rustix::fs::statat(dir, rel, AtFlags::SYMLINK_NOFOLLOW).ok()?,
        ))
    }

    /// Stats an open file.
    fn of(file: &std::fs::File) -> Option<Seen> {
        Some(Seen::from(rustix::fs::fstat(file).ok()?))
    }

    /// What a stat says: the one place a stamp or time is made of one, so that what is remembered
    /// and what it is compared with are read alike.
    fn from(st: rustix::fs::Stat) -> Seen {
        let kind = FileType::from_raw_mode(st.st_mode);
        // As `manifest::mtime_ns` reads `Metadata::modified`: none before the epoch.
        // `st_mtime_nsec` is a u64 on Linux and a C long on other Unix systems.
        #[allow(clippy::unnecessary_cast)]
        let (secs, nanos) = (u64::try_from(st.st_mtime).ok(), st.st_mtime_nsec as u64);
        Seen {
            file: kind == FileType::RegularFile,
            dir: kind == FileType::Directory,
            size: st.st_size as u64,
            mtime_ns: secs.and_then(|s| s.checked_mul(1_000_000_000)?.checked_add(nanos)),
            ino: st.st_ino,
        }
    }

    fn stamp(&self) -> Option<Stamp> {
        Some(Stamp {
            size: self.size,
            mtime_ns: self.mtime_ns?,
            ino: self.ino,
        })
    }
}

/// The store's entries directory, opened for stats relative to it (none when it cannot be).
fn open_entries(store: &Store) -> Option<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::open(store.entries_dir(), flags, Mode::empty()).ok()
}

/// The cache file.
#[derive(Serialize, Deserialize)]
struct CacheFile<'a> {
    version: u32,
    #[serde(borrow)]
    entries: Vec<Remembered<'a>>,
}

/// The cache file of the pipeline at `pipeline` in `store` (named by its absolute path, so each
/// pipeline keeps its own and two pipelines sharing a store do not evict each other's entries).
pub fn path_for(store: &Store, pipeline: &Path) -> PathBuf {
    let abs = std::path::absolute(pipeline).unwrap_or_else(|_| pipeline.to_path_buf());
    let id = blake3::hash(abs.as_os_str().as_encoded_bytes()).to_hex();
    store.cache_dir().join("manifests").join(format!("{}.bin", &id[..32]))
}

/// Checks the stored results of the keys where `wanted` is true (the others are
/// [`Stored::Unchecked`]): cheaply (sizes and times, hashing only what differs), or by hashing
/// every file with `verify`. `cache` remembers what the intact entries' manifests say and is
/// rewritten (atomically) when that changed.
pub fn check_stored(store: &Store, keys: &[Key], wanted: &[bool], verify: bool, cache: &Path) -> Vec<Stored> {
    let bytes = std::fs::read(cache).unwrap_or_default();
    let file = parse(&bytes);
    let had = file.as_ref().map_or(0, |f| f.entries.len());
    let mut slots: HashMap<Key, Remembered> = file.into_iter().flat_map(|f| f.entries).map(|r| (r.key, r)).collect();
    let jobs: Vec<(Key, bool, Option<Remembered>)> = keys
        .iter()
        .zip(wanted)
        .map(|(k, w)| (*k, *w, slots.remove(k)))
        .collect();
    let entries = open_entries(store);
    let looked: Vec<Looked> = jobs
        .into_par_iter()
        .map(|(key, wanted, slot)| match (wanted, slot) {
            (false, slot) => Looked::Skipped(slot),
            (true, slot) => look(store, entries.as_ref(), key, slot, verify),
        })
        .collect();
    let carried = looked
        .iter()
        .filter(|l| matches!(l, Looked::Skipped(Some(_)) | Looked::Remembered(_)))
        .count();
    let learned = looked.iter().any(|l| matches!(l, Looked::Read(_, Some(_))));
    if learned || carried != had {
        // Best effort: a cache that cannot be written costs the next run its speed, nothing else.
        let _ = save(cache, looked.iter().filter_map(Looked::remembered).collect());
    }
    looked.into_iter().map(Looked::stored).collect()
}

/// Adds what the manifests of these keys' entries say to `cache` (a run calls it for the results
/// it stored), so that the next run checks them without reading their manifests. This vouches
/// for nothing: the next check still compares every file with what is remembered here.
pub fn remember(store: &Store, keys: &[Key], cache: &Path) {
    let bytes = std::fs::read(cache).unwrap_or_default();
    let read: Vec<(Key, Stamp, Manifest)> = keys
        .par_iter()
        .filter_map(|k| {
            let (stamp, m) = read_stamped(&store.entry_dir(k).join(MANIFEST))?;
            Some((*k, stamp?, m))
        })
        .collect();
    let fresh: std::collections::HashSet<Key> = read.iter().map(|(k, ..)| *k).collect();
    let mut entries: Vec<Remembered> = parse(&bytes)
        .into_iter()
        .flat_map(|f| f.entries)
        .filter(|r| !fresh.contains(&r.key))
        .collect();
    entries.extend(read.iter().filter_map(|(k, stamp, m)| Remembered::of(*k, *stamp, m)));
    // Best effort, as in `check_stored`.
    let _ = save(cache, entries);
}

/// The cache file's entries, unless it is missing, damaged or of another version.
fn parse(bytes: &[u8]) -> Option<CacheFile<'_>> {
    postcard::from_bytes::<CacheFile>(bytes)
        .ok()
        .filter(|f| f.version == VERSION)
}

/// What one key's look found.
enum Looked<'a> {
    /// Not asked for; its remembered entry (if any) is kept as it was.
    Skipped(Option<Remembered<'a>>),
    /// Its remembered entry was current and its files unchanged.
    Remembered(Remembered<'a>),
    /// Its manifest was read (no current remembered entry): the check's result, and what to
    /// remember of an intact entry.
    Read(Stored, Option<(Key, Stamp, Manifest)>),
}

impl Looked<'_> {
    /// What the cache keeps of this key after the look.
    fn remembered(&self) -> Option<Remembered<'_>> {
        match self {
            Looked::Skipped(r) => r.clone(),
            Looked::Remembered(r) => Some(r.clone()),
            Looked::Read(_, Some((key, stamp, m))) => Remembered::of(*key, *stamp, m),
            Looked::Read(_, None) => None,
        }
    }

    fn stored(self) -> Stored {
        match self {
            Looked::Skipped(_) => Stored::Unchecked,
            Looked::Remembered(_) => Stored::Intact,
            Looked::Read(s, _) => s,
        }
    }
}

/// Checks one wanted key: through its remembered entry when that is current, else by reading
/// its manifest.
fn look<'a>(
    store: &Store,
    entries: Option<&OwnedFd>,
    key: Key,
    slot: Option<Remembered<'a>>,
    verify: bool,
) -> Looked<'a> {
    if let Some(r) = slot.filter(|r| !verify && entries.is_some_and(|e| r.current(e))) {
        return Looked::Remembered(r);
    }
    let entry = store.entry_dir(&key);
    let manifest = entry.join(MANIFEST);
    let Some((stamp, m)) = read_stamped(&manifest) else {
        return Looked::Read(Stored::Absent, None);
    };
    let problems = if verify {
        m.verify_entry(&entry)
    } else {
        m.check_entry(&entry)
    };
    if problems.is_empty() {
        Looked::Read(Stored::Intact, stamp.map(|s| (key, s, m)))
    } else {
        Looked::Read(Stored::Damaged(problems), None)
    }
}

/// Reads a manifest and the stamp of the file it was read from (taken from the open file, so the
/// two belong together).
fn read_stamped(path: &Path) -> Option<(Option<Stamp>, Manifest)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let seen = Seen::of(&file).filter(|s| s.file)?;
    let mut bytes = Vec::with_capacity(seen.size as usize);
    file.read_to_end(&mut bytes).ok()?;
    let manifest = serde_json::from_slice(&bytes).ok()?;
    Some((seen.stamp(), manifest))
}

fn save(cache: &Path, entries: Vec<Remembered>) -> std::io::Result<()> {
    let file = CacheFile {
        version: VERSION,
        entries,
    };
    let bytes = postcard::to_stdvec(&file).map_err(std::io::Error::other)?;
    std::fs::create_dir_all(cache.parent().unwrap_or(Path::new(".")))?;
    super::records::atomic_write(cache, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::writer::EntryWriter;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;

    /// Stores an entry for `key` whose output holds `text`.
    fn store_entry(store: &Store, key: Key, text: &str) {
        let w = EntryWriter::create(store, &key).unwrap();
        std::fs::write(w.out_dir().join("a.txt"), text).unwrap();
        w.write("log.txt", b"log").unwrap();
        w.commit().unwrap();
    }

    /// What the store says of `key` read without any cache: the verdict to agree with.
    fn uncached(store: &Store, key: &Key) -> Stored {
        let entry = store.entry_dir(key);
        match Manifest::read(&entry) {
            Err(_) => Stored::Absent,
            Ok(m) => match m.check_entry(&entry) {
                p if p.is_empty() => Stored::Intact,
                p => Stored::Damaged(p),
            },
        }
    }

    fn writable(path: &Path) {
        let mode = std::fs::symlink_metadata(path).unwrap().permissions().mode();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o700)).unwrap();
    }

    /// An empty store in a temporary directory (kept while the first value lives) and the cache
    /// path of a pipeline `p.rkd`.
    fn fresh_store() -> (tempfile::TempDir, Store, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let cache = path_for(&store, Path::new("p.rkd"));
        (dir, store, cache)
    }

    fn check(store: &Store, keys: &[Key], cache: &Path) -> Vec<Stored> {
        check_stored(store, keys, &vec![true; keys.len()], false, cache)
    }

    #[test]
    fn a_rerun_checks_through_the_cache_without_reading_manifests() {
        let (_dir, store, cache) = fresh_store();
        let keys = [[1u8; 32], [2u8; 32], [3u8; 32]];
        store_entry(&store, keys[0], "one");
        store_entry(&store, keys[1], "two");
        let first = check(&store, &keys, &cache);
        assert_eq!(first, [Stored::Intact, Stored::Intact, Stored::Absent]);
        let remembered = std::fs::read(&cache).unwrap();
        assert_eq!(parse(&remembered).unwrap().entries.len(), 2);
        // The second check uses what the cache remembers while the manifest's stamp is the same:
        // a manifest garbled in place, with its time put back, is not read again.
        garble_keeping_stamp(&store.entry_dir(&keys[0]).join(MANIFEST));
        assert_eq!(uncached(&store, &keys[0]), Stored::Absent);
        assert_eq!(check(&store, &keys, &cache), first);
        std::fs::write(&cache, b"").unwrap();
        assert_eq!(
            check(&store, &keys, &cache)[0],
            Stored::Absent,
            "without the cache it is read"
        );
        store_entry(&store, keys[2], "three");
        let now = check(&store, &keys, &cache);
        assert_eq!(now, [Stored::Absent, Stored::Intact, Stored::Intact]);
        // Nothing changed: the cache file is not rewritten.
        let before = std::fs::metadata(&cache).unwrap().modified().unwrap();
        assert_eq!(check(&store, &keys, &cache), now);
        assert_eq!(std::fs::metadata(&cache).unwrap().modified().unwrap(), before);
    }

    /// Overwrites a file in place with as many spaces, then puts its modification time back.
    fn garble_keeping_stamp(path: &Path) {
        let meta = std::fs::metadata(path).unwrap();
        writable(path);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        std::io::Write::write_all(&mut &f, &vec![b' '; meta.len() as usize]).unwrap();
        f.set_modified(meta.modified().unwrap()).unwrap();
    }

    #[test]
    fn what_a_run_stored_is_remembered_for_the_next() {
        let (_dir, store, cache) = fresh_store();
        let keys = [[1u8; 32], [2u8; 32]];
        store_entry(&store, keys[0], "one");
        remember(&store, &keys[..1], &cache);
        store_entry(&store, keys[1], "two");
        remember(&store, &keys[1..], &cache);
        // Both are remembered: garbled manifests with their stamps kept are not read.
        for k in &keys {
            garble_keeping_stamp(&store.entry_dir(k).join(MANIFEST));
        }
        assert_eq!(check(&store, &keys, &cache), [Stored::Intact, Stored::Intact]);
    }

    #[test]
    fn keys_not_asked_for_are_neither_checked_nor_forgotten() {
        let (_dir, store, cache) = fresh_store();
        let keys = [[1u8; 32], [2u8; 32]];
        store_entry(&store, keys[0], "one");
        store_entry(&store, keys[1], "two");
        check(&store, &keys, &cache);
        let only_second = check_stored(&store, &keys, &[false, true], false, &cache);
        assert_eq!(only_second, [Stored::Unchecked, Stored::Intact]);
        assert_eq!(parse(&std::fs::read(&cache).unwrap()).unwrap().entries.len(), 2);
        // Keys no longer in the plan are dropped from the cache.
        check(&store, &keys[1..], &cache);
        assert_eq!(parse(&std::fs::read(&cache).unwrap()).unwrap().entries.len(), 1);
    }

    #[test]
    fn verify_hashes_even_what_the_cache_remembers() {
        let (_dir, store, cache) = fresh_store();
        let key = [7u8; 32];
        store_entry(&store, key, "hello");
        check(&store, &[key], &cache);
        // Same size, same time, other bytes: only hashing finds it.
        let file = store.out_dir(&key).join("a.txt");
        let when = std::fs::metadata(&file).unwrap().modified().unwrap();
        writable(&file);
        std::fs::write(&file, "hellO").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(when)
            .unwrap();
        assert_eq!(check(&store, &[key], &cache), [Stored::Intact]);
        assert_eq!(
            check_stored(&store, &[key], &[true], true, &cache),
            [Stored::Damaged(vec!["out/a.txt: content changed".into()])]
        );
    }

    /// Ways a stored entry (or the cache) can change between two runs.
    #[derive(Clone, Copy, Debug)]
    enum Change {
        Nothing,
        SameSizeOtherBytes,
        OtherSize,
        Touched,
        FileAdded,
        FileRemoved,
        ManifestRemoved,
        ManifestRewritten,
        ManifestTruncated,
        EntryRemoved,
        StoredAgainOtherwise,
        CacheGarbled,
    }

    /// Applies `change` where it can (a file already removed is not changed again).
    fn apply(store: &Store, key: &Key, cache: &Path, change: Change) {
        let entry = store.entry_dir(key);
        let out = entry.join("out");
        let a = out.join("a.txt");
        let needs = match change {
            Change::Nothing | Change::CacheGarbled => None,
            Change::ManifestRemoved | Change::ManifestRewritten | Change::ManifestTruncated => {
                Some(entry.join(MANIFEST))
            }
            Change::FileAdded => Some(out.clone()),
            Change::EntryRemoved | Change::StoredAgainOtherwise => Some(entry.clone()),
            _ => Some(a.clone()),
        };
        if needs.is_some_and(|p| !p.exists()) {
            return;
        }
        if entry.exists() {
            crate::store::files::make_dirs_writable(&entry).unwrap();
        }
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
        match change {
            Change::Nothing => {}
            Change::SameSizeOtherBytes | Change::OtherSize => {
                writable(&a);
                let bytes = std::fs::read(&a).unwrap();
                let mut new = bytes.clone();
                match change {
                    Change::OtherSize => new.push(b'!'),
                    _ => new[0] ^= 1,
                }
                std::fs::write(&a, new).unwrap();
            }
            Change::Touched => {
                writable(&a);
                std::fs::File::options()
                    .write(true)
                    .open(&a)
                    .unwrap()
                    .set_modified(later)
                    .unwrap();
            }
            Change::FileAdded => std::fs::write(out.join("b.txt"), "x").unwrap(),
            Change::FileRemoved => std::fs::remove_file(&a).unwrap(),
            Change::ManifestRemoved => std::fs::remove_file(entry.join(MANIFEST)).unwrap(),
            Change::ManifestRewritten => {
                let bytes = std::fs::read(entry.join(MANIFEST)).unwrap();
                std::fs::remove_file(entry.join(MANIFEST)).unwrap();
                std::fs::write(entry.join(MANIFEST), bytes).unwrap();
            }
            Change::ManifestTruncated => {
                writable(&entry.join(MANIFEST));
                std::fs::write(entry.join(MANIFEST), "{\"files\": {").unwrap();
            }
            Change::EntryRemoved => crate::store::files::remove_tree(&entry).unwrap(),
            Change::StoredAgainOtherwise => {
                crate::store::files::remove_tree(&entry).unwrap();
                store_entry(store, *key, "stored again, longer");
            }
            Change::CacheGarbled => std::fs::write(cache, b"\x01\x02 not a cache").unwrap(),
        }
    }

    fn change() -> impl Strategy<Value = Change> {
        prop::sample::select(vec![
            Change::Nothing,
            Change::SameSizeOtherBytes,
            Change::OtherSize,
            Change::Touched,
            Change::FileAdded,
            Change::FileRemoved,
            Change::ManifestRemoved,
            Change::ManifestRewritten,
            Change::ManifestTruncated,
            Change::EntryRemoved,
            Change::StoredAgainOtherwise,
            Change::CacheGarbled,
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The cache never changes a verdict: after any changes to the entries (or to the cache),
        /// the check through the cache (`rkd run`, `rkd plan`) says what reading each manifest
        /// says.
        #[test]
        fn the_cache_agrees_with_the_manifests(changes in prop::collection::vec(change(), 3), again in change()) {
            let (_dir, store, cache) = fresh_store();
            let keys: Vec<Key> = (0..3u8).map(|i| [i + 1; 32]).collect();
            for (i, k) in keys.iter().enumerate() {
                store_entry(&store, *k, &format!("entry {i}"));
            }
            prop_assert!(check(&store, &keys, &cache).iter().all(|s| *s == Stored::Intact));
            for (k, c) in keys.iter().zip(&changes) {
                apply(&store, k, &cache, *c);
            }
            let expected: Vec<Stored> = keys.iter().map(|k| uncached(&store, k)).collect();
            prop_assert_eq!(check(&store, &keys, &cache), expected);
            // And once more, after the cache learned from the first check.
            apply(&store, &keys[0], &cache, again);
            let expected: Vec<Stored> = keys.iter().map(|k| uncached(&store, k)).collect();
            prop_assert_eq!(check(&store, &keys, &cache), expected);
        }
    }
}

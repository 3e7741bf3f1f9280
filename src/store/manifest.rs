//! The manifest of an entry: the size, modification time and blake3 of every file in it, written
//! last. Sizes and times make the check before a run cheap; the hashes are the proof.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// File name of the manifest inside an entry.
pub const MANIFEST: &str = "manifest.json";

/// Why an entry's manifest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// There is none, or it cannot be read.
    #[error("manifest.json: {0}")]
    Unreadable(std::io::Error),
    /// It is not a manifest (a truncated or edited file).
    #[error("manifest.json is not valid: {0}")]
    Invalid(serde_json::Error),
}

/// One file of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Bytes.
    pub size: u64,
    /// blake3 of the content, hex.
    pub blake3: String,
    /// Modification time (nanoseconds since the Unix epoch); absent in entries of older rkd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<u64>,
}

/// Every file of an entry (relative path → record), excluding the manifest itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The files.
    pub files: BTreeMap<String, FileRecord>,
    /// Modification times of the entry's subdirectories (`out`, ...): a file added to or removed
    /// from one changes it, so the cheap check needs no directory listing. Absent in entries of
    /// older rkd, which are checked by listing them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dirs: BTreeMap<String, u64>,
}

impl Manifest {
    /// Hashes every file under `dir`.
    pub fn build(dir: &Path) -> std::io::Result<Manifest> {
        let mut files = BTreeMap::new();
        collect(dir, dir, &mut files)?;
        let mut dirs = BTreeMap::new();
        subdir_mtimes(dir, dir, &mut dirs)?;
        Ok(Manifest { files, dirs })
    }

    /// Total bytes of the files.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    /// Reads the manifest of an entry directory.
    pub fn read(entry: &Path) -> Result<Manifest, ManifestError> {
        let bytes = std::fs::read(entry.join(MANIFEST)).map_err(ManifestError::Unreadable)?;
        serde_json::from_slice(&bytes).map_err(ManifestError::Invalid)
    }

    /// Checks an entry cheaply: the same files with the sizes and modification times that the
    /// manifest records. Only when something differs (or the manifest has no times) are the
    /// files hashed, and then the hashes decide. Every problem found; empty when intact.
    pub fn check(entry: &Path) -> Vec<String> {
        match Manifest::read(entry) {
            Ok(m) => m.check_entry(entry),
            Err(e) => vec![e.to_string()],
        }
    }

    /// [`Manifest::check`] with the entry's manifest already read.
    pub fn check_entry(&self, entry: &Path) -> Vec<String> {
        if !self.dirs.is_empty() {
            return if self.unchanged_by_stat(entry) {
                Vec::new()
            } else {
                self.verify_entry(entry)
            };
        }
        let expected = self;
        let mut seen = BTreeMap::new();
        let walked = walk(entry, entry, &mut |rel, meta| {
            seen.insert(rel, (meta.len(), mtime_ns(meta)));
            Ok(())
        });
        let unchanged = walked.is_ok()
            && seen.len() == expected.files.len()
            && expected.files.iter().all(|(path, want)| {
                seen.get(path)
                    .is_some_and(|(size, mtime)| *size == want.size && want.mtime_ns.is_some_and(|m| Some(m) == *mtime))
            });
        if unchanged {
            Vec::new()
        } else {
            expected.verify_entry(entry)
        }
    }

    /// Whether every listed file still has its size and modification time, and every listed
    /// subdirectory its modification time (one stat each, no listing, no reading).
    fn unchanged_by_stat(&self, entry: &Path) -> bool {
        let same_file = |(path, want): (&String, &FileRecord)| {
            std::fs::symlink_metadata(entry.join(path)).is_ok_and(|m| {
                m.is_file() && m.len() == want.size && want.mtime_ns.is_some() && mtime_ns(&m) == want.mtime_ns
            })
        };
        let same_dir = |(path, want): (&String, &u64)| {
            std::fs::symlink_metadata(entry.join(path)).is_ok_and(|m| m.is_dir() && mtime_ns(&m) == Some(*want))
        };
        self.files.iter().all(same_file) && self.dirs.iter().all(same_dir)
    }

    /// Checks an entry against its manifest by hashing every file: every problem found, empty
    /// when intact.
    pub fn verify(entry: &Path) -> Vec<String> {
        match Manifest::read(entry) {
            Ok(m) => m.verify_entry(entry),
            Err(e) => vec![e.to_string()],
        }
    }

    /// [`Manifest::verify`] with the entry's manifest already read.
    pub fn verify_entry(&self, entry: &Path) -> Vec<String> {
        let expected = self;
        let actual = match Manifest::build(entry) {
            Ok(m) => m,
            Err(e) => return vec![format!("cannot read the entry: {e}")],
        };
        let mut problems = Vec::new();
        for (path, want) in &expected.files {
            match actual.files.get(path) {
                None => problems.push(format!("{path}: missing")),
                Some(got) if got.size != want.size => {
                    problems.push(format!("{path}: {} bytes, expected {}", got.size, want.size))
                }
                Some(got) if got.blake3 != want.blake3 => problems.push(format!("{path}: content changed")),
                Some(_) => {}
            }
        }
        for path in actual.files.keys().filter(|p| !expected.files.contains_key(*p)) {
            problems.push(format!("{path}: not in the manifest"));
        }
        problems
    }
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, FileRecord>) -> std::io::Result<()> {
    walk(root, dir, &mut |rel, meta| {
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(root.join(&rel))?)?;
        out.insert(
            rel,
            FileRecord {
                size: meta.len(),
                blake3: h.finalize().to_hex().to_string(),
                mtime_ns: mtime_ns(meta),
            },
        );
        Ok(())
    })
}

/// Calls `visit` with the relative path and metadata of every file under `dir` but the manifest.
/// Anything that is not a plain file or directory (a symlink, a FIFO) is an error: entries hold
/// contents only, and opening a FIFO would wait forever.
fn walk(
    root: &Path,
    dir: &Path,
    visit: &mut dyn FnMut(String, &std::fs::Metadata) -> std::io::Result<()>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let rel = || {
            path.strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/")
        };
        // The type from the directory listing, and the metadata relative to the open directory
        // (fstatat, not a walk of the whole path): both do not follow symlinks, as
        // symlink_metadata does not. The manifest itself needs no stat.
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &path, visit)?;
        } else if !kind.is_file() {
            return Err(std::io::Error::other(format!("{} is not a plain file", rel())));
        } else if !(dir == root && entry.file_name() == MANIFEST) {
            visit(rel(), &entry.metadata()?)?;
        }
    }
    Ok(())
}

/// The modification times of the directories below `root` (not `root` itself: moving an entry
/// into place rewrites its `..`, and with it its time).
fn subdir_mtimes(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            if let Some(t) = mtime_ns(&entry.metadata()?) {
                out.insert(rel, t);
            }
            subdir_mtimes(root, &path, out)?;
        }
    }
    Ok(())
}

/// A file's modification time in nanoseconds since the Unix epoch.
fn mtime_ns(meta: &std::fs::Metadata) -> Option<u64> {
    let since = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_finds_changed_missing_and_extra_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = dir.path();
        std::fs::create_dir(e.join("out")).unwrap();
        std::fs::write(e.join("out/a.txt"), "hello").unwrap();
        std::fs::write(e.join("log.txt"), "log").unwrap();
        let m = Manifest::build(e).unwrap();
        std::fs::write(e.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(Manifest::verify(e).is_empty());

        std::fs::write(e.join("out/a.txt"), "hellO").unwrap();
        assert_eq!(Manifest::verify(e), ["out/a.txt: content changed"]);
        std::fs::write(e.join("out/a.txt"), "hello!").unwrap();
        assert_eq!(Manifest::verify(e), ["out/a.txt: 6 bytes, expected 5"]);
        std::fs::remove_file(e.join("out/a.txt")).unwrap();
        std::fs::write(e.join("out/b.txt"), "x").unwrap();
        assert_eq!(
            Manifest::verify(e),
            ["out/a.txt: missing", "out/b.txt: not in the manifest"]
        );
        std::fs::remove_file(e.join(MANIFEST)).unwrap();
        assert_eq!(Manifest::verify(e).len(), 1);
    }

    #[test]
    fn the_cheap_check_hashes_only_when_sizes_or_times_differ() {
        let dir = tempfile::tempdir().unwrap();
        let e = dir.path();
        std::fs::create_dir(e.join("out")).unwrap();
        std::fs::write(e.join("out/a.txt"), "hello").unwrap();
        let m = Manifest::build(e).unwrap();
        assert!(m.files["out/a.txt"].mtime_ns.is_some());
        std::fs::write(e.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(Manifest::check(e).is_empty());
        // Touched but unchanged: hashed, and intact.
        let f = std::fs::File::options().write(true).open(e.join("out/a.txt")).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        assert!(Manifest::check(e).is_empty());
        // Changed: found.
        std::fs::write(e.join("out/a.txt"), "hellO").unwrap();
        assert_eq!(Manifest::check(e), ["out/a.txt: content changed"]);
        // An extra file is found without hashing the others first.
        std::fs::write(e.join("out/a.txt"), "hello").unwrap();
        std::fs::write(e.join("out/b.txt"), "x").unwrap();
        assert_eq!(Manifest::check(e), ["out/b.txt: not in the manifest"]);
        // A manifest of an older rkd (no times) is checked by hashing.
        std::fs::remove_file(e.join("out/b.txt")).unwrap();
        let mut old = m.clone();
        old.files.values_mut().for_each(|f| f.mtime_ns = None);
        std::fs::write(e.join(MANIFEST), serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(Manifest::check(e).is_empty());
        std::fs::write(e.join(MANIFEST), b"{\"files\": {").unwrap();
        assert_eq!(Manifest::check(e).len(), 1, "a truncated manifest fails the check");
    }
}

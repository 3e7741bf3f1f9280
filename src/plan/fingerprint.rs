//! Content fingerprints of input files and directories, with a stat cache so that unchanged
//! large files are not re-read on every plan.
//!
//! A file's fingerprint is blake3 of its bytes. A directory's is blake3 over its regular files in
//! sorted order, each as (relative path, file fingerprint); hidden entries (names starting with
//! `.`) are skipped. A dataset's folder is fingerprinted the same way over only the files its
//! loader reads ([`Reads`]), so files beside the data change nothing. The stat cache maps (path,
//! size, mtime, inode) to the content hash: a file that was touched but not changed is re-read
//! once and keeps its fingerprint.

use crate::data::reads::{folder_digest, left_out, relative, Reads};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The stat-cache file name inside the store.
pub use crate::store::STAT_CACHE;

/// A file read for hashing: (position in the request, path, stat, content hash).
type ReadFile = (usize, PathBuf, Stat, [u8; 32]);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    size: u64,
    mtime_ns: i64,
    inode: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CacheEntry {
    stat: Stat,
    hash: String,
}

/// Computes fingerprints, remembering file hashes by their stat.
#[derive(Debug, Default)]
pub struct Fingerprinter {
    cache: HashMap<PathBuf, CacheEntry>,
    dirty: bool,
    memo: HashMap<(PathBuf, Option<Reads>), [u8; 32]>,
    /// How many files were actually read (not answered from the stat cache).
    pub files_read: usize,
}

impl Fingerprinter {
    /// A fingerprinter with the stat cache stored at `cache_file` (empty if it is missing or unreadable).
    pub fn load(cache_file: &Path) -> Fingerprinter {
        let cache = std::fs::read(cache_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Fingerprinter {
            cache,
            ..Fingerprinter::default()
        }
    }

    /// Writes the stat cache back if it changed (atomically: temp file, then rename).
    pub fn save(&self, cache_file: &Path) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        std::fs::create_dir_all(cache_file.parent().unwrap_or(Path::new(".")))?;
        crate::store::records::atomic_write(cache_file, &serde_json::to_vec(&self.cache)?)
    }

    /// The fingerprint of a file or directory.
    pub fn fingerprint(&mut self, path: &Path) -> Result<[u8; 32], FingerprintError> {
        self.fingerprint_read(path, None)
    }

    /// The fingerprint of a file or directory, of a dataset's folder only over the files it
    /// `reads` (the whole folder if none of them is there, so that its loader reports that).
    pub fn fingerprint_read(&mut self, path: &Path, reads: Option<Reads>) -> Result<[u8; 32], FingerprintError> {
        let memo_key = (path.to_path_buf(), reads);
        if let Some(h) = self.memo.get(&memo_key) {
            return Ok(*h);
        }
        let meta = std::fs::metadata(path).map_err(|e| describe_io(path, &e))?;
        let hash = if meta.is_dir() {
            let mut files: Vec<(String, PathBuf)> = reads
                .map(|r| r.files(path))
                .unwrap_or_default()
                .into_iter()
                .map(|f| (relative(path, &f), f))
                .collect();
            if files.is_empty() {
                walk(path, path, &mut files)?;
            }
            files.sort();
            let hashes = self.hash_files(files.iter().map(|(_, abs)| abs.as_path()))?;
            folder_digest(files.iter().map(|(rel, _)| rel.as_str()).zip(&hashes))
        } else {
            let mut h = blake3::Hasher::new();
            h.update(b"file\0");
            h.update(&self.hash_files(std::iter::once(path))?[0]);
            *h.finalize().as_bytes()
        };
        self.memo.insert(memo_key, hash);
        Ok(hash)
    }

    /// Content hashes of files, from the stat cache where it is current, else read (in parallel).
    fn hash_files<'a>(&mut self, paths: impl Iterator<Item = &'a Path>) -> Result<Vec<[u8; 32]>, FingerprintError> {
        let mut out = Vec::new();
        let mut to_read = Vec::new();
        for (i, p) in paths.enumerate() {
            let meta = std::fs::metadata(p).map_err(|e| describe_io(p, &e))?;
            if !meta.is_file() {
                return Err(not_a_file(p));
            }
            let stat = stat_of(&meta);
            match self.cache.get(p) {
                Some(e) if e.stat == stat => match crate::store::key::parse(&e.hash) {
                    Some(h) => out.push(h),
                    None => {
                        out.push([0; 32]);
                        to_read.push((i, p.to_path_buf(), stat));
                    }
                },
                _ => {
                    out.push([0; 32]);
                    to_read.push((i, p.to_path_buf(), stat));
                }
            }
        }
        let read: Vec<Result<ReadFile, FingerprintError>> = to_read
            .into_par_iter()
            .map(|(i, p, stat)| {
                let mut h = blake3::Hasher::new();
                h.update_mmap(&p).map_err(|e| describe_io(&p, &e))?;
                Ok((i, p, stat, *h.finalize().as_bytes()))
            })
            .collect();
        for r in read {
            let (i, p, stat, hash) = r?;
            self.files_read += 1;
            out[i] = hash;
            self.cache.insert(
                p,
                CacheEntry {
                    stat,
                    hash: blake3::Hash::from_bytes(hash).to_hex().to_string(),
                },
            );
            self.dirty = true;
        }
        Ok(out)
    }
}

/// Collects the regular files under `dir`, following symlinks but entering each real directory
/// once (a link back to an ancestor would otherwise loop forever).
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), FingerprintError> {
    let mut visited = std::collections::HashSet::new();
    walk_inner(root, dir, out, &mut visited)
}

fn walk_inner(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, PathBuf)>,
    visited: &mut std::collections::HashSet<PathBuf>,
) -> Result<(), FingerprintError> {
    if let Ok(real) = dir.canonicalize() {
        if !visited.insert(real) {
            return Ok(());
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| describe_io(dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| describe_io(dir, &e))?;
        let name = entry.file_name();
        if left_out(&name) {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(|e| describe_io(&path, &e))?;
        if meta.is_dir() {
            walk_inner(root, &path, out, visited)?;
        } else if meta.is_file() {
            out.push((relative(root, &path), path));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn stat_of(meta: &std::fs::Metadata) -> Stat {
    use std::os::unix::fs::MetadataExt;
    Stat {
        size: meta.len(),
        mtime_ns: meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
        inode: meta.ino(),
    }
}

#[cfg(not(unix))]
fn stat_of(meta: &std::fs::Metadata) -> Stat {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64);
    Stat {
        size: meta.len(),
        mtime_ns,
        inode: 0,
    }
}

/// Why an input could not be fingerprinted: the path that failed (the input, or a file or
/// directory inside it) and what happened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FingerprintError {
    /// The path that failed.
    pub path: PathBuf,
    message: String,
}

/// A device, FIFO or socket given as an input: reading it could block or never end.
fn not_a_file(path: &Path) -> FingerprintError {
    FingerprintError {
        path: path.to_path_buf(),
        message: format!(
            "{} is not a regular file or a folder (devices, FIFOs and sockets are not read as inputs)",
            path.display()
        ),
    }
}

fn describe_io(path: &Path, e: &std::io::Error) -> FingerprintError {
    let message = match e.kind() {
        std::io::ErrorKind::NotFound => format!("{} does not exist", path.display()),
        std::io::ErrorKind::PermissionDenied => {
            format!("{} cannot be read (permission denied)", path.display())
        }
        _ => format!("{}: {e}", path.display()),
    };
    FingerprintError {
        path: path.to_path_buf(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_but_identical_files_keep_their_fingerprint_and_are_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("train.tsv"), "sentence\tlabel\na\t1\n").unwrap();
        std::fs::write(data.join(".hidden"), "ignored").unwrap();
        let cache = dir.path().join("cache.json");

        let mut f = Fingerprinter::load(&cache);
        let first = f.fingerprint(&data).unwrap();
        assert_eq!(f.files_read, 1);
        f.save(&cache).unwrap();

        // Unchanged: answered from the stat cache.
        let mut f = Fingerprinter::load(&cache);
        assert_eq!(f.fingerprint(&data).unwrap(), first);
        assert_eq!(f.files_read, 0);

        // Rewritten with the same bytes (new mtime): read again, same fingerprint.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(data.join("train.tsv"), "sentence\tlabel\na\t1\n").unwrap();
        let mut f = Fingerprinter::load(&cache);
        assert_eq!(f.fingerprint(&data).unwrap(), first);

        // Changed content: a new fingerprint. Hidden files do not count.
        std::fs::write(data.join("train.tsv"), "sentence\tlabel\na\t0\n").unwrap();
        let mut f = Fingerprinter::load(&cache);
        let changed = f.fingerprint(&data).unwrap();
        assert_ne!(changed, first);
        std::fs::write(data.join(".hidden"), "still ignored").unwrap();
        let mut f = Fingerprinter::load(&cache);
        assert_eq!(f.fingerprint(&data).unwrap(), changed);
    }

    #[test]
    fn moving_data_keeps_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::write(a.join("sub/x.bin"), [1u8, 2, 3]).unwrap();
        let mut f = Fingerprinter::default();
        let before = f.fingerprint(&a).unwrap();
        let b = dir.path().join("b");
        std::fs::rename(&a, &b).unwrap();
        let mut f = Fingerprinter::default();
        assert_eq!(f.fingerprint(&b).unwrap(), before);
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        let mut f = Fingerprinter::default();
        let e = f.fingerprint(Path::new("/definitely/not/here")).unwrap_err();
        assert_eq!(e.to_string(), "/definitely/not/here does not exist");
        assert_eq!(e.path, Path::new("/definitely/not/here"));
    }
}

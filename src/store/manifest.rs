//! The manifest of an entry: the size and blake3 of every file in it, written last.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// File name of the manifest inside an entry.
pub const MANIFEST: &str = "manifest.json";

/// One file of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Bytes.
    pub size: u64,
    /// blake3 of the content, hex.
    pub blake3: String,
}

/// Every file of an entry (relative path → record), excluding the manifest itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The files.
    pub files: BTreeMap<String, FileRecord>,
}

impl Manifest {
    /// Hashes every file under `dir`.
    pub fn build(dir: &Path) -> std::io::Result<Manifest> {
        let mut files = BTreeMap::new();
        collect(dir, dir, &mut files)?;
        Ok(Manifest { files })
    }

    /// Total bytes of the files.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    /// Reads the manifest of an entry directory.
    pub fn read(entry: &Path) -> Result<Manifest, String> {
        let bytes = std::fs::read(entry.join(MANIFEST)).map_err(|e| format!("{MANIFEST}: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{MANIFEST} is not valid: {e}"))
    }

    /// Checks an entry against its manifest: every problem found, empty when intact.
    pub fn verify(entry: &Path) -> Vec<String> {
        let expected = match Manifest::read(entry) {
            Ok(m) => m,
            Err(e) => return vec![e],
        };
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
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            collect(root, &path, out)?;
        } else {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            if rel == MANIFEST {
                continue;
            }
            let hash = if meta.is_file() {
                let mut h = blake3::Hasher::new();
                h.update_reader(std::fs::File::open(&path)?)?;
                h.finalize()
            } else {
                // A symlink: its target path is what it holds.
                blake3::hash(std::fs::read_link(&path)?.to_string_lossy().as_bytes())
            };
            out.insert(
                rel,
                FileRecord {
                    size: meta.len(),
                    blake3: hash.to_hex().to_string(),
                },
            );
        }
    }
    Ok(())
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
}

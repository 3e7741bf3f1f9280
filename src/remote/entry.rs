//! The remote's layout and its record of one entry.
//!
//! ```text
//! <prefix>/blobs/<b3[..2]>/<b3>   a file's content, named by its blake3 (shared by every entry
//!                                 that holds the same bytes)
//! <prefix>/entries/<key>.json     one stored stage result: its files (path → size, blake3);
//!                                 written last, after every blob it names
//! ```
//! Readers see an entry only once its record exists, and every blob it names was uploaded
//! before it; a blob's content is its name, so two machines pushing the same key write the same
//! blob bytes and one record wins.

use crate::store::key::{hex, Key};
use crate::store::manifest::Manifest;
use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format tag of an entry record.
pub const FORMAT: &str = "rkd-remote-entry/1";

/// One file of a remote entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// Bytes.
    pub size: u64,
    /// blake3 of the content, hex: the blob's name.
    pub blake3: String,
}

/// The record of one entry in the remote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEntry {
    /// [`FORMAT`].
    pub format: String,
    /// The stage key, hex.
    pub key: String,
    /// The entry's files, by path inside the entry (`out/model.safetensors`, `log.txt`, ...).
    pub files: BTreeMap<String, RemoteFile>,
    /// The rkd that pushed it.
    pub rkd_version: String,
}

impl RemoteEntry {
    /// The record of a local entry, from its manifest.
    pub fn of(key: &Key, manifest: &Manifest) -> RemoteEntry {
        RemoteEntry {
            format: FORMAT.into(),
            key: hex(key),
            files: manifest
                .files
                .iter()
                .map(|(path, f)| {
                    (
                        path.clone(),
                        RemoteFile {
                            size: f.size,
                            blake3: f.blake3.clone(),
                        },
                    )
                })
                .collect(),
            rkd_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Reads a record and checks that it is one of `key`, with safe relative paths and hashes
    /// that name blobs; every problem otherwise.
    pub fn parse(bytes: &[u8], key: &Key) -> Result<RemoteEntry, Vec<String>> {
        let name = format!("entries/{}.json", hex(key));
        let entry: RemoteEntry =
            serde_json::from_slice(bytes).map_err(|e| vec![format!("{name} is not a valid entry record: {e}")])?;
        let mut problems = Vec::new();
        if entry.format != FORMAT {
            problems.push(format!("{name}: format `{}`, this rkd reads `{FORMAT}`", entry.format));
        }
        if entry.key != hex(key) {
            problems.push(format!("{name} records the key {}", entry.key));
        }
        for (path, f) in &entry.files {
            if !safe_relative(path) || path == crate::store::manifest::MANIFEST {
                problems.push(format!("{name}: `{path}` is not a path inside an entry"));
            }
            if crate::store::key::parse(&f.blake3).is_none() {
                problems.push(format!("{name}: `{path}` has no blake3 hash"));
            }
        }
        if problems.is_empty() {
            Ok(entry)
        } else {
            Err(problems)
        }
    }
}

/// Whether `path` is relative, made of plain names only (no `..`, no root, no empty parts).
fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\\'))
}

/// Where the record of `key` is, under `prefix`.
pub fn entry_path(prefix: &ObjPath, key: &Key) -> ObjPath {
    prefix
        .clone()
        .join("entries")
        .join(format!("{}.json", hex(key)).as_str())
}

/// Where the blob with this blake3 (hex) is, under `prefix`.
pub fn blob_path(prefix: &ObjPath, blake3: &str) -> ObjPath {
    prefix.clone().join("blobs").join(&blake3[..2]).join(blake3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_that_escapes_the_entry_or_names_another_key_is_refused() {
        let key = *blake3::hash(b"k").as_bytes();
        let mut files = BTreeMap::new();
        let b3 = blake3::hash(b"x").to_hex().to_string();
        files.insert(
            "out/a.txt".to_string(),
            RemoteFile {
                size: 1,
                blake3: b3.clone(),
            },
        );
        let good = RemoteEntry {
            format: FORMAT.into(),
            key: hex(&key),
            files,
            rkd_version: "0".into(),
        };
        let bytes = serde_json::to_vec(&good).unwrap();
        assert_eq!(RemoteEntry::parse(&bytes, &key).unwrap(), good);
        let other = *blake3::hash(b"other").as_bytes();
        assert!(RemoteEntry::parse(&bytes, &other).unwrap_err()[0].contains("records the key"));
        for bad in ["../escape", "/etc/passwd", "out//a", "manifest.json", "out/./a"] {
            let mut e = good.clone();
            e.files.insert(
                bad.into(),
                RemoteFile {
                    size: 1,
                    blake3: b3.clone(),
                },
            );
            let problems = RemoteEntry::parse(&serde_json::to_vec(&e).unwrap(), &key).unwrap_err();
            assert!(
                problems[0].contains("not a path inside an entry"),
                "{bad}: {problems:?}"
            );
        }
        assert!(RemoteEntry::parse(b"{\"format\":", &key).unwrap_err()[0].contains("not a valid entry record"));
    }
}

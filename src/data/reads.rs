//! Which files a dataset reads from its `path:` folder: what the dataset's part of a stage key
//! hashes, so that a README, a notebook or an unused split beside the data changes no key.
//!
//! The plan fingerprints these files by their paths relative to the folder and their contents
//! (see `plan::fingerprint`): renaming or moving the folder changes nothing, editing a file that
//! is read changes the key. A folder in which nothing is found is fingerprinted whole, and its
//! loader then says what is missing.

use std::path::{Path, PathBuf};

use super::glue::Task;
use super::image_files::is_image;
use super::{table, tsv};
use crate::keyword::Keyword;
use crate::value::{Params, Value};

/// Whether an entry is left out of a folder's fingerprint (a hidden one); kept with the image rule.
pub use super::image_files::left_out;

/// What a dataset constructor reads from its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reads {
    /// `glue_sst2`: train.tsv and dev.tsv.
    Sst2,
    /// `glue(task:)`: the task's training and validation files.
    Glue(Task),
    /// `text_table`: the split files (train, validation/dev, test; shards; in `data/` too).
    Tables,
    /// `image_table`: the split files and the images inside the folder that rows may name.
    ImageTables,
    /// `image_folder`: the images.
    Images,
}

impl Reads {
    /// What the dataset constructor `ctor` with `params` reads from its folder (its `path:`, or an
    /// `hf_dataset`'s files in the Hugging Face cache), if it is a dataset that reads one.
    pub fn of(ctor: &str, params: &Params) -> Option<Reads> {
        Some(match ctor {
            "glue_sst2" => Reads::Sst2,
            "glue" => match params.get("task") {
                Some(Value::Str(word)) => Reads::Glue(Task::from_word(word)?),
                _ => return None,
            },
            "text_table" => Reads::Tables,
            "image_table" => Reads::ImageTables,
            "hf_dataset" if params.contains_key("image") => Reads::ImageTables,
            "hf_dataset" => Reads::Tables,
            "image_folder" => Reads::Images,
            _ => return None,
        })
    }

    /// Whether what is read are images (decoded, not tokenised).
    pub fn images(self) -> bool {
        matches!(self, Reads::ImageTables | Reads::Images)
    }

    /// The files read from `dir`, sorted; empty when there are none (or `dir` is no folder).
    pub fn files(self, dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = match self {
            Reads::Sst2 => tsv::SST2_FILES
                .iter()
                .map(|f| dir.join(f))
                .filter(|f| f.is_file())
                .collect(),
            Reads::Glue(task) => super::glue::task_files(task, dir),
            Reads::Tables => split_tables(dir),
            Reads::ImageTables => {
                let mut files = split_tables(dir);
                images_under(dir, &mut files);
                files
            }
            Reads::Images => {
                let mut files = Vec::new();
                images_under(dir, &mut files);
                files
            }
        };
        files.sort();
        files.dedup();
        files
    }
}

/// `path` inside `root`, with `/` separators (the whole path if it is not inside).
pub fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// A folder's digest: blake3 over `dir` and, for each file in the order given, its path inside
/// the folder and its content hash. What a dataset folder's part of a stage key is, and what its
/// prepared copy is keyed by.
pub fn folder_digest<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8; 32])>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"dir\0");
    for (rel, hash) in files {
        h.update(&(rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update(hash);
    }
    *h.finalize().as_bytes()
}

/// The [`folder_digest`] of `files` (sorted) inside `root`, reading each file (in parallel);
/// `None` when one cannot be read.
pub fn digest_of(root: &Path, files: &[PathBuf]) -> Option<[u8; 32]> {
    use rayon::prelude::*;
    let hashes: Vec<[u8; 32]> = files
        .par_iter()
        .map(|f| {
            let mut h = blake3::Hasher::new();
            h.update_mmap(f).ok()?;
            Some(*h.finalize().as_bytes())
        })
        .collect::<Option<_>>()?;
    let names: Vec<String> = files.iter().map(|f| relative(root, f)).collect();
    Some(folder_digest(names.iter().map(String::as_str).zip(&hashes)))
}

/// The table files that belong to a split.
fn split_tables(dir: &Path) -> Vec<PathBuf> {
    table::table_files(dir)
        .into_iter()
        .filter(|f| table::split_stem(f).is_some_and(|s| super::SplitName::parse(s).is_some()))
        .collect()
}

/// Every image file under `dir`, at any depth; hidden entries are skipped, and each real folder
/// is entered once (a link back up would loop).
fn images_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        if !folder.canonicalize().is_ok_and(|real| seen.insert(real)) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            if left_out(&entry.file_name()) {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() && is_image(&path) {
                out.push(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, rel: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, rel).unwrap();
    }

    fn names(dir: &Path, files: Vec<PathBuf>) -> Vec<String> {
        files
            .iter()
            .map(|f| f.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_table_reads_its_split_files_and_nothing_beside_them() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "README.md",
            "train.csv",
            "dev.csv",
            "notes.csv",
            "data/test-00000-of-00001.parquet",
            "img/a.png",
        ] {
            touch(dir.path(), f);
        }
        assert_eq!(
            names(dir.path(), Reads::Tables.files(dir.path())),
            ["data/test-00000-of-00001.parquet", "dev.csv", "train.csv"]
        );
        assert_eq!(
            names(dir.path(), Reads::ImageTables.files(dir.path())),
            ["data/test-00000-of-00001.parquet", "dev.csv", "img/a.png", "train.csv"]
        );
    }

    #[test]
    fn glue_reads_its_task_files_only() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["train.tsv", "dev_matched.tsv", "dev_mismatched.tsv", "test_matched.tsv"] {
            touch(dir.path(), f);
        }
        assert_eq!(
            names(dir.path(), Reads::Glue(Task::Mnli).files(dir.path())),
            ["dev_matched.tsv", "train.tsv"]
        );
        assert_eq!(
            names(dir.path(), Reads::Glue(Task::MnliMismatched).files(dir.path())),
            ["dev_mismatched.tsv", "train.tsv"]
        );
    }

    #[test]
    fn an_image_folder_reads_its_images() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "train/a/1.jpg",
            "train/a/notes.txt",
            "train/a/3.Bmp",
            "train/a/4.webp",
            "train/a/5.avif",
            "validation/b/2.PNG",
            ".cache/x.png",
            "LICENSE",
        ] {
            touch(dir.path(), f);
        }
        assert_eq!(
            names(dir.path(), Reads::Images.files(dir.path())),
            ["train/a/1.jpg", "train/a/3.Bmp", "train/a/4.webp", "validation/b/2.PNG"]
        );
    }
}

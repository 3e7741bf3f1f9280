//! `image_table`: labelled images listed in a table (the Hub's layout for image datasets such as
//! Beans): an image column holding the encoded file (the Hub's `{bytes, path}` struct, or plain
//! bytes) or a path relative to the table file, and a label column, split files named as for
//! [`super::table`].
//!
//! Rows are read in chunks and each chunk is decoded in parallel, so only the resized RGB images
//! stay in memory, never the whole table's encoded bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::error::DataError;
use super::image_files::{self, is_image, FileKind};
use super::pixels::resize_square;
use super::table::rows::{self, Cell, Flow, Place};
use super::table::{self, Format, Label};
use super::SplitName;
use crate::value::normalize_path;

/// Rows decoded together (in parallel).
const CHUNK: usize = 256;

/// The image table's splits, decoded, with the classes (the training split's labels, sorted).
#[derive(Debug, Clone)]
pub struct ImageTable {
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// The splits present, in `SplitName` order: RGB bytes `[side, side, 3]` and class ids.
    pub splits: Vec<(SplitName, Vec<Vec<u8>>, Vec<u32>)>,
}

/// Where one row's image is.
enum Source {
    /// The encoded file, embedded in the table.
    Bytes(Vec<u8>),
    /// A file, relative to the table file.
    File(PathBuf),
}

/// One row, read but not decoded yet.
struct Pending {
    place: Place,
    file: PathBuf,
    source: Source,
}

/// The image of a cell: embedded bytes first, else a path relative to the table's folder, which
/// must name an image file ([`image_files::is_image`]) inside the dataset's folder `root` (so
/// that it is one of the files the stage key hashes, see [`super::reads`]).
fn source(cell: Cell, table_dir: &Path, root: &Path) -> Result<Source, String> {
    match cell {
        Cell::Bytes(b) => Ok(Source::Bytes(b)),
        Cell::Image { bytes: Some(b), .. } => Ok(Source::Bytes(b)),
        Cell::Image {
            bytes: None,
            path: Some(p),
        }
        | Cell::Text(p) => {
            if p.trim().is_empty() {
                return Err("empty image path".to_string());
            }
            let file = normalize_path(&table_dir.join(&p));
            if !file.starts_with(normalize_path(root)) {
                return Err(format!(
                    "the image path `{p}` leads outside the dataset folder {}; keep the images inside it (its files make up the stage key)",
                    root.display()
                ));
            }
            if hidden(&file, root) {
                return Err(format!(
                    "the image path `{p}` is in a hidden folder (a name starting with `.`), whose files the stage key leaves out; move the images to a folder whose name does not start with `.`"
                ));
            }
            if image_files::kind(&file) == FileKind::Undecoded {
                return Err(format!(
                    "the image path `{p}`: {}",
                    image_files::undecoded_message(&file)
                ));
            }
            if !is_image(&file) {
                return Err(format!(
                    "the image path `{p}` must name a {} file",
                    image_files::decoded_list()
                ));
            }
            Ok(Source::File(file))
        }
        other => Err(format!(
            "must hold an image (encoded bytes, the Hub's {{bytes, path}} struct, or a file path), got {}",
            other.describe()
        )),
    }
}

/// Whether `file` lies under a hidden entry inside `root`: such files are not among those a
/// dataset's part of the stage key hashes ([`super::reads::left_out`]).
fn hidden(file: &Path, root: &Path) -> bool {
    file.strip_prefix(normalize_path(root))
        .is_ok_and(|rel| rel.iter().any(super::reads::left_out))
}

impl Source {
    /// The image, decoded (the format guessed from the bytes); the error in words.
    fn open(&self) -> Result<image::DynamicImage, String> {
        let decoded = match self {
            Source::Bytes(b) => image::load_from_memory(b),
            Source::File(f) => image::ImageReader::open(f)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| format!("{}: {e}", f.display()))?
                .decode(),
        };
        decoded.map_err(|e| format!("cannot decode the image: {e}"))
    }
}

/// Checks an image cell of the table file `file` in the dataset folder `root`: it names an image (embedded, or a file that
/// exists), and with `decode` the image decodes.
pub fn check_cell(cell: Cell, file: &Path, root: &Path, decode: bool) -> Result<(), String> {
    let dir = file.parent().unwrap_or(Path::new("."));
    match source(cell, dir, root)? {
        src if decode => src.open().map(drop),
        Source::File(f) if !f.is_file() => Err(format!("no image file {}", f.display())),
        _ => Ok(()),
    }
}

/// Decodes one image as RGB resized to `side`×`side`.
fn decode(p: &Pending, column: &str, side: u32) -> Result<Vec<u8>, DataError> {
    let img = p
        .source
        .open()
        .map_err(|e| p.place.error(&p.file, format!("column `{column}`: {e}")))?;
    Ok(resize_square(&img.to_rgb8(), side).into_raw())
}

/// Reads and decodes one split; labels stay as the table wrote them.
fn read_split(
    root: &Path,
    files: &[PathBuf],
    format: Option<Format>,
    image: &str,
    label: &str,
    side: u32,
) -> Result<(Vec<Vec<u8>>, Vec<Label>), DataError> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut pending: Vec<Pending> = Vec::with_capacity(CHUNK);
    let flush = |pending: &mut Vec<Pending>, images: &mut Vec<Vec<u8>>| -> Result<(), DataError> {
        let decoded: Vec<Result<Vec<u8>, DataError>> = pending.par_iter().map(|p| decode(p, image, side)).collect();
        pending.clear();
        for d in decoded {
            images.push(d?);
        }
        Ok(())
    };
    for path in files {
        let dir = path.parent().unwrap_or(Path::new("."));
        rows::read_rows(
            path,
            Format::for_file(path, format),
            &[image, label],
            &mut |place, cells| {
                let mut cells = cells.into_iter();
                let bad = |column: &str, e: String| place.error(path, format!("column `{column}`: {e}"));
                let src = source(cells.next().unwrap_or(Cell::Null), dir, root).map_err(|e| bad(image, e))?;
                labels.push(Label::from_cell(cells.next().unwrap_or(Cell::Null)).map_err(|e| bad(label, e))?);
                pending.push(Pending {
                    place,
                    file: path.clone(),
                    source: src,
                });
                if pending.len() == CHUNK {
                    flush(&mut pending, &mut images)?;
                }
                Ok(Flow::Continue(()))
            },
        )?;
    }
    flush(&mut pending, &mut images)?;
    if images.is_empty() {
        return Err(table::empty_split(files));
    }
    Ok((images, labels))
}

/// Loads an image table: every split's images decoded and resized to `side`×`side`.
pub fn load(
    dir: &Path,
    image: &str,
    label: &str,
    format: Option<Format>,
    side: usize,
) -> Result<ImageTable, DataError> {
    let side = u32::try_from(side).map_err(|_| DataError::new(format!("image_size {side} is too large")))?;
    let files = table::split_files(dir)?;
    let mut read = BTreeMap::new();
    for (name, paths) in &files {
        read.insert(*name, read_split(dir, paths, format, image, label, side)?);
    }
    let labels = read
        .iter_mut()
        .map(|(name, (_, l))| (*name, std::mem::take(l)))
        .collect();
    let table::ClassIds { classes, mut ids } = table::class_ids(&labels, &files, label, format, &[image])?;
    let splits = read
        .into_iter()
        .map(|(name, (images, _))| (name, images, ids.remove(&name).unwrap_or_default()))
        .collect();
    Ok(ImageTable {
        classes: classes.iter().map(table::label_name).collect(),
        splits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_path_follows_the_image_folder_rule() {
        let root = Path::new("/data/beans");
        let path = |p: &str| source(Cell::Text(p.into()), root, root);
        assert!(matches!(path("img/a.BMP"), Ok(Source::File(f)) if f == root.join("img/a.BMP")));
        assert!(matches!(path("img/a.webp"), Ok(Source::File(f)) if f == root.join("img/a.webp")));
        let e = path("img/a.avif").err().unwrap();
        assert!(
            e.starts_with("the image path `img/a.avif`: .avif images are not decoded by rkd"),
            "{e}"
        );
        let e = path("img/a.txt").err().unwrap();
        assert_eq!(
            e,
            "the image path `img/a.txt` must name a .jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff, .webp file"
        );
    }
}

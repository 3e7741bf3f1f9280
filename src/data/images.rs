//! Image folders in the Beans layout: `<root>/<split>/<class>/<name>.{jpg,jpeg,png}`.
//!
//! Splits are `train` (required), `validation` (or `val`, `valid`, `dev`) and `test`. The classes
//! are the sorted folder names under `train/`; another split may lack a class but not add one.
//! Images are decoded once (in parallel, the format guessed from the content), converted to RGB
//! and resized to `image_size`×`image_size`; they are kept as 8-bit RGB and normalised per batch.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::error::DataError;
use super::pixels::resize_square;
use super::SplitName;

/// File extensions (lower-cased) taken as images.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The decoded images of one split.
#[derive(Debug, Clone, Default)]
pub struct ImageSplit {
    /// RGB bytes, `[side, side, 3]` each.
    pub images: Vec<Vec<u8>>,
    /// Class index of each image.
    pub labels: Vec<u32>,
    /// The file each image came from.
    pub files: Vec<PathBuf>,
}

/// An image folder, decoded.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// Class names (sorted folder names of `train/`).
    pub classes: Vec<String>,
    /// The splits present, in `SplitName` order.
    pub splits: Vec<(SplitName, ImageSplit)>,
}

/// Folder names accepted for each split.
fn split_dirs(split: SplitName) -> &'static [&'static str] {
    match split {
        SplitName::Train => &["train"],
        SplitName::Validation => &["validation", "val", "valid", "dev"],
        SplitName::Test => &["test"],
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Sorted entries of a directory, hidden ones (`.name`) left out.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, &e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, &e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

fn dir_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Decodes one image file (any of the supported formats, guessed from its bytes), as RGB
/// resized to `side`×`side`.
pub fn decode_resized(path: &Path, side: u32) -> Result<Vec<u8>, DataError> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, &e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, &e))?;
    let img = reader
        .decode()
        .map_err(|e| DataError::file(path, format!("cannot decode the image: {e}")))?;
    Ok(resize_square(&img.to_rgb8(), side).into_raw())
}

/// A split's class folder names, and its image files with their class indices.
type Listing = (Vec<String>, Vec<(PathBuf, u32)>);

/// The image files of one split folder, with class indices; `classes` is `None` for `train`
/// (whose class folders define the classes, returned alongside).
fn list_split(dir: &Path, classes: Option<&[String]>) -> Result<Listing, DataError> {
    let class_dirs: Vec<PathBuf> = sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()).collect();
    if class_dirs.is_empty() {
        return Err(DataError::file(
            dir,
            "no class folders (expected <split>/<class>/*.jpg|png)",
        ));
    }
    let names: Vec<String> = class_dirs.iter().map(|p| dir_name(p)).collect();
    let known = classes.unwrap_or(&names);
    let mut files = Vec::new();
    for (cdir, name) in class_dirs.iter().zip(&names) {
        let Some(label) = known.iter().position(|c| c == name) else {
            return Err(DataError::file(
                cdir,
                format!(
                    "class `{name}` is not among the training classes ({})",
                    known.join(", ")
                ),
            ));
        };
        let before = files.len();
        for f in sorted_entries(cdir)? {
            if f.is_file() && is_image(&f) {
                files.push((f, label as u32));
            }
        }
        if classes.is_none() && files.len() == before {
            return Err(DataError::file(
                cdir,
                "empty class folder (no .jpg, .jpeg or .png files)",
            ));
        }
    }
    if files.is_empty() {
        return Err(DataError::file(
            dir,
            "empty split (no .jpg, .jpeg or .png files in its class folders)",
        ));
    }
    Ok((names, files))
}

/// Decodes the files in parallel; the first failure in file order is the one reported.
fn decode_all(files: Vec<(PathBuf, u32)>, side: u32) -> Result<ImageSplit, DataError> {
    let decoded: Vec<Result<Vec<u8>, DataError>> = files.par_iter().map(|(p, _)| decode_resized(p, side)).collect();
    let mut split = ImageSplit::default();
    for (img, (path, label)) in decoded.into_iter().zip(files) {
        split.images.push(img?);
        split.labels.push(label);
        split.files.push(path);
    }
    Ok(split)
}

/// Loads and decodes an image folder, resizing every image to `side`×`side`.
pub fn load_image_folder(root: &Path, side: usize) -> Result<ImageFolder, DataError> {
    if !root.is_dir() {
        let why = if root.exists() {
            "not a directory"
        } else {
            "missing directory"
        };
        return Err(DataError::file(
            root,
            format!("{why} (image_folder expects <split>/<class>/*.jpg|png)"),
        ));
    }
    let side = u32::try_from(side).map_err(|_| DataError::new(format!("image_size {side} is too large")))?;
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        return Err(DataError::file(&train_dir, "missing training split folder"));
    }
    let (classes, train_files) = list_split(&train_dir, None)?;
    let mut splits = vec![(SplitName::Train, decode_all(train_files, side)?)];
    for split in [SplitName::Validation, SplitName::Test] {
        let Some(dir) = split_dirs(split).iter().map(|d| root.join(d)).find(|d| d.is_dir()) else {
            continue;
        };
        let (_, files) = list_split(&dir, Some(&classes))?;
        splits.push((split, decode_all(files, side)?));
    }
    Ok(ImageFolder { classes, splits })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a small PNG (a class-coloured square) at `path`.
    pub(crate) fn write_png(path: &Path, side: u32, shade: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let img = image::RgbImage::from_fn(side, side, |x, y| image::Rgb([shade, (x * 10) as u8, (y * 10) as u8]));
        img.save(path).unwrap();
    }

    /// A tiny Beans-like folder: train 2+2, validation 1+1, classes `a_cls`, `b_cls`.
    pub(crate) fn tiny_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (split, n) in [("train", 2), ("validation", 1)] {
            for (c, shade) in [("b_cls", 200u8), ("a_cls", 20)] {
                for i in 0..n {
                    write_png(&dir.path().join(split).join(c).join(format!("{c}_{i}.png")), 12, shade);
                }
            }
        }
        std::fs::write(dir.path().join("train/a_cls/notes.txt"), "ignored").unwrap();
        dir
    }

    #[test]
    fn loads_a_tiny_folder() {
        let dir = tiny_folder();
        let f = load_image_folder(dir.path(), 8).unwrap();
        assert_eq!(f.classes, ["a_cls", "b_cls"]);
        assert_eq!(f.splits.len(), 2);
        let (name, train) = &f.splits[0];
        assert_eq!(*name, SplitName::Train);
        assert_eq!(train.labels, [0, 0, 1, 1]);
        assert!(train.images.iter().all(|i| i.len() == 8 * 8 * 3));
        assert_eq!(train.images[0][0], 20);
        assert_eq!(train.images[3][0], 200);
        assert_eq!(f.splits[1].1.labels, [0, 1]);
    }

    #[test]
    fn bad_folders_are_clear_errors() {
        let dir = tiny_folder();
        let bad = dir.path().join("train/b_cls/broken.png");
        std::fs::write(&bad, b"not a png at all").unwrap();
        let e = load_image_folder(dir.path(), 8).unwrap_err();
        assert_eq!(e.path.as_deref(), Some(bad.as_path()));
        assert!(e.to_string().contains("cannot decode the image"), "{e}");
        std::fs::remove_file(&bad).unwrap();

        write_png(&dir.path().join("validation/zebra/z.png"), 4, 0);
        let e = load_image_folder(dir.path(), 8).unwrap_err();
        assert!(
            e.to_string()
                .contains("class `zebra` is not among the training classes"),
            "{e}"
        );
        std::fs::remove_dir_all(dir.path().join("validation/zebra")).unwrap();

        std::fs::create_dir_all(dir.path().join("train/c_cls")).unwrap();
        let e = load_image_folder(dir.path(), 8).unwrap_err();
        assert!(e.to_string().contains("empty class folder"), "{e}");

        let e = load_image_folder(&dir.path().join("nothing"), 8).unwrap_err();
        assert!(e.to_string().contains("missing directory"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = load_image_folder(empty.path(), 8).unwrap_err();
        assert!(e.to_string().contains("missing training split"), "{e}");
    }
}

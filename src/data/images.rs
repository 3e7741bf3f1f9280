//! Image folders in the Beans layout: `<root>/<split>/<class>/<name>.{jpg,jpeg,png,bmp,gif,tif,tiff,webp}`.
//!
//! Splits are `train` (required), `validation` (or `val`, `valid`, `dev`) and `test`. The classes
//! are the sorted folder names under `train/`; another split may lack a class but not add one.
//! Which files are images is [`super::image_files`]'s rule; a folder inside a class folder, a
//! broken link or an image rkd does not decode is an error, other files make a warning.
//! Images are decoded once (in parallel, the format guessed from the content), converted to RGB
//! and resized to `image_size`×`image_size`; they are kept as 8-bit RGB and normalised per batch.
//! With a cache directory, the decoded images are also saved there, keyed by the files' contents
//! and `image_size`, and later loads read them back instead of decoding.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::error::DataError;
use super::image_files::{decoded_list, entries, is_folder, kind, undecoded_message, Entry, FileKind};
use super::pixels::resize_square;
use super::SplitName;

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
    /// One line per split holding files that are not images (which were not read).
    pub warnings: Vec<String>,
}

/// Folder names accepted for each split.
fn split_dirs(split: SplitName) -> &'static [&'static str] {
    match split {
        SplitName::Train => &["train"],
        SplitName::Validation => &["validation", "val", "valid", "dev"],
        SplitName::Test => &["test"],
        // Carved out of train by `holdout:`, never read from a folder.
        SplitName::Holdout => &[],
    }
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

/// What a split folder holds: its class folder names, its image files with their class
/// indices, and a warning about the files in it that are not images, if there are any.
struct Listing {
    classes: Vec<String>,
    files: Vec<(PathBuf, u32)>,
    warning: Option<String>,
}

/// The image files of one split folder, with class indices; `classes` is `None` for `train`
/// (whose class folders define the classes, returned alongside). A folder inside a class folder,
/// a broken link and an image in a format rkd does not decode are errors naming them; other files
/// are not read, and make the listing's warning.
fn list_split(dir: &Path, classes: Option<&[String]>) -> Result<Listing, DataError> {
    let mut class_dirs = Vec::new();
    let mut others = Vec::new();
    for entry in entries(dir)? {
        match entry {
            Entry::Dir(p) => class_dirs.push(p),
            Entry::File(p) => others.push(p),
        }
    }
    if class_dirs.is_empty() {
        return Err(DataError::file(
            dir,
            format!(
                "no class folders (expected <split>/<class>/<image>, images {})",
                decoded_list()
            ),
        ));
    }
    let names: Vec<String> = class_dirs.iter().map(|p| dir_name(p)).collect();
    let known = classes.unwrap_or(&names);
    let mut files = Vec::new();
    let mut undecoded = Vec::new();
    let mut empty = None;
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
        for entry in entries(cdir)? {
            let f = match entry {
                Entry::Dir(sub) => return Err(nested(&sub, name)),
                Entry::File(f) => f,
            };
            match kind(&f) {
                FileKind::Image => files.push((f, label as u32)),
                FileKind::Undecoded => undecoded.push(f),
                FileKind::Other => others.push(f),
            }
        }
        if classes.is_none() && files.len() == before && empty.is_none() {
            empty = Some(cdir);
        }
    }
    if let Some(first) = undecoded.first() {
        let n = undecoded.len();
        let more = if n > 1 {
            format!(" ({n} such files in {})", dir.display())
        } else {
            String::new()
        };
        return Err(DataError::file(first, format!("{}{more}", undecoded_message(first))));
    }
    if let Some(cdir) = empty {
        return Err(DataError::file(
            cdir,
            format!("empty class folder (no {} files)", decoded_list()),
        ));
    }
    if files.is_empty() {
        return Err(DataError::file(
            dir,
            format!("empty split (no {} files in its class folders)", decoded_list()),
        ));
    }
    let warning = others.first().map(|first| {
        let n = others.len();
        let (count, what) = if n == 1 {
            ("1 file".to_string(), "is not an image and is not read")
        } else {
            (format!("{n} files"), "are not images and are not read")
        };
        format!(
            "{count} in {} {what} (e.g. {}); image_folder reads {} files in <split>/<class>/",
            dir.display(),
            first.strip_prefix(dir).unwrap_or(first).display(),
            decoded_list()
        )
    });
    Ok(Listing {
        classes: names,
        files,
        warning,
    })
}

/// The error for a folder inside a class folder: image_folder reads one level of class folders.
fn nested(sub: &Path, class: &str) -> DataError {
    DataError::file(
        sub,
        format!(
            "a folder inside the class folder `{class}`: image_folder reads <split>/<class>/<image>, one folder per class \
             directly in the split folder, and enters no deeper folder; move its images into `{class}/` or remove it"
        ),
    )
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

/// An image folder's classes and the image files of each split, with their class indices, and
/// the warnings about files that are not read.
struct FolderListing {
    classes: Vec<String>,
    splits: Vec<(SplitName, Vec<(PathBuf, u32)>)>,
    warnings: Vec<String>,
}

/// Lists an image folder without reading an image: `train/` (whose class folders are the
/// classes, at least 2) and `validation/` (or `val/`, `dev/`) and `test/` where present.
fn list_folder(root: &Path) -> Result<FolderListing, DataError> {
    DataError::unless_dir(root, "image_folder expects <split>/<class>/<image>")?;
    let train_dir = root.join("train");
    if !is_folder(&train_dir)? {
        return Err(DataError::file(&train_dir, "missing training split folder"));
    }
    let train = list_split(&train_dir, None)?;
    let classes = train.classes;
    let mut warnings: Vec<String> = train.warning.into_iter().collect();
    if classes.len() < 2 {
        return Err(DataError::file(
            &train_dir,
            format!(
                "one class folder ({}): a classifier needs at least 2 (expected train/<class>/<image>, one folder per class)",
                classes.join(", ")
            ),
        ));
    }
    let mut listing = vec![(SplitName::Train, train.files)];
    for split in [SplitName::Validation, SplitName::Test] {
        let mut found = None;
        for dir in split_dirs(split).iter().map(|d| root.join(d)) {
            // A broken `validation` link is an error, not a split quietly missing.
            if is_folder(&dir)? {
                found = Some(dir);
                break;
            }
        }
        let Some(dir) = found else {
            continue;
        };
        let listed = list_split(&dir, Some(&classes))?;
        warnings.extend(listed.warning);
        listing.push((split, listed.files));
    }
    Ok(FolderListing {
        classes,
        splits: listing,
        warnings,
    })
}

/// Checks an image folder without loading it, as `rkd check` and `rkd run` do before any stage
/// starts: its splits list as loading lists them (every error loading would meet in the
/// listing) and the first image of each split decodes. Returns the warnings about files that
/// are not read.
pub fn check_folder(root: &Path) -> Result<Vec<String>, DataError> {
    let listing = list_folder(root)?;
    for (_, files) in &listing.splits {
        if let Some((first, _)) = files.first() {
            decode_resized(first, 1)?;
        }
    }
    Ok(listing.warnings)
}

/// Loads and decodes an image folder, resizing every image to `side`×`side`.
pub fn load_image_folder(root: &Path, side: usize) -> Result<ImageFolder, DataError> {
    load_image_folder_cached(root, side, None)
}

/// Like [`load_image_folder`], with an optional on-disk cache of the decoded images under
/// `cache_dir` (keyed by `image_size` and every image file's relative path and content); the
/// cache is never required: a missing, unreadable or damaged cache file means decoding again
/// (and rewriting it).
pub fn load_image_folder_cached(root: &Path, side: usize, cache_dir: Option<&Path>) -> Result<ImageFolder, DataError> {
    load_with_cache(root, side, cache_dir).map(|(f, _)| f)
}

/// How a load used the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheUse {
    /// No cache directory, or the files could not be hashed.
    None,
    /// The images came from the cache file.
    Hit,
    /// The images were decoded (and the cache file written, if possible).
    Decoded,
}

pub(crate) fn load_with_cache(
    root: &Path,
    side: usize,
    cache_dir: Option<&Path>,
) -> Result<(ImageFolder, CacheUse), DataError> {
    let side = u32::try_from(side).map_err(|_| DataError::new(format!("image_size {side} is too large")))?;
    let FolderListing {
        classes,
        splits: listing,
        warnings,
    } = list_folder(root)?;
    let cache_file = cache_dir
        .and_then(|dir| cache_key(root, side, &listing).map(|k| dir.join(format!("images-{}.bin", k.to_hex()))));
    if let Some(file) = &cache_file {
        if let Some(images) = cache::read(file, root, side, &listing) {
            let mut images = images.into_iter();
            let splits = listing
                .into_iter()
                .map(|(name, files)| {
                    let mut split = ImageSplit::default();
                    for (path, label) in files {
                        split.images.push(images.next().unwrap_or_default());
                        split.labels.push(label);
                        split.files.push(path);
                    }
                    (name, split)
                })
                .collect();
            return Ok((
                ImageFolder {
                    classes,
                    splits,
                    warnings,
                },
                CacheUse::Hit,
            ));
        }
    }
    let mut splits = Vec::with_capacity(listing.len());
    for (name, files) in listing {
        splits.push((name, decode_all(files, side)?));
    }
    let folder = ImageFolder {
        classes,
        splits,
        warnings,
    };
    let used = match &cache_file {
        Some(file) => {
            // A cache that cannot be written is only a lost speed-up.
            let _ = cache::write(file, root, side, &folder);
            CacheUse::Decoded
        }
        None => CacheUse::None,
    };
    Ok((folder, used))
}

/// The file's path relative to the folder root, as bytes (the whole path if it is not inside).
fn relative_bytes<'a>(root: &Path, path: &'a Path) -> &'a [u8] {
    path.strip_prefix(root).unwrap_or(path).as_os_str().as_encoded_bytes()
}

/// The cache key of a listed folder: blake3 of the cache format version, the side and, for every
/// image in listing order (split, then sorted class folders, then sorted files), its split, class,
/// relative path and content blake3. `None` when a file cannot be read (decoding then reports it).
fn cache_key(root: &Path, side: u32, listing: &[(SplitName, Vec<(PathBuf, u32)>)]) -> Option<blake3::Hash> {
    let files: Vec<(SplitName, &Path, u32)> = listing
        .iter()
        .flat_map(|(s, files)| files.iter().map(move |(p, l)| (*s, p.as_path(), *l)))
        .collect();
    let hashes: Vec<Option<blake3::Hash>> = files
        .par_iter()
        .map(|(_, p, _)| {
            let mut h = blake3::Hasher::new();
            h.update_mmap(p).ok()?;
            Some(h.finalize())
        })
        .collect();
    let mut key = blake3::Hasher::new();
    key.update(cache::VERSION_TAG);
    key.update(&side.to_le_bytes());
    key.update(&(files.len() as u64).to_le_bytes());
    for ((split, path, label), hash) in files.iter().zip(hashes) {
        let rel = relative_bytes(root, path);
        key.update(&[*split as u8]);
        key.update(&label.to_le_bytes());
        key.update(&(rel.len() as u64).to_le_bytes());
        key.update(rel);
        key.update(hash?.as_bytes());
    }
    Some(key.finalize())
}

/// The cache file: a header (magic, version, image count, side), then per image its split id
/// (u8), class id (u32), relative path (u32 length + bytes) and `side*side*3` RGB bytes; all
/// integers little-endian. Written through a temporary file and a rename; checked on reading.
mod cache {
    use std::io::{BufReader, BufWriter, Read, Write};
    use std::path::Path;

    use crate::data::images::{relative_bytes, ImageFolder};
    use crate::data::SplitName;

    const MAGIC: &[u8; 8] = b"RKDIMGC\0";
    const VERSION: u32 = 1;
    /// Hashed into the cache key, so a format change never reads an old file.
    pub(super) const VERSION_TAG: &[u8] = b"rkd-image-cache-v1";
    const HEADER_LEN: u64 = 8 + 4 + 8 + 4;

    /// The expected file length for this listing.
    fn expected_len(root: &Path, side: u32, listing: &[(SplitName, Vec<(std::path::PathBuf, u32)>)]) -> u64 {
        let pixels = (side as u64) * (side as u64) * 3;
        let per: u64 = listing
            .iter()
            .flat_map(|(_, files)| files.iter())
            .map(|(p, _)| 1 + 4 + 4 + relative_bytes(root, p).len() as u64 + pixels)
            .sum();
        HEADER_LEN + per
    }

    /// The cached images in listing order, or `None` if the file is missing, unreadable or does
    /// not match the listing.
    pub(super) fn read(
        file: &Path,
        root: &Path,
        side: u32,
        listing: &[(SplitName, Vec<(std::path::PathBuf, u32)>)],
    ) -> Option<Vec<Vec<u8>>> {
        let f = std::fs::File::open(file).ok()?;
        if f.metadata().ok()?.len() != expected_len(root, side, listing) {
            return None;
        }
        let mut r = BufReader::new(f);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).ok()?;
        let count: usize = listing.iter().map(|(_, f)| f.len()).sum();
        if &magic != MAGIC
            || read_u32(&mut r)? != VERSION
            || read_u64(&mut r)? != count as u64
            || read_u32(&mut r)? != side
        {
            return None;
        }
        let pixels = (side as usize) * (side as usize) * 3;
        let mut images = Vec::with_capacity(count);
        let mut path = Vec::new();
        for (split, files) in listing {
            for (p, label) in files {
                let mut id = [0u8; 1];
                r.read_exact(&mut id).ok()?;
                let rel = relative_bytes(root, p);
                if id[0] != *split as u8 || read_u32(&mut r)? != *label || read_u32(&mut r)? as usize != rel.len() {
                    return None;
                }
                path.resize(rel.len(), 0);
                r.read_exact(&mut path).ok()?;
                if path != rel {
                    return None;
                }
                let mut img = vec![0u8; pixels];
                r.read_exact(&mut img).ok()?;
                images.push(img);
            }
        }
        // Nothing may follow.
        (r.read(&mut [0u8; 1]).ok()? == 0).then_some(images)
    }

    /// Writes the decoded folder to `file` atomically (a temporary file in the same directory,
    /// then a rename).
    pub(super) fn write(file: &Path, root: &Path, side: u32, folder: &ImageFolder) -> std::io::Result<()> {
        let dir = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        {
            let mut w = BufWriter::new(tmp.as_file_mut());
            let count: usize = folder.splits.iter().map(|(_, s)| s.images.len()).sum();
            w.write_all(MAGIC)?;
            w.write_all(&VERSION.to_le_bytes())?;
            w.write_all(&(count as u64).to_le_bytes())?;
            w.write_all(&side.to_le_bytes())?;
            for (split, s) in &folder.splits {
                for ((img, label), path) in s.images.iter().zip(&s.labels).zip(&s.files) {
                    let rel = relative_bytes(root, path);
                    let rel_len = u32::try_from(rel.len()).map_err(std::io::Error::other)?;
                    w.write_all(&[*split as u8])?;
                    w.write_all(&label.to_le_bytes())?;
                    w.write_all(&rel_len.to_le_bytes())?;
                    w.write_all(rel)?;
                    w.write_all(img)?;
                }
            }
            w.flush()?;
        }
        tmp.persist(file).map_err(|e| e.error)?;
        Ok(())
    }

    fn read_u32(r: &mut impl Read) -> Option<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }

    fn read_u64(r: &mut impl Read) -> Option<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }
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
        // train/a_cls/notes.txt is not read, and said so once for the split.
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        assert!(
            f.warnings[0].starts_with("1 file in ")
                && f.warnings[0].contains("is not an image and is not read (e.g. a_cls/notes.txt)"),
            "{}",
            f.warnings[0]
        );
    }

    #[test]
    fn bmp_gif_tiff_and_webp_images_load_beside_png_and_jpeg_in_any_case() {
        let dir = tiny_folder();
        let img = image::RgbImage::from_fn(6, 6, |_, _| image::Rgb([77, 1, 2]));
        for name in ["c.BMP", "f.gif", "g.TIF", "h.tiff", "i.webp"] {
            img.save(dir.path().join("train/a_cls").join(name)).unwrap();
        }
        img.save(dir.path().join("train/b_cls/d.jpeg")).unwrap();
        img.save_with_format(dir.path().join("train/b_cls/e.JPG"), image::ImageFormat::Jpeg)
            .unwrap();
        let f = load_image_folder(dir.path(), 4).unwrap();
        let train = &f.splits[0].1;
        let names: Vec<String> = train.files.iter().map(|p| dir_name(p)).collect();
        assert_eq!(
            names,
            [
                "a_cls_0.png",
                "a_cls_1.png",
                "c.BMP",
                "f.gif",
                "g.TIF",
                "h.tiff",
                "i.webp",
                "b_cls_0.png",
                "b_cls_1.png",
                "d.jpeg",
                "e.JPG"
            ]
        );
        assert_eq!(train.labels, [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]);
        for (i, name) in names.iter().enumerate().take(7).skip(2) {
            assert_eq!(train.images[i][..3], [77, 1, 2], "{name} decoded");
        }
        // The stage key's walk takes the same files as images.
        let walked = crate::data::reads::Reads::Images.files(dir.path());
        let mut loaded: Vec<PathBuf> = f.splits.iter().flat_map(|(_, s)| s.files.clone()).collect();
        loaded.sort();
        assert_eq!(walked, loaded);
    }

    #[test]
    fn images_rkd_does_not_decode_are_refused_by_name() {
        for ext in ["heic", "avif", "HEIF"] {
            let dir = tiny_folder();
            // A class folder of such files only: an error naming the format, not "empty".
            std::fs::create_dir_all(dir.path().join("train/c_cls")).unwrap();
            for i in 0..3 {
                std::fs::write(dir.path().join(format!("train/c_cls/{i}.{ext}")), b"whatever").unwrap();
            }
            let e = load_image_folder(dir.path(), 8).unwrap_err();
            let first = dir.path().join(format!("train/c_cls/0.{ext}"));
            assert_eq!(e.path.as_deref(), Some(first.as_path()), "{e}");
            let lower = ext.to_ascii_lowercase();
            assert!(
                e.message
                    .starts_with(&format!(".{lower} images are not decoded by rkd")),
                "{e}"
            );
            assert!(e.message.contains("(3 such files in "), "{e}");
        }
    }

    #[test]
    fn non_images_are_counted_once_per_split() {
        let dir = tiny_folder();
        std::fs::write(dir.path().join("train/b_cls/labels.csv"), "x").unwrap();
        std::fs::write(dir.path().join("train/README"), "x").unwrap();
        std::fs::write(dir.path().join("validation/a_cls/Thumbs.db"), "x").unwrap();
        std::fs::write(dir.path().join("train/a_cls/.DS_Store"), "x").unwrap();
        let f = load_image_folder(dir.path(), 8).unwrap();
        assert_eq!(f.warnings.len(), 2, "{:?}", f.warnings);
        let train = dir.path().join("train");
        assert_eq!(
            f.warnings[0],
            format!(
                "3 files in {} are not images and are not read (e.g. README); image_folder reads .jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff, .webp files in <split>/<class>/",
                train.display()
            )
        );
        assert!(f.warnings[1].contains("(e.g. a_cls/Thumbs.db)"), "{}", f.warnings[1]);
    }

    #[test]
    fn a_folder_inside_a_class_folder_is_an_error_naming_it() {
        let dir = tiny_folder();
        let nested = dir.path().join("train/a_cls/more");
        write_png(&nested.join("x.png"), 4, 0);
        let e = load_image_folder(dir.path(), 8).unwrap_err();
        assert_eq!(e.path.as_deref(), Some(nested.as_path()));
        assert!(e.message.starts_with("a folder inside the class folder `a_cls`"), "{e}");
        assert!(e.message.contains("move its images into `a_cls/` or remove it"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_broken_link_among_the_images_is_an_error_naming_it() {
        let dir = tiny_folder();
        let link = dir.path().join("validation/b_cls/gone.png");
        std::os::unix::fs::symlink(dir.path().join("nowhere.png"), &link).unwrap();
        let e = load_image_folder(dir.path(), 8).unwrap_err();
        assert_eq!(e.path.as_deref(), Some(link.as_path()));
        assert!(e.message.starts_with("a broken link"), "{e}");
        std::fs::remove_file(&link).unwrap();

        // A broken link standing for a whole class folder is no class dropped quietly either.
        let link = dir.path().join("train/c_cls");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).unwrap();
        let e = load_image_folder(dir.path(), 8).unwrap_err();
        assert_eq!(e.path.as_deref(), Some(link.as_path()));

        // A link to an image is read as the image.
        std::fs::remove_file(&link).unwrap();
        let good = dir.path().join("validation/b_cls/linked.png");
        std::os::unix::fs::symlink(dir.path().join("train/b_cls/b_cls_0.png"), &good).unwrap();
        let f = load_image_folder(dir.path(), 8).unwrap();
        assert_eq!(f.splits[1].1.labels, [0, 1, 1]);

        // A `test` split behind a broken link is an error, not a split quietly missing.
        let link = dir.path().join("test");
        std::os::unix::fs::symlink(dir.path().join("moved-away"), &link).unwrap();
        let e = load_image_folder(dir.path(), 8).unwrap_err();
        assert_eq!(e.path.as_deref(), Some(link.as_path()));
        assert!(e.message.starts_with("a broken link"), "{e}");
    }

    fn only_cache_file(dir: &Path) -> PathBuf {
        let files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    }

    fn assert_same(a: &ImageFolder, b: &ImageFolder) {
        assert_eq!(a.classes, b.classes);
        assert_eq!(a.splits.len(), b.splits.len());
        for ((na, sa), (nb, sb)) in a.splits.iter().zip(&b.splits) {
            assert_eq!(na, nb);
            assert_eq!(sa.images, sb.images);
            assert_eq!(sa.labels, sb.labels);
            assert_eq!(sa.files, sb.files);
        }
    }

    #[test]
    fn the_cache_is_read_back_and_keyed_by_content() {
        let dir = tiny_folder();
        let cache = tempfile::tempdir().unwrap();
        let cdir = cache.path().join("cache");
        let plain = load_image_folder(dir.path(), 8).unwrap();
        let (first, used) = load_with_cache(dir.path(), 8, Some(&cdir)).unwrap();
        assert_eq!(used, CacheUse::Decoded);
        assert_same(&first, &plain);
        let file = only_cache_file(&cdir);
        let (second, used) = load_with_cache(dir.path(), 8, Some(&cdir)).unwrap();
        assert_eq!(used, CacheUse::Hit);
        assert_same(&second, &plain);

        // Another size is another key.
        let (_, used) = load_with_cache(dir.path(), 6, Some(&cdir)).unwrap();
        assert_eq!(used, CacheUse::Decoded);
        std::fs::remove_file(cdir.join(format!(
            "images-{}.bin",
            cache_key(dir.path(), 6, &listing_of(dir.path())).unwrap().to_hex()
        )))
        .unwrap();
        assert_eq!(only_cache_file(&cdir), file);

        // New content under the same name changes the key: decoded again, into a new file.
        write_png(&dir.path().join("train/b_cls/b_cls_0.png"), 12, 90);
        let (third, used) = load_with_cache(dir.path(), 8, Some(&cdir)).unwrap();
        assert_eq!(used, CacheUse::Decoded);
        assert_eq!(third.splits[0].1.images[2][0], 90);
        let (fourth, used) = load_with_cache(dir.path(), 8, Some(&cdir)).unwrap();
        assert_eq!(used, CacheUse::Hit);
        assert_same(&fourth, &third);

        // A file that is not an image any more is reported as before, cache or not.
        let bad = dir.path().join("train/b_cls/b_cls_0.png");
        std::fs::write(&bad, b"not a png at all").unwrap();
        let e = load_with_cache(dir.path(), 8, Some(&cdir)).unwrap_err();
        assert_eq!(e.path.as_deref(), Some(bad.as_path()));

        // No cache directory: decoded, nothing cached.
        write_png(&bad, 12, 200);
        let (_, used) = load_with_cache(dir.path(), 8, None).unwrap();
        assert_eq!(used, CacheUse::None);
    }

    /// The listing `load_with_cache` builds, for computing keys in tests.
    fn listing_of(root: &Path) -> Vec<(SplitName, Vec<(PathBuf, u32)>)> {
        let train = list_split(&root.join("train"), None).unwrap();
        let val = list_split(&root.join("validation"), Some(&train.classes)).unwrap();
        vec![(SplitName::Train, train.files), (SplitName::Validation, val.files)]
    }

    #[test]
    fn a_damaged_cache_file_is_ignored_and_rewritten() {
        let dir = tiny_folder();
        let cache = tempfile::tempdir().unwrap();
        let cdir = cache.path().join("cache");
        let (want, _) = load_with_cache(dir.path(), 8, Some(&cdir)).unwrap();
        let file = only_cache_file(&cdir);
        let good = std::fs::read(&file).unwrap();

        let mut damaged: Vec<Vec<u8>> = Vec::new();
        damaged.push(good[..good.len() - 1].to_vec()); // truncated
        let mut longer = good.clone();
        longer.push(0);
        damaged.push(longer); // trailing bytes
        let mut magic = good.clone();
        magic[0] ^= 0xff;
        damaged.push(magic); // bad magic
        let mut version = good.clone();
        version[8] ^= 1;
        damaged.push(version); // other version
        let mut count = good.clone();
        count[12] ^= 1;
        damaged.push(count); // wrong count
        let mut path = good.clone();
        path[24 + 9] ^= 1;
        damaged.push(path); // first image's path differs
        damaged.push(Vec::new()); // empty
        for bytes in damaged {
            std::fs::write(&file, &bytes).unwrap();
            let (got, used) = load_with_cache(dir.path(), 8, Some(&cdir)).unwrap();
            assert_eq!(used, CacheUse::Decoded);
            assert_same(&got, &want);
            assert_eq!(std::fs::read(&file).unwrap(), good, "rewritten");
            assert_eq!(only_cache_file(&cdir), file, "no temporary file left");
        }
        let (_, used) = load_with_cache(dir.path(), 8, Some(&cdir)).unwrap();
        assert_eq!(used, CacheUse::Hit);

        // A cache directory that cannot be created is no error.
        let blocked = cache.path().join("a_file");
        std::fs::write(&blocked, "x").unwrap();
        let (got, used) = load_with_cache(dir.path(), 8, Some(&blocked.join("cache"))).unwrap();
        assert_eq!(used, CacheUse::Decoded);
        assert_same(&got, &want);
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

        std::fs::remove_dir_all(dir.path().join("train/c_cls")).unwrap();
        std::fs::remove_dir_all(dir.path().join("train/b_cls")).unwrap();
        std::fs::remove_dir_all(dir.path().join("validation/b_cls")).unwrap();
        let e = load_image_folder(dir.path(), 8).unwrap_err();
        assert!(
            e.to_string()
                .contains("one class folder (a_cls): a classifier needs at least 2"),
            "{e}"
        );

        let e = load_image_folder(&dir.path().join("nothing"), 8).unwrap_err();
        assert!(e.to_string().contains("missing directory"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = load_image_folder(empty.path(), 8).unwrap_err();
        assert!(e.to_string().contains("missing training split"), "{e}");
    }
}

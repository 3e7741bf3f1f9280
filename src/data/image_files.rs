//! Which files are images: the one rule that the image folder loader ([`super::images`]), an
//! image table's file paths ([`super::image_table`]) and the stage key's folder walk
//! ([`super::reads`]) share, so that the files a key hashes are the files that are decoded.
//!
//! A file is taken by its extension (case-insensitive). An image in a format rkd does not decode
//! (.heic, .avif, ...) is never skipped quietly: the loader refuses it by name.

use std::path::{Path, PathBuf};

use super::error::DataError;

/// Whether an entry of that name is left out of a folder's fingerprint, and so of every key, and
/// of what the loaders read: a hidden one (the name starts with `.`: `.git`, `.DS_Store`,
/// `.ipynb_checkpoints`).
pub fn left_out(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

/// File extensions (lower-cased) taken as images and decoded.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp"];

/// Extensions (lower-cased) of image formats rkd does not decode: such a file where images are
/// read is an error, not a file left out.
pub const UNDECODED_EXTENSIONS: [&str; 3] = ["heic", "heif", "avif"];

/// What a file is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// An image rkd decodes.
    Image,
    /// An image in a format rkd does not decode.
    Undecoded,
    /// Anything else (not an image).
    Other,
}

/// The file's extension, lower-cased.
fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
}

/// What the file is, by its extension.
pub fn kind(path: &Path) -> FileKind {
    match extension(path) {
        Some(e) if IMAGE_EXTENSIONS.contains(&e.as_str()) => FileKind::Image,
        Some(e) if UNDECODED_EXTENSIONS.contains(&e.as_str()) => FileKind::Undecoded,
        _ => FileKind::Other,
    }
}

/// Whether the file has an image extension rkd decodes.
pub fn is_image(path: &Path) -> bool {
    kind(path) == FileKind::Image
}

/// The decoded extensions in words: `.jpg, .jpeg, .png, .bmp, ...`.
pub fn decoded_list() -> String {
    IMAGE_EXTENSIONS.map(|e| format!(".{e}")).join(", ")
}

/// Why an image in a format rkd does not decode is refused, and what to do about it.
pub fn undecoded_message(path: &Path) -> String {
    let ext = extension(path).unwrap_or_default();
    format!(
        ".{ext} images are not decoded by rkd (it reads {}); convert them first, e.g. with ImageMagick: `mogrify -format png *.{ext}`",
        decoded_list()
    )
}

/// An entry of a folder, with symbolic links followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A folder (or a link to one).
    Dir(PathBuf),
    /// A regular file (or a link to one).
    File(PathBuf),
}

/// The entries of `dir`, sorted, hidden ones ([`left_out`]) left out. A link whose
/// target is missing, or an entry that cannot be looked at, is an error naming it: a file that
/// cannot be read is never left out quietly.
pub fn entries(dir: &Path) -> Result<Vec<Entry>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, &e))?;
    let mut paths = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, &e))?;
        if !left_out(&entry.file_name()) {
            paths.push(entry.path());
        }
    }
    paths.sort();
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => out.push(Entry::Dir(path)),
            Ok(_) => out.push(Entry::File(path)),
            Err(e) => return Err(broken(&path, &e)),
        }
    }
    Ok(out)
}

/// Whether `path` is a folder (or a link to one): `false` when nothing is there or it is a file;
/// a broken link, or an entry whose metadata cannot be read, is an error naming it.
pub fn is_folder(path: &Path) -> Result<bool, DataError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(meta.is_dir()),
        Err(e) if std::fs::symlink_metadata(path).is_ok() => Err(broken(path, &e)),
        Err(_) => Ok(false),
    }
}

/// The error for an entry whose metadata cannot be read: a dangling link says where it points.
fn broken(path: &Path, err: &std::io::Error) -> DataError {
    match std::fs::read_link(path) {
        Ok(target) if err.kind() == std::io::ErrorKind::NotFound => DataError::file(
            path,
            format!(
                "a broken link: its target {} does not exist (fix or remove the link)",
                target.display()
            ),
        ),
        _ => DataError::io(path, err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_told_apart_by_extension_in_any_case() {
        for name in [
            "a.jpg", "a.JPEG", "a.Png", "a.bmp", "a.webp", "a.GIF", "a.tif", "a.tiff",
        ] {
            assert_eq!(kind(Path::new(name)), FileKind::Image, "{name}");
        }
        for name in ["a.avif", "a.heif", "a.HEIC"] {
            assert_eq!(kind(Path::new(name)), FileKind::Undecoded, "{name}");
        }
        for name in ["notes.txt", "LICENSE", "a.png.part", "Thumbs.db"] {
            assert_eq!(kind(Path::new(name)), FileKind::Other, "{name}");
        }
        let m = undecoded_message(Path::new("x/cat.HEIC"));
        assert!(m.starts_with(".heic images are not decoded"), "{m}");
        assert!(m.contains(".jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff, .webp"), "{m}");
    }

    #[cfg(unix)]
    #[test]
    fn a_folder_behind_a_broken_link_is_an_error_not_a_missing_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("train")).unwrap();
        std::fs::write(dir.path().join("notes"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("validation")).unwrap();
        assert!(is_folder(&dir.path().join("train")).unwrap());
        assert!(!is_folder(&dir.path().join("notes")).unwrap());
        assert!(!is_folder(&dir.path().join("test")).unwrap());
        let e = is_folder(&dir.path().join("validation")).unwrap_err();
        assert!(e.message.starts_with("a broken link: its target"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_dangling_link_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join(".hidden"), b"x").unwrap();
        assert_eq!(
            entries(dir.path()).unwrap(),
            [
                Entry::File(dir.path().join("a.png")),
                Entry::Dir(dir.path().join("sub"))
            ]
        );
        let link = dir.path().join("b.png");
        std::os::unix::fs::symlink(dir.path().join("gone.png"), &link).unwrap();
        let e = entries(dir.path()).unwrap_err();
        assert_eq!(e.path.as_deref(), Some(link.as_path()));
        assert!(e.message.contains("a broken link: its target"), "{e}");
        assert!(e.message.contains("gone.png does not exist"), "{e}");
    }
}

//! Bundles: one `.tar.zst` with a pipeline, its modules, its lock file and, optionally, its
//! data and stored results, laid out so that unpacking it and running the pipeline pulls every
//! result from the bundle (a directory remote named by the bundled `rkd.toml`) instead of
//! computing it.

use super::entry::RemoteEntry;
use crate::store::key::{hex, Key};
use crate::store::manifest::Manifest;
use crate::store::Store;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The folder inside the bundle that holds the results, in the remote layout.
pub const RESULTS: &str = "results";

/// What goes into a bundle.
pub struct Contents<'a> {
    /// The top folder inside the archive (`exp`).
    pub top: String,
    /// Files from disk: (where it is, its path inside the top folder).
    pub files: Vec<(PathBuf, String)>,
    /// Files made for the bundle: (path inside the top folder, bytes).
    pub made: Vec<(String, Vec<u8>)>,
    /// Stored results to include: the store and the keys.
    pub results: Option<(&'a Store, Vec<Key>)>,
}

/// What a bundle holds, for the summary.
#[derive(Debug, Default)]
pub struct Written {
    /// Files of the pipeline (and data).
    pub files: usize,
    /// Stored results.
    pub results: usize,
    /// Bytes of the archive.
    pub bytes: u64,
}

/// Writes the bundle to `out` (written aside and renamed: a failed write leaves nothing). An
/// `out` that exists must be a regular file: the rename would replace a device, a FIFO or a
/// link instead of writing into it.
pub fn write(out: &Path, contents: Contents) -> Result<Written, String> {
    if std::fs::symlink_metadata(out).is_ok_and(|m| !m.is_file()) {
        return Err(format!(
            "cannot write {}: it exists and is not a regular file (a bundle is written to a new file, or replaces a regular one)",
            out.display()
        ));
    }
    let tmp = out.with_extension(format!("partial.{}", std::process::id()));
    let result = write_to(&tmp, &contents).and_then(|written| {
        std::fs::rename(&tmp, out)
            .map(|()| written)
            .map_err(|e| format!("cannot write {}: {e}", out.display()))
    });
    match result {
        Ok(mut written) => {
            written.bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
            Ok(written)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_to(path: &Path, contents: &Contents) -> Result<Written, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let file = std::fs::File::create(path).map_err(|e| io(&format!("cannot create {}", path.display()), e))?;
    let encoder = zstd::Encoder::new(file, 10).map_err(|e| io("zstd", e))?;
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Deterministic);
    let top = Path::new(&contents.top);
    let mut written = Written::default();
    for (src, name) in &contents.files {
        tar.append_path_with_name(src, top.join(name))
            .map_err(|e| io(&format!("cannot add {}", src.display()), e))?;
        written.files += 1;
    }
    for (name, bytes) in &contents.made {
        append_bytes(&mut tar, &top.join(name), bytes).map_err(|e| io(&format!("cannot add {name}"), e))?;
        written.files += 1;
    }
    if let Some((store, keys)) = &contents.results {
        let mut blobs: HashSet<String> = HashSet::new();
        for key in keys {
            let dir = store.entry_dir(key);
            let manifest = Manifest::read(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let problems = manifest.check_entry(&dir);
            if !problems.is_empty() {
                return Err(format!(
                    "the stored result {} is damaged ({}); `rkd run` replaces it, then bundle again",
                    &hex(key)[..12],
                    problems.join("; ")
                ));
            }
            for (rel, f) in &manifest.files {
                if blobs.insert(f.blake3.clone()) {
                    let name = top.join(RESULTS).join("blobs").join(&f.blake3[..2]).join(&f.blake3);
                    tar.append_path_with_name(dir.join(rel), name)
                        .map_err(|e| io(&format!("cannot add {rel} of {}", &hex(key)[..12]), e))?;
                }
            }
            let record = serde_json::to_vec_pretty(&RemoteEntry::of(key, &manifest)).map_err(|e| e.to_string())?;
            let name = top.join(RESULTS).join("entries").join(format!("{}.json", hex(key)));
            append_bytes(&mut tar, &name, &record).map_err(|e| io("cannot add a record", e))?;
            written.results += 1;
        }
    }
    let encoder = tar.into_inner().map_err(|e| io("cannot finish the archive", e))?;
    let mut file = encoder.finish().map_err(|e| io("cannot finish the archive", e))?;
    file.flush().map_err(|e| io("cannot write the archive", e))?;
    file.sync_all().map_err(|e| io("cannot write the archive", e))?;
    Ok(written)
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, bytes)
}

/// Unpacks a bundle into `dest` (paths that would leave it are refused by the tar reader);
/// returns the pipeline files found at its top. Unless `force`, nothing is written when a file
/// of the bundle is already in `dest` with other contents (identical ones are fine).
pub fn unpack(bundle: &Path, dest: &Path, force: bool) -> Result<Vec<PathBuf>, String> {
    if !force {
        let differing = differing(bundle, dest)?;
        if let Some(first) = differing.first() {
            let more = match differing.len() {
                1 => String::new(),
                n => format!(" (and {} more file{})", n - 1, if n == 2 { "" } else { "s" }),
            };
            return Err(format!(
                "{} already exists and differs from the bundle's{more}; nothing was unpacked. \
                 Unpack into another folder (-C DIR), or give --force to overwrite",
                first.display()
            ));
        }
    }
    let mut archive = open(bundle)?;
    std::fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    archive
        .unpack(dest)
        .map_err(|e| format!("{} is not a readable bundle: {e}", bundle.display()))?;
    let mut pipelines = Vec::new();
    for top in std::fs::read_dir(dest).map_err(|e| e.to_string())?.flatten() {
        if let Ok(inner) = std::fs::read_dir(top.path()) {
            pipelines.extend(
                inner
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "rkd")),
            );
        }
    }
    pipelines.sort();
    Ok(pipelines)
}

/// The bundle's archive, read from the start.
fn open(bundle: &Path) -> Result<tar::Archive<zstd::Decoder<'static, std::io::BufReader<std::fs::File>>>, String> {
    let file = std::fs::File::open(bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
    let decoder = zstd::Decoder::new(file).map_err(|e| format!("{}: {e}", bundle.display()))?;
    Ok(tar::Archive::new(decoder))
}

/// The paths in `dest` that unpacking would change: files there with other contents than the
/// bundle's, and anything of another kind (a folder where the bundle has a file, a link...).
fn differing(bundle: &Path, dest: &Path) -> Result<Vec<PathBuf>, String> {
    let unreadable = |e: std::io::Error| format!("{} is not a readable bundle: {e}", bundle.display());
    let mut archive = open(bundle)?;
    let mut found = Vec::new();
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let rel = entry.path().map_err(unreadable)?.into_owned();
        // Only plain relative paths; the unpacking itself refuses the others.
        if !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
        {
            continue;
        }
        let at = dest.join(&rel);
        let Ok(meta) = std::fs::symlink_metadata(&at) else {
            continue;
        };
        let same = match entry.header().entry_type() {
            tar::EntryType::Directory => meta.is_dir(),
            tar::EntryType::Regular => meta.is_file() && same_contents(&mut entry, &at).map_err(unreadable)?,
            _ => false,
        };
        if !same {
            found.push(at);
        }
    }
    Ok(found)
}

/// Whether `file` holds exactly what `reader` reads (compared a block at a time).
fn same_contents(reader: &mut impl std::io::Read, file: &Path) -> std::io::Result<bool> {
    let Ok(mut file) = std::fs::File::open(file) else {
        return Ok(false);
    };
    let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(reader, &mut a)?;
        let m = read_full(&mut file, &mut b).unwrap_or(usize::MAX);
        if n != m || a[..n] != b[..n] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the end; returns how many bytes.
fn read_full(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

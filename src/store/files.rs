//! File-system chores of the store: read-only entries, removing them, and replacing the symlinks
//! in a stage's output by what they point to.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// How deep symlinked directories may nest inside one output.
const MAX_LINK_DEPTH: usize = 32;

/// Makes a tree read-only: files 0444, directories 0555 (`top` itself included when `include_top`).
pub fn make_read_only(top: &Path, include_top: bool) -> std::io::Result<()> {
    for entry in std::fs::read_dir(top)? {
        let entry = entry?;
        let meta = std::fs::symlink_metadata(entry.path())?;
        if meta.is_dir() {
            make_read_only(&entry.path(), true)?;
        } else if meta.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o444))?;
        }
    }
    if include_top {
        make_read_only_dir(top)?;
    }
    Ok(())
}

/// Makes one directory read-only (0555), leaving what is inside as it is.
pub fn make_read_only_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))
}

/// Gives the owner write permission on every directory of a tree, so that it can be renamed and
/// removed (its files stay read-only: removing a file needs only its directory's permission).
pub fn make_dirs_writable(top: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(top)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        std::fs::set_permissions(top, std::fs::Permissions::from_mode(mode | 0o700))?;
    }
    for entry in std::fs::read_dir(top)? {
        make_dirs_writable(&entry?.path())?;
    }
    Ok(())
}

/// Removes a tree that may be read-only.
pub fn remove_tree(top: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(top) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_dirs_writable(top)?;
            std::fs::remove_dir_all(top)
        }
    }
}

/// Replaces every symlink under `top` by a copy of what it points to, so that an entry holds its
/// contents and nothing outside it. A dangling link, a link to a directory that contains it, and
/// anything that is neither a file nor a directory (a FIFO, a socket) are refused.
pub fn materialize_links(top: &Path) -> Result<(), String> {
    materialize(top, top, 0)
}

fn materialize(root: &Path, dir: &Path, depth: usize) -> Result<(), String> {
    let shown = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", shown(&path)))?;
        if meta.is_dir() {
            materialize(root, &path, depth)?;
        } else if meta.file_type().is_symlink() {
            let link = std::fs::read_link(&path).unwrap_or_default();
            let target = std::fs::canonicalize(&path).map_err(|_| {
                format!(
                    "{} is a symlink to {}, which does not exist (the store keeps contents, not links)",
                    shown(&path),
                    link.display()
                )
            })?;
            let parent = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", shown(&path)))?;
            if target.is_dir() {
                if parent.starts_with(&target) || depth >= MAX_LINK_DEPTH {
                    return Err(format!(
                        "{} is a symlink to {}, a directory that contains it: the store cannot copy it",
                        shown(&path),
                        link.display()
                    ));
                }
                copy_tree(&target, &path)
                    .map_err(|e| format!("copying {} into {}: {e}", link.display(), shown(&path)))?;
                materialize(root, &path, depth + 1)?;
            } else if target.is_file() {
                std::fs::copy(&target, &path)
                    .map_err(|e| format!("copying {} into {}: {e}", link.display(), shown(&path)))?;
                let mode = std::fs::metadata(&path)
                    .map(|m| m.permissions().mode())
                    .unwrap_or(0o644);
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o600));
            } else {
                return Err(not_regular(&shown(&path)));
            }
        } else if !meta.is_file() {
            return Err(not_regular(&shown(&path)));
        }
    }
    Ok(())
}

fn not_regular(shown: &str) -> String {
    format!("{shown} is neither a file nor a directory (a FIFO, socket or device): the store keeps only files")
}

/// Copies a directory tree (links inside are copied as links and materialized afterwards).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.is_dir() {
            copy_tree(&src, &dst)?;
        } else if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_become_copies_and_links_outside_are_contents() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("data.txt"), "outside").unwrap();
        std::fs::create_dir(outside.path().join("d")).unwrap();
        std::fs::write(outside.path().join("d/inner.txt"), "inner").unwrap();
        let out = tempfile::tempdir().unwrap();
        let o = out.path();
        std::fs::write(o.join("a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("a.txt", o.join("same.txt")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("data.txt"), o.join("far.txt")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("d"), o.join("dir")).unwrap();
        materialize_links(o).unwrap();
        for (name, text) in [("same.txt", "a"), ("far.txt", "outside"), ("dir/inner.txt", "inner")] {
            let p = o.join(name);
            assert!(
                !std::fs::symlink_metadata(&p).unwrap().file_type().is_symlink(),
                "{name}"
            );
            assert_eq!(std::fs::read_to_string(p).unwrap(), text);
        }
        // Changing the outside file later does not change the entry.
        std::fs::write(outside.path().join("data.txt"), "changed").unwrap();
        assert_eq!(std::fs::read_to_string(o.join("far.txt")).unwrap(), "outside");
    }

    #[test]
    fn dangling_and_cyclic_links_and_fifos_are_refused() {
        let out = tempfile::tempdir().unwrap();
        let o = out.path();
        std::os::unix::fs::symlink("nowhere.txt", o.join("gone")).unwrap();
        let e = materialize_links(o).unwrap_err();
        assert!(
            e.contains("gone is a symlink to nowhere.txt, which does not exist"),
            "{e}"
        );

        let out = tempfile::tempdir().unwrap();
        let o = out.path();
        std::fs::create_dir(o.join("sub")).unwrap();
        std::os::unix::fs::symlink("..", o.join("sub/up")).unwrap();
        let e = materialize_links(o).unwrap_err();
        assert!(e.contains("a directory that contains it"), "{e}");

        let out = tempfile::tempdir().unwrap();
        let fifo = std::ffi::CString::new(out.path().join("pipe").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path in our own temporary directory.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let e = materialize_links(out.path()).unwrap_err();
        assert!(e.contains("pipe is neither a file nor a directory"), "{e}");
    }

    #[test]
    fn read_only_trees_can_still_be_removed() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path().join("entry");
        std::fs::create_dir_all(top.join("out/sub")).unwrap();
        std::fs::write(top.join("out/sub/f"), "x").unwrap();
        make_read_only(&top, true).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&top.join("out/sub/f")), 0o444);
        assert_eq!(mode(&top.join("out/sub")), 0o555);
        assert_eq!(mode(&top), 0o555);
        remove_tree(&top).unwrap();
        assert!(!top.exists());
    }
}

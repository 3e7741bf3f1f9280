//! Where the tests find the shared development data (`RKD_SHARED_DATA`) and models
//! (`RKD_SHARED_MODELS`, else `RKD_SHARED_DATA/../models`); tests skip with a note without them.

use std::path::PathBuf;

/// `RKD_SHARED_DATA/<name>`, or `None` (and a note on stderr) when unset or absent.
pub(crate) fn shared_data(name: &str) -> Option<PathBuf> {
    let Some(root) = std::env::var_os("RKD_SHARED_DATA") else {
        crate::say!("skipped: RKD_SHARED_DATA is not set (needed for {name})");
        return None;
    };
    let dir = PathBuf::from(root).join(name);
    if !dir.is_dir() {
        crate::say!("skipped: {} does not exist", dir.display());
        return None;
    }
    Some(dir)
}

/// The shared pretrained model directory `<name>`, or `None` (and a note on stderr).
pub(crate) fn models_dir(name: &str) -> Option<PathBuf> {
    let root = match (
        std::env::var_os("RKD_SHARED_MODELS"),
        std::env::var_os("RKD_SHARED_DATA"),
    ) {
        (Some(m), _) => PathBuf::from(m),
        (None, Some(d)) => PathBuf::from(d).join("..").join("models"),
        (None, None) => {
            crate::say!("skipped: neither RKD_SHARED_MODELS nor RKD_SHARED_DATA is set (needed for {name})");
            return None;
        }
    };
    let dir = root.join(name);
    if !dir.is_dir() {
        crate::say!("skipped: {} does not exist", dir.display());
        return None;
    }
    Some(dir)
}

//! Prepared datasets kept in the store: a dataset read from files (GLUE, a text or image table,
//! a Hub dataset) is tokenised — or its images decoded — once, and kept as tensors under
//! `<store>/cache/prepared/`. Every later stage that reads the same files with the same reading
//! arguments and the same tokenizer (a teacher and all its students, eval, predict) loads the
//! prepared tensors instead of reading, training a vocabulary and tokenising again.
//!
//! The key is blake3 over the constructor, its reading arguments (all but `path:`, which stands
//! for the files, and `holdout:`, applied after), the digest of the files read (each one's path
//! inside the folder and content hash, as a stage key hashes them) and the tokenizer (its serialised vocabulary and rules, or none when the
//! dataset trains its own vocabulary, which is then part of what is kept). So moving the data
//! folder keeps the prepared copy, editing a file read or changing the tokenizer prepares anew.
//!
//! A prepared file is one safetensors file with the dataset's description in its metadata,
//! and beside it the blake3 of its bytes, written last: a file whose hash is missing or does not
//! match (a crash while writing, a damaged disk) is never used, it is prepared again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use super::{glue, DataError, DataKind, Dataset, Examples, Split, SplitName, Tokenizer};
use crate::value::{Params, Value};

/// Version of the prepared format (part of the key).
const FORMAT: &str = "rkd-prepared/1";

/// The metadata entry holding the [`Description`].
const META: &str = "rkd";

/// Where prepared datasets live inside a store's cache folder.
pub const FOLDER: &str = "prepared";

/// How a load used the store's prepared copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Not a dataset that is prepared (synthetic, image_folder), or no store to keep it in.
    NotKept,
    /// Loaded from the prepared copy with this key (hex).
    Read(String),
    /// Read from its files and kept under this key (hex) for the next stage.
    Written(String),
    /// Read from its files; the copy under this key (hex) was damaged and has been replaced.
    Replaced(String),
}

impl Prepared {
    /// One line for a stage's log, `None` when nothing was kept.
    pub fn describe(&self) -> Option<String> {
        let short = |k: &str| k[..12.min(k.len())].to_string();
        match self {
            Prepared::NotKept => None,
            Prepared::Read(k) => Some(format!(
                "data: prepared once, read from the store (cache/prepared/{})",
                short(k)
            )),
            Prepared::Written(k) => Some(format!(
                "data: tokenised/decoded and kept in the store for the next stage (cache/prepared/{})",
                short(k)
            )),
            Prepared::Replaced(k) => Some(format!(
                "data: the prepared copy cache/prepared/{} did not match its hash; prepared again and replaced",
                short(k)
            )),
        }
    }
}

/// What a prepared file holds besides its tensors.
#[derive(Serialize, Deserialize)]
struct Description {
    classes: Vec<String>,
    kind: DataKind,
    metric: glue::Metric,
    augment: bool,
    /// The tokenizer as `tokenizer.json` text (text datasets).
    tokenizer: Option<String>,
    /// The splits kept, in order.
    splits: Vec<String>,
}

/// The key of a dataset whose files read have the digest `files` ([`super::reads::digest_of`]),
/// with the constructor's `params` and the tokenizer it is given (`None`: it trains its own),
/// or `None` when the tokenizer cannot be serialised.
pub fn key(ctor: &str, params: &Params, files: &[u8; 32], tokenizer: Option<&Tokenizer>) -> Option<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut field = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(FORMAT.as_bytes());
    field(ctor.as_bytes());
    for (name, v) in params.iter().filter(|(k, _)| !matches!(k.as_str(), "path" | "holdout")) {
        field(name.as_bytes());
        field(describe_value(v).as_bytes());
    }
    field(files);
    match tokenizer {
        Some(t) => field(t.inner().to_string(false).ok()?.as_bytes()),
        None => field(b"own vocabulary"),
    }
    Some(h.finalize())
}

/// A parameter value as text for the key (paths never reach here).
fn describe_value(v: &Value) -> String {
    match v {
        Value::Str(s) => format!("s{s}"),
        other => format!("v{other}"),
    }
}

/// The prepared file of `key` in `folder`, and its hash file.
fn files_of(folder: &Path, key: &blake3::Hash) -> (PathBuf, PathBuf) {
    let hex = key.to_hex();
    (
        folder.join(format!("{hex}.safetensors")),
        folder.join(format!("{hex}.blake3")),
    )
}

/// What a lookup found.
pub enum Lookup {
    /// The dataset, as prepared before.
    Found(Box<Dataset>),
    /// Nothing kept under the key.
    Missing,
    /// A copy whose bytes do not match its hash, or that cannot be decoded.
    Damaged,
}

/// The dataset kept under `key` in `folder`.
pub fn read(folder: &Path, key: &blake3::Hash) -> Lookup {
    let (data_file, hash_file) = files_of(folder, key);
    let Ok(expected) = std::fs::read_to_string(&hash_file) else {
        return if data_file.exists() {
            Lookup::Damaged
        } else {
            Lookup::Missing
        };
    };
    let Ok(bytes) = std::fs::read(&data_file) else {
        return Lookup::Damaged;
    };
    if blake3::hash(&bytes).to_hex().as_str() != expected.trim() {
        return Lookup::Damaged;
    }
    match decode(&bytes) {
        Some(d) => Lookup::Found(Box::new(d)),
        None => Lookup::Damaged,
    }
}

/// Keeps `data` under each of `keys` in `folder`: the data file first, its hash last, each
/// written to a temporary file and renamed, so that a reader sees a whole copy or none.
pub fn write(folder: &Path, keys: &[blake3::Hash], data: &Dataset) -> Result<(), DataError> {
    let bytes = encode(data)?;
    let hash = blake3::hash(&bytes).to_hex();
    std::fs::create_dir_all(folder).map_err(|e| DataError::io(folder, &e))?;
    for key in keys {
        let (data_file, hash_file) = files_of(folder, key);
        let _ = std::fs::remove_file(&hash_file);
        atomic_write(&data_file, &bytes)?;
        atomic_write(&hash_file, hash.as_bytes())?;
    }
    Ok(())
}

/// Writes `bytes` to `path` whole or not at all (temporary file, then rename).
fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    crate::store::records::atomic_write(path, bytes).map_err(|e| DataError::io(path, &e))
}

/// One tensor to write: dtype, shape, little-endian bytes.
type Raw = (Dtype, Vec<usize>, Vec<u8>);

fn u32s(xs: impl IntoIterator<Item = u32>) -> Vec<u8> {
    xs.into_iter().flat_map(u32::to_le_bytes).collect()
}

fn encode(data: &Dataset) -> Result<Vec<u8>, DataError> {
    let mut tensors: Vec<(String, Raw)> = Vec::new();
    let mut names = Vec::new();
    for (name, split) in SplitName::ALL.iter().zip(&data.splits) {
        let Some(s) = split else { continue };
        names.push(name.as_str().to_string());
        let n = s.labels.len();
        let mut put = |what: &str, raw: Raw| tensors.push((format!("{name}.{what}"), raw));
        put("labels", (Dtype::U32, vec![n], u32s(s.labels.iter().copied())));
        if !s.targets.is_empty() {
            let bytes = s.targets.iter().flat_map(|t| t.to_le_bytes()).collect();
            put("targets", (Dtype::F32, vec![s.targets.len()], bytes));
        }
        match &s.examples {
            Examples::Text { ids, segments } => {
                let total = ids.iter().map(Vec::len).sum();
                put("ids", (Dtype::U32, vec![total], u32s(ids.iter().flatten().copied())));
                put(
                    "lengths",
                    (Dtype::U32, vec![n], u32s(ids.iter().map(|x| x.len() as u32))),
                );
                if !segments.is_empty() {
                    put(
                        "segments",
                        (Dtype::U32, vec![segments.len()], u32s(segments.iter().copied())),
                    );
                }
            }
            Examples::Images(images) => {
                let each = images.first().map_or(0, Vec::len);
                if images.iter().any(|i| i.len() != each) {
                    return Err(DataError::new("images of different sizes cannot be kept prepared"));
                }
                put("images", (Dtype::U8, vec![n, each], images.concat()));
            }
        }
    }
    let description = Description {
        classes: data.classes.clone(),
        kind: data.kind.clone(),
        metric: data.metric,
        augment: data.augment,
        tokenizer: match &data.tokenizer {
            Some(t) => Some(
                t.inner()
                    .to_string(false)
                    .map_err(|e| DataError::new(format!("cannot serialise the tokenizer: {e}")))?,
            ),
            None => None,
        },
        splits: names,
    };
    let meta = serde_json::to_string(&description).map_err(|e| DataError::new(e.to_string()))?;
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, (dtype, shape, bytes))| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| DataError::new(format!("cannot keep the prepared dataset: {e}")))
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize(views, Some(HashMap::from([(META.to_string(), meta)])))
        .map_err(|e| DataError::new(format!("cannot keep the prepared dataset: {e}")))
}

fn decode(bytes: &[u8]) -> Option<Dataset> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).ok()?;
    let description: Description = serde_json::from_str(header.metadata().as_ref()?.get(META)?).ok()?;
    let st = safetensors::SafeTensors::deserialize(bytes).ok()?;
    let raw = |name: &str, dtype: Dtype| -> Option<Vec<u8>> {
        let t = st.tensor(name).ok()?;
        (t.dtype() == dtype).then(|| t.data().to_vec())
    };
    let u32s = |bytes: Vec<u8>| -> Vec<u32> {
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let mut splits: [Option<Split>; 4] = [None, None, None, None];
    for name in &description.splits {
        let split = SplitName::ALL.into_iter().find(|s| s.as_str() == name)?;
        let labels = u32s(raw(&format!("{name}.labels"), Dtype::U32)?);
        let targets = match raw(&format!("{name}.targets"), Dtype::F32) {
            Some(b) => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            None => Vec::new(),
        };
        let examples = match description.kind {
            DataKind::Text { .. } => {
                let flat = u32s(raw(&format!("{name}.ids"), Dtype::U32)?);
                let lengths = u32s(raw(&format!("{name}.lengths"), Dtype::U32)?);
                if lengths.len() != labels.len() || lengths.iter().map(|&l| l as usize).sum::<usize>() != flat.len() {
                    return None;
                }
                let mut at = 0;
                let ids = lengths
                    .iter()
                    .map(|&l| {
                        at += l as usize;
                        flat[at - l as usize..at].to_vec()
                    })
                    .collect();
                let segments = raw(&format!("{name}.segments"), Dtype::U32)
                    .map(u32s)
                    .unwrap_or_default();
                Examples::Text { ids, segments }
            }
            DataKind::Images { .. } => {
                let t = st.tensor(&format!("{name}.images")).ok()?;
                let each = *t.shape().get(1)?;
                if t.dtype() != Dtype::U8 || t.shape()[0] != labels.len() || each == 0 && !labels.is_empty() {
                    return None;
                }
                Examples::Images(t.data().chunks_exact(each.max(1)).map(<[u8]>::to_vec).collect())
            }
        };
        splits[split as usize] = Some(Split {
            examples,
            labels,
            targets,
        });
    }
    let tokenizer = match &description.tokenizer {
        Some(json) => Some(Tokenizer::from_inner(json.parse().ok()?).ok()?),
        None => None,
    };
    Some(Dataset {
        classes: description.classes,
        kind: description.kind,
        tokenizer,
        metric: description.metric,
        splits,
        augment: description.augment,
        prepared: Prepared::NotKept,
        warnings: Vec::new(),
    })
}

//! Datasets for the `train` and `eval` ops: GLUE SST-2 TSV files, image folders (Beans) and
//! generated synthetic sets, with the tokenizer and the batching.
//!
//! [`Dataset::load`] reads a dataset constructor's checked arguments and loads everything at
//! once: text is tokenised up front, images are decoded and resized once (and, given
//! [`LoadOptions::cache_dir`], kept on disk for the next load). [`Dataset::batches`]
//! then builds candle tensors for a split, in order or in a seeded shuffle.
//!
//! Text datasets always carry a [`Tokenizer`]: the pretrained model's (when
//! [`LoadOptions::tokenizer_dir`] is given), else a WordPiece vocabulary trained on the training
//! split (`glue_sst2`), or the identity vocabulary of the synthetic text set (whose examples are
//! token ids already; it ignores `tokenizer_dir`). Image datasets have none.

pub mod batch;
pub mod error;
pub mod glue;
pub mod hub;
pub mod image_files;
pub mod image_table;
pub mod images;
mod params;
pub mod pixels;
pub mod prepared;
pub mod reads;
mod split;
pub mod synthetic_images;
pub mod synthetic_text;
pub mod table;
pub mod tokenizer;
pub mod tsv;
pub mod wordpiece;

#[cfg(test)]
pub(crate) mod testdata;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::Device;

pub use batch::Batch;
pub use error::DataError;
pub use split::SplitName;
pub use tokenizer::Tokenizer;

use crate::keyword::Keyword;
use crate::ml::rng::derive_seed;
use crate::ml::Rng;
use crate::value::Params;
use params::Args;
use reads::Reads;

/// What the examples are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    /// Token sequences of at most `max_len` ids (`[CLS]` and `[SEP]` included).
    Text {
        /// Longest sequence.
        max_len: usize,
    },
    /// Square images.
    Images {
        /// Side in pixels.
        image_size: usize,
        /// Colour channels (always 3: RGB).
        channels: usize,
    },
}

/// Options that come from outside the dataset's own arguments.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A pretrained model directory whose tokenizer (tokenizer.json or vocab.txt) text datasets
    /// use; when `None`, `glue_sst2` trains a WordPiece vocabulary on its training split.
    pub tokenizer_dir: Option<PathBuf>,
    /// Where `image_folder` keeps its decoded images between loads (keyed by the image files'
    /// contents and `image_size`); when `None`, images are decoded on every load.
    pub cache_dir: Option<PathBuf>,
}

/// The examples of one split.
#[derive(Clone)]
enum Examples {
    /// Token ids, `[CLS] … [SEP]` (or `[CLS] a [SEP] b [SEP]`), and for sentence pairs where
    /// each example's second segment starts (else empty). The texts are not kept.
    Text { ids: Vec<Vec<u32>>, segments: Vec<u32> },
    /// RGB bytes `[side, side, 3]`.
    Images(Vec<Vec<u8>>),
}

#[derive(Clone)]
struct Split {
    examples: Examples,
    labels: Vec<u32>,
    /// Regression targets (all labels are then 0); empty for classification.
    targets: Vec<f32>,
}

impl Split {
    /// The examples at `idx`, in that order.
    fn select(&self, idx: &[usize]) -> Split {
        let examples = match &self.examples {
            Examples::Text { ids, segments } => Examples::Text {
                ids: idx.iter().map(|&i| ids[i].clone()).collect(),
                segments: idx.iter().filter_map(|&i| segments.get(i).copied()).collect(),
            },
            Examples::Images(images) => Examples::Images(idx.iter().map(|&i| images[i].clone()).collect()),
        };
        Split {
            examples,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            targets: idx.iter().filter_map(|&i| self.targets.get(i).copied()).collect(),
        }
    }
}

/// A loaded dataset: class names, kind, tokenizer (text) and up to three splits.
#[derive(Clone)]
pub struct Dataset {
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// Text or images, with their size.
    pub kind: DataKind,
    /// The tokenizer of a text dataset (`None` for images).
    pub tokenizer: Option<Tokenizer>,
    /// The number its task is scored by besides accuracy (a GLUE task's; accuracy elsewhere).
    pub metric: glue::Metric,
    /// Whether it came from, or went into, the store's prepared copy.
    pub prepared: prepared::Prepared,
    /// What loading found worth saying but not refusing (files of an image folder that are not
    /// images); each op writes them to its stage log.
    pub warnings: Vec<String>,
    splits: [Option<Split>; 4],
    augment: bool,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes: Vec<String> = SplitName::ALL
            .iter()
            .filter(|s| self.has_split(**s))
            .map(|s| format!("{s}: {}", self.len(*s)))
            .collect();
        f.debug_struct("Dataset")
            .field("classes", &self.classes)
            .field("kind", &self.kind)
            .field("vocab_size", &self.tokenizer.as_ref().map(|t| t.vocab_size()))
            .field("splits", &sizes)
            .field("augment", &self.augment)
            .finish()
    }
}

fn text_split(tokenizer: &Tokenizer, texts: Vec<String>, labels: Vec<u32>, max_len: usize) -> Split {
    let mut enc = Encoder::new(tokenizer, max_len);
    texts.into_iter().for_each(|t| enc.push(t, None));
    enc.split(labels)
}

/// A split of sentence pairs: `[CLS] a [SEP] b [SEP]`.
fn pair_split(
    tokenizer: &Tokenizer,
    texts: Vec<String>,
    pairs: Vec<String>,
    labels: Vec<u32>,
    max_len: usize,
) -> Split {
    let mut enc = Encoder::new(tokenizer, max_len);
    texts.into_iter().zip(pairs).for_each(|(a, b)| enc.push(a, Some(b)));
    enc.split(labels)
}

/// Texts tokenised as they are read, a chunk at a time in parallel: only the ids are kept, so a
/// large table never sits in memory as strings.
struct Encoder<'a> {
    tokenizer: &'a Tokenizer,
    max_len: usize,
    pending: Vec<(String, Option<String>)>,
    ids: Vec<Vec<u32>>,
    segments: Vec<u32>,
}

impl<'a> Encoder<'a> {
    /// Texts encoded together.
    const CHUNK: usize = 4096;

    fn new(tokenizer: &'a Tokenizer, max_len: usize) -> Self {
        Encoder {
            tokenizer,
            max_len,
            pending: Vec::with_capacity(Self::CHUNK),
            ids: Vec::new(),
            segments: Vec::new(),
        }
    }

    /// One example: a text, or a sentence pair.
    fn push(&mut self, text: String, pair: Option<String>) {
        self.pending.push((text, pair));
        if self.pending.len() == Self::CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        use rayon::prelude::*;
        let (tk, max_len) = (self.tokenizer, self.max_len);
        let encoded: Vec<(Vec<u32>, Option<u32>)> = self
            .pending
            .par_iter()
            .map(|(a, b)| match b {
                Some(b) => {
                    let (ids, at) = tk.encode_pair(a, b, max_len);
                    (ids, Some(at))
                }
                None => (tk.encode(a, max_len), None),
            })
            .collect();
        self.pending.clear();
        for (ids, at) in encoded {
            self.ids.push(ids);
            self.segments.extend(at);
        }
    }

    /// The encoded split, with its labels.
    fn split(mut self, labels: Vec<u32>) -> Split {
        self.flush();
        Split {
            examples: Examples::Text {
                ids: self.ids,
                segments: self.segments,
            },
            labels,
            targets: Vec::new(),
        }
    }
}

/// Whether a dataset constructor call augments its training batches (what
/// [`Dataset::augments`] will say once it is loaded): `image_folder` unless `augment: false`, and
/// `synthetic_images`.
pub fn spec_augments(ctor: &str, params: &Params) -> bool {
    match ctor {
        "image_folder" | "image_table" => !matches!(params.get("augment"), Some(crate::value::Value::Bool(false))),
        "hf_dataset" => {
            params.contains_key("image") && !matches!(params.get("augment"), Some(crate::value::Value::Bool(false)))
        }
        "synthetic_images" => true,
        _ => false,
    }
}

/// The task of a `glue(task:)` call.
fn glue_task(args: &Args) -> Result<glue::Task, DataError> {
    let word = args.str("task")?;
    glue::Task::from_word(&word).ok_or_else(|| DataError::new(format!("glue: no GLUE task `{word}`")))
}

/// Where an `hf_dataset` is on the Hub: repository, configuration, revision.
fn hub_location(args: &Args) -> Result<(String, Option<String>, String), DataError> {
    Ok((args.str("repo")?, args.opt_str("config")?, args.str("revision")?))
}

/// The `format:` argument of a table, if given.
fn table_format(args: &Args) -> Result<Option<table::Format>, DataError> {
    match args.opt_str("format")? {
        Some(word) => table::Format::from_word(&word)
            .map(Some)
            .ok_or_else(|| DataError::new(format!("format must be csv, tsv, jsonl or parquet, got \"{word}\""))),
        None => Ok(None),
    }
}

impl Dataset {
    /// Loads the dataset a constructor call describes.
    /// `ctor` is `"glue_sst2"`, `"text_table"`, `"image_folder"`, `"image_table"`,
    /// `"hf_dataset"`, `"synthetic_text"` or `"synthetic_images"`.
    pub fn load(ctor: &str, params: &Params, opts: &LoadOptions) -> Result<Dataset, DataError> {
        let args = Args::new(ctor, params)?;
        let mut data = match ctor {
            "glue_sst2" | "glue" | "text_table" | "image_table" | "hf_dataset" => {
                Self::load_prepared(ctor, &args, params, opts)
            }
            "image_folder" => Self::load_image_folder(&args, opts),
            "synthetic_text" => Self::load_synthetic_text(&args),
            "synthetic_images" => Self::load_synthetic_images(&args),
            other => Err(DataError::new(format!(
                "no loader for the dataset constructor `{other}`"
            ))),
        }?;
        if let Some(fraction) = args.opt_f64("holdout")? {
            data.hold_out(fraction)?;
        }
        Ok(data)
    }

    /// A dataset read from files: from the store's prepared copy when there is one for these
    /// files, arguments and tokenizer, else read (and tokenised or decoded) and kept there.
    fn load_prepared(ctor: &str, args: &Args, params: &Params, opts: &LoadOptions) -> Result<Dataset, DataError> {
        let reads =
            Reads::of(ctor, params).ok_or_else(|| DataError::new(format!("`{ctor}` is no dataset read from files")))?;
        let dir = match reads {
            Reads::Glue(task) => match args.opt_path("path")? {
                Some(dir) => dir,
                None => {
                    let (repo, config) = glue::hub_config(task);
                    let revision = args.opt_str("revision")?.unwrap_or_else(|| "main".into());
                    hub::fetch(repo, Some(config), &revision)?
                }
            },
            _ if ctor == "hf_dataset" => {
                let (repo, config, revision) = hub_location(args)?;
                hub::fetch(&repo, config.as_deref(), &revision)?
            }
            _ => args.path("path")?,
        };
        let tokenizer = match &opts.tokenizer_dir {
            Some(d) if !reads.images() => Some(Tokenizer::from_dir(d)?),
            _ => None,
        };
        let own_vocabulary = tokenizer.is_none() && !reads.images();
        let files = reads.files(&dir);
        // The files are hashed once; the key of a trained vocabulary below reuses the digest.
        let digest = match &opts.cache_dir {
            Some(_) if !files.is_empty() => reads::digest_of(&dir, &files),
            _ => None,
        };
        let kept = match (&opts.cache_dir, &digest) {
            (Some(cache), Some(digest)) => {
                prepared::key(ctor, params, digest, tokenizer.as_ref()).map(|key| (cache.join(prepared::FOLDER), key))
            }
            _ => None,
        };
        let mut damaged = false;
        if let Some((folder, key)) = &kept {
            match prepared::read(folder, key) {
                prepared::Lookup::Found(mut data) => {
                    data.prepared = prepared::Prepared::Read(key.to_hex().to_string());
                    return Ok(*data);
                }
                prepared::Lookup::Damaged => damaged = true,
                prepared::Lookup::Missing => {}
            }
        }
        let mut data = match reads {
            Reads::Sst2 => Self::load_sst2(args, tokenizer, &dir),
            Reads::Glue(_) => Self::load_glue(args, tokenizer, &dir),
            _ if reads.images() => Self::load_image_table(args, &dir),
            _ => Self::load_text_table(args, tokenizer, &dir),
        }?;
        if let Some((folder, key)) = &kept {
            let hex = key.to_hex().to_string();
            // A vocabulary trained here is what the model's students will bring as their
            // tokenizer: kept under that key too, they read it prepared.
            let mut keys = vec![*key];
            if let (true, Some(digest)) = (own_vocabulary, &digest) {
                keys.extend(prepared::key(ctor, params, digest, data.tokenizer.as_ref()));
            }
            // A copy that cannot be written is only a lost speed-up for the next stage.
            if prepared::write(folder, &keys, &data).is_ok() {
                data.prepared = if damaged {
                    prepared::Prepared::Replaced(hex)
                } else {
                    prepared::Prepared::Written(hex)
                };
            }
        }
        Ok(data)
    }

    /// Checks a dataset read from files without loading it. A table (`text_table`,
    /// `image_table`, `glue_sst2`, `glue` with a `path:`, an `hf_dataset` already in the Hugging Face cache):
    /// its split files are found, open, have the columns asked for, and their rows read (text, a
    /// label that is an integer or a string, an image: the first of each file decoded) — the
    /// first row of each file, or every row with `all_rows`, whose labels are then checked as
    /// loading checks them. An `image_folder`: its splits listed and the first image of each
    /// decoded. Other datasets pass (they are checked when loaded). Returns warnings (files
    /// that are not read). What `rkd check` and `rkd run` do before any stage starts.
    pub fn check(ctor: &str, params: &Params, all_rows: bool) -> Result<Vec<String>, DataError> {
        let args = Args::new(ctor, params)?;
        if ctor == "image_folder" {
            return images::check_folder(&args.path("path")?);
        }
        let label = args.str("label");
        // The labels of the split being read, kept when every row is read.
        let labels = std::cell::RefCell::new(Vec::new());
        let keep = |l: table::Label| {
            if all_rows {
                labels.borrow_mut().push(l);
            }
        };
        let text_row = |_: &Path, cells: Vec<table::rows::Cell>| -> Result<(), (usize, String)> {
            for (i, cell) in cells.into_iter().enumerate() {
                match i {
                    1 => table::Label::from_cell(cell).map(keep),
                    _ => table::text_of(cell).map(drop),
                }
                .map_err(|e| (i, e))?;
            }
            Ok(())
        };
        // A Hub dataset is checked when its files are in the cache already (no network here).
        let cached = match ctor {
            "hf_dataset" => {
                let (repo, config, revision) = hub_location(&args)?;
                match hub::cached(&repo, config.as_deref(), &revision) {
                    Some(dir) => Some(dir),
                    None => return Ok(Vec::new()),
                }
            }
            _ => None,
        };
        let image = args.opt_str("image")?;
        let (columns, images) = match ctor {
            "text_table" | "hf_dataset" if image.is_none() => {
                let mut columns = vec![args.str("text")?, label?];
                columns.extend(args.opt_str("text_pair")?);
                (columns, false)
            }
            "image_table" | "hf_dataset" => (vec![args.str("image")?, label?], true),
            // A GLUE task's files are read whole (GLUE's largest, MNLI's, is 80 MB; SST-2's 5 MB).
            "glue_sst2" => return tsv::read_sst2_dir(&args.path("path")?).map(|_| Vec::new()),
            "glue" => {
                return match args.opt_path("path")? {
                    Some(dir) => glue::read(glue_task(&args)?, &dir).map(|_| Vec::new()),
                    None => Ok(Vec::new()),
                }
            }
            _ => return Ok(Vec::new()),
        };
        let format = table_format(&args)?;
        let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        let dir = match cached {
            Some(dir) => dir,
            None => args.path("path")?,
        };
        let decoded = std::sync::Mutex::new(std::collections::HashSet::new());
        let image_row = |file: &Path, mut cells: Vec<table::rows::Cell>| -> Result<(), (usize, String)> {
            let label = cells.pop().unwrap_or(table::rows::Cell::Null);
            let image = cells.pop().unwrap_or(table::rows::Cell::Null);
            // The first image of each file is decoded; the rest are decoded when loaded.
            let first = decoded
                .lock()
                .map(|mut d| d.insert(file.to_path_buf()))
                .unwrap_or(false);
            image_table::check_cell(image, file, &dir, first).map_err(|e| (0, e))?;
            table::Label::from_cell(label).map(keep).map_err(|e| (1, e))
        };
        let row: table::RowCheck = if images { &image_row } else { &text_row };
        let files = table::split_files(&dir)?;
        let mut read = BTreeMap::new();
        for (name, files) in &files {
            table::check_split(files, format, &columns, all_rows, row)?;
            read.insert(*name, labels.take());
        }
        // With every row read, the labels are checked as loading them will: classes, an ID-like
        // column, validation labels the training split lacks.
        if all_rows {
            let used: Vec<&str> = columns.iter().copied().filter(|c| *c != columns[1]).collect();
            table::class_ids(&read, &files, columns[1], format, &used)?;
        }
        Ok(Vec::new())
    }

    /// Moves `fraction` of each class's training examples (at least one per class that has two
    /// or more) into the [`SplitName::Holdout`] split: stratified, and seeded with a fixed seed,
    /// so that every stage that reads this dataset sees the same rows held out.
    pub fn hold_out(&mut self, fraction: f64) -> Result<(), DataError> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(DataError::new(format!("holdout must be in (0, 1), got {fraction}")));
        }
        let Some(train) = self.split(SplitName::Train).cloned() else {
            return Err(DataError::new(
                "holdout: the dataset has no training split to hold examples out of",
            ));
        };
        let mut rng = Rng::for_stream(0, "rkd-holdout");
        let mut held = Vec::new();
        for class in 0..self.num_classes() as u32 {
            let mut idx: Vec<usize> = (0..train.labels.len()).filter(|&i| train.labels[i] == class).collect();
            if idx.len() < 2 {
                continue;
            }
            for i in (1..idx.len()).rev() {
                idx.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let n = ((fraction * idx.len() as f64).round() as usize).clamp(1, idx.len() - 1);
            held.extend_from_slice(&idx[..n]);
        }
        held.sort_unstable();
        let held_set: std::collections::HashSet<usize> = held.iter().copied().collect();
        let kept: Vec<usize> = (0..train.labels.len()).filter(|i| !held_set.contains(i)).collect();
        self.splits[SplitName::Holdout.index()] = Some(train.select(&held));
        self.splits[SplitName::Train.index()] = Some(train.select(&kept));
        Ok(())
    }

    /// The split that model selection (the best epoch) uses: the held-out part of the training
    /// split when the dataset was given `holdout:`, else the validation split.
    pub fn selection_split(&self) -> SplitName {
        if self.has_split(SplitName::Holdout) {
            SplitName::Holdout
        } else {
            SplitName::Validation
        }
    }

    fn load_sst2(args: &Args, tokenizer: Option<Tokenizer>, dir: &Path) -> Result<Dataset, DataError> {
        let max_len = args.usize("max_len")?;
        let vocab_size = args.usize("vocab_size")?;
        let (train, dev) = tsv::read_sst2_dir(dir)?;
        let unzip = |rows: Vec<tsv::TsvRow>| -> (Vec<String>, Vec<u32>) {
            rows.into_iter().map(|r| (r.sentence, r.label)).unzip()
        };
        let (train_texts, train_labels) = unzip(train);
        let (dev_texts, dev_labels) = unzip(dev);
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => Tokenizer::train_wordpiece(&train_texts, vocab_size)?,
        };
        let train = text_split(&tokenizer, train_texts, train_labels, max_len);
        let dev = text_split(&tokenizer, dev_texts, dev_labels, max_len);
        Ok(Dataset {
            classes: tsv::SST2_CLASSES.iter().map(|s| s.to_string()).collect(),
            kind: DataKind::Text { max_len },
            tokenizer: Some(tokenizer),
            metric: glue::Metric::Accuracy,
            splits: [Some(train), Some(dev), None, None],
            augment: false,
            prepared: prepared::Prepared::NotKept,
            warnings: Vec::new(),
        })
    }

    fn load_glue(args: &Args, tokenizer: Option<Tokenizer>, dir: &Path) -> Result<Dataset, DataError> {
        let task = glue_task(args)?;
        let max_len = args.usize("max_len")?;
        let read = glue::read(task, dir)?;
        let train = &read.splits[0].rows;
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => {
                let corpus: Vec<&String> = train.texts.iter().chain(&train.pairs).collect();
                Tokenizer::train_wordpiece(&corpus, args.usize("vocab_size")?)?
            }
        };
        let mut splits: [Option<Split>; 4] = [None, None, None, None];
        for s in read.splits {
            let (rows, labels) = (s.rows, s.labels);
            let mut split = if rows.pairs.is_empty() {
                text_split(&tokenizer, rows.texts, labels, max_len)
            } else {
                pair_split(&tokenizer, rows.texts, rows.pairs, labels, max_len)
            };
            split.targets = s.targets;
            splits[s.name.index()] = Some(split);
        }
        Ok(Dataset {
            classes: glue::classes(task).iter().map(|c| c.to_string()).collect(),
            kind: DataKind::Text { max_len },
            tokenizer: Some(tokenizer),
            metric: glue::metric(task),
            splits,
            augment: false,
            prepared: prepared::Prepared::NotKept,
            warnings: Vec::new(),
        })
    }

    /// A `text_table`, or a text `hf_dataset` once fetched: the table in `dir`, streamed twice
    /// (the training texts for the vocabulary when the model brings none, then every split
    /// tokenised as it is read), so that only token ids and labels stay in memory.
    fn load_text_table(args: &Args, tokenizer: Option<Tokenizer>, dir: &Path) -> Result<Dataset, DataError> {
        let max_len = args.usize("max_len")?;
        let vocab_size = args.usize("vocab_size")?;
        let (text, label, pair) = (args.str("text")?, args.str("label")?, args.opt_str("text_pair")?);
        let columns = table::Columns {
            text: &text,
            pair: pair.as_deref(),
            label: &label,
        };
        let format = table_format(args)?;
        let files = table::split_files(dir)?;
        let train_files = &files[&SplitName::Train];
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => {
                // Counted a chunk of texts at a time, in parallel.
                let mut words = wordpiece::WordCounts::new(true);
                let mut chunk: Vec<String> = Vec::with_capacity(Encoder::CHUNK);
                table::for_each_row(train_files, format, columns, &mut |row| {
                    chunk.push(row.text);
                    chunk.extend(row.pair);
                    if chunk.len() >= Encoder::CHUNK {
                        words.add_all(&chunk)?;
                        chunk.clear();
                    }
                    Ok(())
                })?;
                words.add_all(&chunk)?;
                Tokenizer::from_word_counts(&words.into_counts(), vocab_size)?
            }
        };
        let mut read = BTreeMap::new();
        for (name, paths) in &files {
            let mut enc = Encoder::new(&tokenizer, max_len);
            let mut labels = Vec::new();
            table::for_each_row(paths, format, columns, &mut |row| {
                labels.push(row.label);
                enc.push(row.text, row.pair);
                Ok(())
            })?;
            if labels.is_empty() {
                return Err(table::empty_split(paths));
            }
            read.insert(*name, (enc, labels));
        }
        let mut used = vec![text.as_str()];
        used.extend(pair.as_deref());
        let labels = read
            .iter_mut()
            .map(|(name, (_, l))| (*name, std::mem::take(l)))
            .collect();
        let table::ClassIds { classes, mut ids } = table::class_ids(&labels, &files, &label, format, &used)?;
        let mut splits: [Option<Split>; 4] = [None, None, None, None];
        for (name, (enc, _)) in read {
            splits[name.index()] = Some(enc.split(ids.remove(&name).unwrap_or_default()));
        }
        Ok(Dataset {
            classes: classes.iter().map(table::label_name).collect(),
            kind: DataKind::Text { max_len },
            tokenizer: Some(tokenizer),
            metric: glue::Metric::Accuracy,
            splits,
            augment: false,
            prepared: prepared::Prepared::NotKept,
            warnings: Vec::new(),
        })
    }

    fn load_image_folder(args: &Args, opts: &LoadOptions) -> Result<Dataset, DataError> {
        let root = args.path("path")?;
        let image_size = args.usize("image_size")?;
        let augment = args.bool("augment")?;
        let folder = images::load_image_folder_cached(&root, image_size, opts.cache_dir.as_deref())?;
        let splits = folder.splits.into_iter().map(|(name, s)| (name, s.images, s.labels));
        let mut data = Dataset::of_images(folder.classes, image_size, splits, augment);
        data.warnings = folder.warnings;
        Ok(data)
    }

    /// An image classification dataset of decoded RGB splits: (split, images, class ids).
    fn of_images(
        classes: Vec<String>,
        image_size: usize,
        read: impl IntoIterator<Item = (SplitName, Vec<Vec<u8>>, Vec<u32>)>,
        augment: bool,
    ) -> Dataset {
        let mut splits: [Option<Split>; 4] = [None, None, None, None];
        for (name, images, labels) in read {
            splits[name.index()] = Some(Split {
                examples: Examples::Images(images),
                labels,
                targets: Vec::new(),
            });
        }
        Dataset {
            classes,
            kind: DataKind::Images {
                image_size,
                channels: 3,
            },
            tokenizer: None,
            metric: glue::Metric::Accuracy,
            splits,
            augment,
            prepared: prepared::Prepared::NotKept,
            warnings: Vec::new(),
        }
    }

    /// An `image_table`, or an image `hf_dataset` once fetched: the table in `dir`.
    fn load_image_table(args: &Args, dir: &Path) -> Result<Dataset, DataError> {
        let image_size = args.usize("image_size")?;
        let (image, label) = (args.str("image")?, args.str("label")?);
        let read = image_table::load(dir, &image, &label, table_format(args)?, image_size)?;
        Ok(Dataset::of_images(
            read.classes,
            image_size,
            read.splits,
            args.bool("augment")?,
        ))
    }

    fn load_synthetic_text(args: &Args) -> Result<Dataset, DataError> {
        let spec = synthetic_text::TextSpec {
            seed: args.u64("seed")?,
            classes: args.usize("classes")?,
            train_size: args.usize("train_size")?,
            val_size: args.usize("val_size")?,
            test_size: args.usize("test_size")?,
            max_len: args.usize("max_len")?,
            vocab_size: args.usize("vocab_size")?,
            noise: args.f64("noise")?,
        };
        let data = synthetic_text::generate(&spec)?;
        let split = |s: synthetic_text::TextSplit| Split {
            examples: Examples::Text {
                ids: s.ids,
                segments: Vec::new(),
            },
            labels: s.labels,
            targets: Vec::new(),
        };
        Ok(Dataset {
            classes: data.classes,
            kind: DataKind::Text { max_len: spec.max_len },
            tokenizer: Some(data.tokenizer),
            metric: glue::Metric::Accuracy,
            splits: [
                Some(split(data.train)),
                Some(split(data.validation)),
                Some(split(data.test)),
                None,
            ],
            augment: false,
            prepared: prepared::Prepared::NotKept,
            warnings: Vec::new(),
        })
    }

    fn load_synthetic_images(args: &Args) -> Result<Dataset, DataError> {
        let spec = synthetic_images::ImageSpec {
            seed: args.u64("seed")?,
            classes: args.usize("classes")?,
            train_size: args.usize("train_size")?,
            val_size: args.usize("val_size")?,
            test_size: args.usize("test_size")?,
            image_size: args.usize("image_size")?,
            noise: args.f64("noise")?,
        };
        let data = synthetic_images::generate(&spec)?;
        let split = |s: synthetic_images::GeneratedImages| Split {
            examples: Examples::Images(s.images),
            labels: s.labels,
            targets: Vec::new(),
        };
        Ok(Dataset {
            classes: data.classes,
            kind: DataKind::Images {
                image_size: spec.image_size,
                channels: 3,
            },
            tokenizer: None,
            metric: glue::Metric::Accuracy,
            splits: [
                Some(split(data.train)),
                Some(split(data.validation)),
                Some(split(data.test)),
                None,
            ],
            augment: true,
            prepared: prepared::Prepared::NotKept,
            warnings: Vec::new(),
        })
    }

    fn split(&self, split: SplitName) -> Option<&Split> {
        self.splits[split.index()].as_ref()
    }

    /// Whether the dataset has this split.
    pub fn has_split(&self, split: SplitName) -> bool {
        self.split(split).is_some()
    }

    /// Number of examples in a split (0 for a split the dataset lacks).
    pub fn len(&self, split: SplitName) -> usize {
        self.split(split).map_or(0, |s| s.labels.len())
    }

    /// Whether a split is absent or empty.
    pub fn is_empty(&self, split: SplitName) -> bool {
        self.len(split) == 0
    }

    /// The labels of a split, in example order (empty for a split the dataset lacks).
    pub fn labels(&self, split: SplitName) -> &[u32] {
        self.split(split).map_or(&[], |s| &s.labels)
    }

    /// Whether the task is a regression (GLUE's STS-B): its labels are f32 targets, its model
    /// has one output.
    pub fn is_regression(&self) -> bool {
        self.metric == glue::Metric::Correlation
    }

    /// What a split is scored by when epochs are selected: `accuracy`, or for a regression
    /// `pearson` (the metric's name in metrics, logs and files).
    pub fn score_name(&self) -> &'static str {
        if self.is_regression() {
            "pearson"
        } else {
            "accuracy"
        }
    }

    /// The regression targets of a split, in example order (empty for classification).
    pub fn targets(&self, split: SplitName) -> &[f32] {
        self.split(split).map_or(&[], |s| &s.targets)
    }

    /// Number of classes (1 for a regression: its one output).
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Whether training batches may be augmented (`image_folder`'s `augment` argument; true for
    /// synthetic images, false for text).
    pub fn augments(&self) -> bool {
        self.augment
    }

    /// The token ids of a text split, `[CLS] … [SEP]` each (`None` for images or a missing split).
    pub fn token_ids(&self, split: SplitName) -> Option<&[Vec<u32>]> {
        match &self.split(split)?.examples {
            Examples::Text { ids, .. } => Some(ids),
            Examples::Images(_) => None,
        }
    }

    /// Batches in order, or shuffled with a seeded RNG when `shuffle_seed` is `Some`.
    ///
    /// `augment` applies random crops and flips to images of the training split, only when the
    /// dataset allows it ([`Dataset::augments`]); it is seeded from `shuffle_seed` (0 when `None`)
    /// and the example's index, and ignored for text and other splits. Text batches are padded
    /// to their longest sequence (at most `max_len`) with an attention mask. The last batch may
    /// be smaller; a missing split gives no batches.
    pub fn batches(
        &self,
        split: SplitName,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        augment: bool,
        device: &Device,
    ) -> Result<Vec<Batch>, DataError> {
        self.batch_iter(split, batch_size, shuffle_seed, augment, device)?
            .collect()
    }

    /// Like [`Dataset::batches`], but builds each batch only when it is asked for (less memory).
    pub fn batch_iter<'a>(
        &'a self,
        split: SplitName,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        augment: bool,
        device: &'a Device,
    ) -> Result<impl Iterator<Item = Result<Batch, DataError>> + 'a, DataError> {
        let order = batch::example_order(self.len(split), shuffle_seed);
        let augment = augment && self.augment && split == SplitName::Train;
        let aug_seed = derive_seed(shuffle_seed.unwrap_or(0), "rkd-data-augment");
        self.batches_of(split, &order, batch_size, augment.then_some(aug_seed), device)
    }

    /// Batches for inference (no shuffle, no augmentation), in length buckets: text examples
    /// sorted by length, longest first (ties in example order), so that each batch is padded only
    /// to its own longest sentence and similar lengths share a batch; images in order. Each
    /// batch's `indices` name its examples.
    pub fn inference_batches(
        &self,
        split: SplitName,
        batch_size: usize,
        device: &Device,
    ) -> Result<Vec<Batch>, DataError> {
        let mut order = batch::example_order(self.len(split), None);
        if let Some(Split {
            examples: Examples::Text { ids, .. },
            ..
        }) = self.split(split)
        {
            order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        }
        self.batches_of(split, &order, batch_size, None, device)?.collect()
    }

    /// Batches of `batch_size` examples taken in `order`; `augment_seed` augments images.
    fn batches_of<'a>(
        &'a self,
        split: SplitName,
        order: &[usize],
        batch_size: usize,
        augment_seed: Option<u64>,
        device: &'a Device,
    ) -> Result<impl Iterator<Item = Result<Batch, DataError>> + 'a, DataError> {
        if batch_size == 0 {
            return Err(DataError::new("batch_size must be at least 1"));
        }
        let chunks: Vec<Vec<usize>> = order.chunks(batch_size).map(|c| c.to_vec()).collect();
        let augment = augment_seed.is_some();
        let aug_seed = augment_seed.unwrap_or(0);
        Ok(chunks.into_iter().map(move |idx| {
            let s = self.split(split).expect("a split with examples exists");
            let mut batch = match (&s.examples, &self.kind) {
                (Examples::Text { ids, segments, .. }, DataKind::Text { max_len }) => {
                    let pad = self.tokenizer.as_ref().map_or(0, |t| t.pad_id());
                    batch::text_batch(ids, segments, &s.labels, &idx, pad, *max_len, device)
                }
                (Examples::Images(imgs), DataKind::Images { image_size, .. }) => {
                    let side = *image_size;
                    let f = move |i: usize, rgb: &[u8]| {
                        let mut rng = Rng::new(aug_seed.wrapping_add(i as u64));
                        pixels::augment(rgb, side, &mut rng)
                    };
                    let transform: Option<batch::Transform> = if augment { Some(&f) } else { None };
                    batch::image_batch(imgs, &s.labels, &idx, side, transform, device)
                }
                _ => Err(DataError::new("dataset kind and examples disagree")),
            }?;
            // A regression's labels are its f32 targets.
            if !s.targets.is_empty() {
                let targets: Vec<f32> = idx.iter().map(|&i| s.targets[i]).collect();
                batch.labels = candle_core::Tensor::from_vec(targets, idx.len(), device)?;
            }
            Ok(batch)
        }))
    }
}

#[cfg(test)]
mod tests;

//! Model and dataset constructors: calls that describe, not run.

use super::bounds::{
    check_model_size, check_synthetic_images, check_synthetic_text, size, MAX_EXAMPLES, MAX_INTERMEDIATE,
    MAX_POSITIONS, MAX_VOCAB,
};
use super::schema::{p, ArgProblem, Default as D, OpKind, ParamSchema, Range, Ty};
use crate::keyword::Keyword;
use crate::value::{OpSchema, Params, Value};

fn int(params: &Params, name: &str) -> Option<i64> {
    match params.get(name) {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

fn check_heads(params: &Params) -> Vec<ArgProblem> {
    match (int(params, "hidden"), int(params, "heads")) {
        (Some(h), Some(n)) if n > 0 && h % n != 0 => {
            vec![("heads", format!("hidden size {h} is not divisible by {n} heads"))]
        }
        _ => Vec::new(),
    }
}

/// `bert`: a BERT encoder with a classification head.
pub static BERT: OpSchema = OpSchema {
    name: "bert",
    kind: OpKind::Model,
    version: 1,
    doc: "A BERT encoder for sequence classification, randomly initialised.",
    params: &[
        p(
            "layers",
            Ty::Int,
            D::Required,
            Some(Range::closed(1.0, 48.0)),
            "transformer layers (L)",
        ),
        p(
            "hidden",
            Ty::Int,
            D::Required,
            Some(Range::closed(8.0, 8192.0)),
            "hidden size (H)",
        ),
        p(
            "heads",
            Ty::Int,
            D::Required,
            Some(Range::closed(1.0, 128.0)),
            "attention heads (divide H)",
        ),
        p(
            "intermediate",
            Ty::Int,
            D::Required,
            Some(Range::closed(1.0, MAX_INTERMEDIATE)),
            "feed-forward size (usually 4H)",
        ),
        p(
            "vocab_size",
            Ty::Int,
            D::Int(30522),
            Some(Range::closed(8.0, MAX_VOCAB)),
            "vocabulary size",
        ),
        p(
            "max_position",
            Ty::Int,
            D::Int(512),
            Some(Range::closed(8.0, MAX_POSITIONS)),
            "longest sequence",
        ),
        p(
            "dropout",
            Ty::Float,
            D::Float(0.1),
            Some(Range::half_open(0.0, 1.0)),
            "hidden dropout",
        ),
        p(
            "attention_dropout",
            Ty::Float,
            D::Float(0.1),
            Some(Range::half_open(0.0, 1.0)),
            "attention-probability dropout",
        ),
    ],
    derive: None,
    check: Some(check_bert),
};

fn derive_vit(params: &mut Params) {
    if !params.contains_key("intermediate") {
        if let Some(h) = int(params, "hidden") {
            params.insert("intermediate".into(), Value::Int(4 * h));
        }
    }
}

/// `bert`: heads divide the hidden size, and the model is not absurdly large.
fn check_bert(params: &Params) -> Vec<ArgProblem> {
    let mut problems = check_heads(params);
    let rows = size(params, "vocab_size").saturating_add(size(params, "max_position"));
    problems.extend(check_model_size(params, rows.saturating_add(2)));
    problems
}

fn check_vit(params: &Params) -> Vec<ArgProblem> {
    let mut problems = check_heads(params);
    let (side, patch, channels) = (
        size(params, "image_size"),
        size(params, "patch").max(1),
        size(params, "channels"),
    );
    let patches = (side / patch).saturating_mul(side / patch).saturating_add(1);
    problems.extend(check_model_size(
        params,
        patches.saturating_add(channels.saturating_mul(patch).saturating_mul(patch)),
    ));
    if let (Some(s), Some(p)) = (int(params, "image_size"), int(params, "patch")) {
        if p > 0 && s % p != 0 {
            problems.push(("patch", format!("image size {s} is not divisible by patch size {p}")));
        }
    }
    problems
}

/// `vit`: a Vision Transformer with a classification head.
pub static VIT: OpSchema = OpSchema {
    name: "vit",
    kind: OpKind::Model,
    version: 1,
    doc: "A ViT encoder for image classification, randomly initialised.",
    params: &[
        p(
            "layers",
            Ty::Int,
            D::Required,
            Some(Range::closed(1.0, 48.0)),
            "transformer layers",
        ),
        p(
            "hidden",
            Ty::Int,
            D::Required,
            Some(Range::closed(8.0, 8192.0)),
            "hidden size",
        ),
        p(
            "heads",
            Ty::Int,
            D::Required,
            Some(Range::closed(1.0, 128.0)),
            "attention heads (divide hidden)",
        ),
        p(
            "patch",
            Ty::Int,
            D::Required,
            Some(Range::closed(1.0, 512.0)),
            "patch size in pixels",
        ),
        p(
            "image_size",
            Ty::Int,
            D::Required,
            Some(Range::closed(8.0, 4096.0)),
            "input image side in pixels",
        ),
        p(
            "intermediate",
            Ty::Int,
            D::Optional,
            Some(Range::closed(1.0, MAX_INTERMEDIATE)),
            "feed-forward size (default 4 x hidden)",
        ),
        p(
            "channels",
            Ty::Int,
            D::Int(3),
            Some(Range::closed(1.0, 16.0)),
            "image channels",
        ),
        p(
            "dropout",
            Ty::Float,
            D::Float(0.0),
            Some(Range::half_open(0.0, 1.0)),
            "hidden dropout",
        ),
    ],
    derive: Some(derive_vit),
    check: Some(check_vit),
};

/// `pretrained`: a local Hugging Face checkpoint directory.
pub static PRETRAINED: OpSchema = OpSchema {
    name: "pretrained",
    kind: OpKind::Model,
    version: 1,
    doc: "A local Hugging Face checkpoint directory (config.json, weights, tokenizer files).",
    params: &[p(
        "path",
        Ty::Path,
        D::Required,
        None,
        "the directory, relative to the pipeline file",
    )],
    derive: None,
    check: None,
};

/// `hf`: a checkpoint downloaded from the Hugging Face Hub.
pub static HF: OpSchema = OpSchema {
    name: "hf",
    kind: OpKind::Model,
    version: 1,
    doc: "A checkpoint from the Hugging Face Hub, downloaded into the local cache when first used.",
    params: &[
        p(
            "repo",
            Ty::Str,
            D::Required,
            None,
            "the repository id, e.g. \"google/bert_uncased_L-4_H-256_A-4\"",
        ),
        p(
            "revision",
            Ty::Str,
            D::Str("main"),
            None,
            "branch, tag or commit (a commit hash pins the weights)",
        ),
    ],
    derive: None,
    check: None,
};

/// The model constructors that are architectures (random weights), not checkpoints.
pub static ARCHITECTURES: &[&OpSchema] = &[&BERT, &VIT];

/// `holdout:` of every dataset: a fraction of the training split kept for model selection.
const HOLDOUT: ParamSchema = p(
    "holdout",
    Ty::Float,
    D::Optional,
    Some(Range {
        min: Some((0.0, false)),
        max: Some((0.5, true)),
    }),
    "fraction of train held out (stratified, fixed seed) to select epochs on, so validation stays unseen",
);

/// A text dataset's directory.
const DATA_DIR: ParamSchema = p(
    "path",
    Ty::Path,
    D::Required,
    None,
    "the directory, relative to the pipeline file",
);

/// The WordPiece vocabulary a text dataset trains when the model brings none.
const WORDPIECE_VOCAB: ParamSchema = p(
    "vocab_size",
    Ty::Int,
    D::Int(8000),
    Some(Range::closed(100.0, 200000.0)),
    "WordPiece vocabulary trained when the model brings none",
);

/// `glue_sst2`: the GLUE SST-2 TSV files.
pub static GLUE_SST2: OpSchema = OpSchema {
    name: "glue_sst2",
    kind: OpKind::Dataset,
    version: 1,
    doc: "GLUE SST-2: a directory with train.tsv and dev.tsv (`sentence<TAB>label`).",
    params: &[
        DATA_DIR,
        p(
            "max_len",
            Ty::Int,
            D::Int(64),
            Some(Range::closed(8.0, 512.0)),
            "tokens per example (longer ones are cut)",
        ),
        WORDPIECE_VOCAB,
        HOLDOUT,
    ],
    derive: None,
    check: None,
};

crate::keywords! {
    /// A GLUE task (`glue(task:)`).
    pub enum GlueTask {
        /// CoLA: grammatical acceptability (Matthews correlation).
        Cola = "cola",
        /// SST-2: sentiment (accuracy).
        Sst2 = "sst2",
        /// MRPC: paraphrase (accuracy and F1).
        Mrpc = "mrpc",
        /// QQP: duplicate questions (accuracy and F1).
        Qqp = "qqp",
        /// STS-B: similarity score 0-5, a regression (Pearson and Spearman).
        Stsb = "stsb",
        /// MNLI, evaluated on the matched validation set (accuracy).
        Mnli = "mnli",
        /// MNLI, evaluated on the mismatched validation set (accuracy).
        MnliMismatched = "mnli_mismatched",
        /// QNLI: question answering as entailment (accuracy).
        Qnli = "qnli",
        /// RTE: entailment (accuracy).
        Rte = "rte",
        /// WNLI: Winograd entailment (accuracy).
        Wnli = "wnli",
    }
}

/// `glue`: a GLUE task, from GLUE's TSV files, the Hub's Parquet, or the Hub itself.
pub static GLUE: OpSchema = OpSchema {
    name: "glue",
    kind: OpKind::Dataset,
    version: 1,
    doc: "A GLUE task with its metric: GLUE's TSV files (train.tsv, dev.tsv) or the Hub's Parquet (nyu-mll/glue's folder of the task) in path:, or fetched from the Hub without it. No test split (GLUE hides its labels).",
    params: &[
        p(
            "task",
            Ty::Enum(GlueTask::WORDS),
            D::Required,
            None,
            "the task (mnli_mismatched: MNLI with its mismatched validation set)",
        ),
        p(
            "path",
            Ty::Path,
            D::Optional,
            None,
            "the task's directory (default: fetch nyu-mll/glue's files into the Hugging Face cache)",
        ),
        p(
            "revision",
            Ty::Str,
            D::Optional,
            None,
            "without path: the revision of nyu-mll/glue (default main; the lock file pins it to a commit)",
        ),
        p(
            "max_len",
            Ty::Int,
            D::Int(128),
            Some(Range::closed(8.0, 512.0)),
            "tokens per example, both texts of a pair together (longer ones are cut)",
        ),
        WORDPIECE_VOCAB,
        HOLDOUT,
    ],
    derive: None,
    check: None,
};

crate::keywords! {
    /// How a `text_table` file is written (`format:`; by default from its extension).
    pub enum TableFormat {
        /// Comma-separated values with a header row (RFC 4180 quoting).
        Csv = "csv",
        /// Tab-separated values with a header row.
        Tsv = "tsv",
        /// One JSON object per line.
        Jsonl = "jsonl",
        /// Apache Parquet (the Hugging Face Hub's format).
        Parquet = "parquet",
    }
}

/// `format:` of a table.
const TABLE_FORMAT: ParamSchema = p(
    "format",
    Ty::Enum(TableFormat::WORDS),
    D::Optional,
    None,
    "csv, tsv, jsonl or parquet (default: from each file's extension)",
);

/// A table's label column.
const LABEL_COLUMN: ParamSchema = p(
    "label",
    Ty::Str,
    D::Required,
    None,
    "the column holding the label: integers, or strings (classes in sorted order)",
);

/// `text_table`: labelled text in CSV, TSV, JSON Lines or Parquet files named by split.
pub static TEXT_TABLE: OpSchema = OpSchema {
    name: "text_table",
    kind: OpKind::Dataset,
    version: 1,
    doc: "Labelled text in CSV, TSV, JSON Lines or Parquet: train.*, validation.* (or dev.*), test.* in the directory or its data/, shards train-00000-of-00002.* too.",
    params: &[
        DATA_DIR,
        p("text", Ty::Str, D::Required, None, "the column (or JSON field) holding the text"),
        p(
            "text_pair",
            Ty::Str,
            D::Optional,
            None,
            "a second text column: sentence-pair input [CLS] text [SEP] pair [SEP] with token types",
        ),
        LABEL_COLUMN,
        TABLE_FORMAT,
        p(
            "max_len",
            Ty::Int,
            D::Int(128),
            Some(Range::closed(8.0, 512.0)),
            "tokens per example (longer ones are cut)",
        ),
        WORDPIECE_VOCAB,
        HOLDOUT,
    ],
    derive: None,
    check: None,
};

/// The side an image dataset's images are resized to.
const IMAGE_SIZE: ParamSchema = p(
    "image_size",
    Ty::Int,
    D::Int(224),
    Some(Range::closed(8.0, 4096.0)),
    "images are resized to this side",
);

/// Whether an image dataset's training batches are augmented.
const AUGMENT: ParamSchema = p(
    "augment",
    Ty::Bool,
    D::Bool(true),
    None,
    "random flips and crops on the training split",
);

/// `image_folder`: images in `<split>/<class>/*.{jpg,jpeg,png,bmp,gif,tif,tiff,webp}`.
pub static IMAGE_FOLDER: OpSchema = OpSchema {
    name: "image_folder",
    kind: OpKind::Dataset,
    version: 1,
    doc: "Images in the Beans layout `<split>/<class>/*.{jpg,jpeg,png,bmp,gif,tif,tiff,webp}`; resized and ImageNet-normalised.",
    params: &[DATA_DIR, IMAGE_SIZE, AUGMENT, HOLDOUT],
    derive: None,
    check: None,
};

/// `image_table`: labelled images listed in a table (the Hub's Parquet layout).
pub static IMAGE_TABLE: OpSchema = OpSchema {
    name: "image_table",
    kind: OpKind::Dataset,
    version: 1,
    doc: "Labelled images in a table (Parquet as the Hub stores Beans, or CSV/JSON Lines): the image column holds the encoded file ({bytes, path} struct or bytes) or a path relative to the table file.",
    params: &[
        DATA_DIR,
        p(
            "image",
            Ty::Str,
            D::Required,
            None,
            "the column holding each image: encoded bytes, the Hub's {bytes, path} struct, or a file path",
        ),
        LABEL_COLUMN,
        TABLE_FORMAT,
        IMAGE_SIZE,
        AUGMENT,
        HOLDOUT,
    ],
    derive: None,
    check: None,
};

fn check_hf_dataset(params: &Params) -> Vec<ArgProblem> {
    match (params.contains_key("text"), params.contains_key("image")) {
        (true, true) => vec![(
            "image",
            "give `text:` for a text dataset or `image:` for an image dataset, not both".to_string(),
        )],
        (false, false) => vec![(
            "repo",
            "name the column to read: `text:` (a text dataset) or `image:` (an image dataset)".to_string(),
        )],
        (false, true) if params.contains_key("text_pair") => {
            vec![(
                "text_pair",
                "`text_pair:` is for text datasets (with `text:`)".to_string(),
            )]
        }
        _ => Vec::new(),
    }
}

/// `hf_dataset`: a dataset repository of the Hugging Face Hub, read as a text or image table.
pub static HF_DATASET: OpSchema = OpSchema {
    name: "hf_dataset",
    kind: OpKind::Dataset,
    version: 1,
    doc: "A Hugging Face Hub dataset (its Parquet split files), fetched into the Hugging Face cache when first used and read as text_table (text:) or image_table (image:); HF_HUB_OFFLINE=1 reads the cache alone.",
    params: &[
        p(
            "repo",
            Ty::Str,
            D::Required,
            None,
            "the dataset repository, e.g. \"stanfordnlp/sst2\"",
        ),
        p(
            "config",
            Ty::Str,
            D::Optional,
            None,
            "the configuration (subset) folder, e.g. \"sst2\" of \"nyu-mll/glue\"",
        ),
        p(
            "revision",
            Ty::Str,
            D::Str("main"),
            None,
            "branch, tag or commit (a commit hash pins the data and needs no network once cached)",
        ),
        p("text", Ty::Str, D::Optional, None, "the text column (a text dataset)"),
        p(
            "text_pair",
            Ty::Str,
            D::Optional,
            None,
            "a second text column (sentence pairs)",
        ),
        p("image", Ty::Str, D::Optional, None, "the image column (an image dataset)"),
        LABEL_COLUMN,
        TABLE_FORMAT,
        p(
            "max_len",
            Ty::Int,
            D::Int(128),
            Some(Range::closed(8.0, 512.0)),
            "tokens per example (text)",
        ),
        WORDPIECE_VOCAB,
        IMAGE_SIZE,
        AUGMENT,
        HOLDOUT,
    ],
    derive: None,
    check: Some(check_hf_dataset),
};

/// `synthetic_text`: a generated, seeded text classification task.
pub static SYNTHETIC_TEXT: OpSchema = OpSchema {
    name: "synthetic_text",
    kind: OpKind::Dataset,
    version: 1,
    doc: "A generated text classification task (learnable, not trivial); needs no files.",
    params: &[
        p("seed", Ty::Int, D::Int(0), Some(Range::at_least(0.0)), "generator seed"),
        p(
            "classes",
            Ty::Int,
            D::Int(2),
            Some(Range::closed(2.0, 100.0)),
            "number of classes",
        ),
        p(
            "train_size",
            Ty::Int,
            D::Int(2000),
            Some(Range::closed(1.0, MAX_EXAMPLES)),
            "training examples",
        ),
        p(
            "val_size",
            Ty::Int,
            D::Int(500),
            Some(Range::closed(1.0, MAX_EXAMPLES)),
            "validation examples",
        ),
        p(
            "test_size",
            Ty::Int,
            D::Int(500),
            Some(Range::closed(1.0, MAX_EXAMPLES)),
            "test examples (generated after the validation ones)",
        ),
        HOLDOUT,
        p(
            "max_len",
            Ty::Int,
            D::Int(32),
            Some(Range::closed(4.0, 512.0)),
            "tokens per example",
        ),
        p(
            "vocab_size",
            Ty::Int,
            D::Int(1000),
            Some(Range::closed(16.0, 100000.0)),
            "vocabulary size",
        ),
        p(
            "noise",
            Ty::Float,
            D::Float(0.1),
            Some(Range::closed(0.0, 1.0)),
            "fraction of labels flipped at random",
        ),
    ],
    derive: None,
    check: Some(check_synthetic_text),
};

/// `synthetic_images`: a generated, seeded image classification task.
pub static SYNTHETIC_IMAGES: OpSchema = OpSchema {
    name: "synthetic_images",
    kind: OpKind::Dataset,
    version: 1,
    doc: "A generated image classification task (learnable, not trivial); needs no files.",
    params: &[
        p("seed", Ty::Int, D::Int(0), Some(Range::at_least(0.0)), "generator seed"),
        p(
            "classes",
            Ty::Int,
            D::Int(3),
            Some(Range::closed(2.0, 100.0)),
            "number of classes",
        ),
        p(
            "train_size",
            Ty::Int,
            D::Int(600),
            Some(Range::closed(1.0, MAX_EXAMPLES)),
            "training images",
        ),
        p(
            "val_size",
            Ty::Int,
            D::Int(150),
            Some(Range::closed(1.0, MAX_EXAMPLES)),
            "validation images",
        ),
        p(
            "test_size",
            Ty::Int,
            D::Int(150),
            Some(Range::closed(1.0, MAX_EXAMPLES)),
            "test images (generated after the validation ones)",
        ),
        HOLDOUT,
        p(
            "image_size",
            Ty::Int,
            D::Int(32),
            Some(Range::closed(8.0, 1024.0)),
            "image side in pixels",
        ),
        p(
            "noise",
            Ty::Float,
            D::Float(0.2),
            Some(Range::closed(0.0, 1.0)),
            "pixel noise level",
        ),
    ],
    derive: None,
    check: Some(check_synthetic_images),
};

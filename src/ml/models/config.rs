//! Model configurations in the Hugging Face `config.json` layout (BERT and ViT).
//!
//! Field names and defaults follow `transformers`' `BertConfig` / `ViTConfig`, so a
//! `config.json` written by transformers loads here and one written here loads in
//! transformers. Unknown fields are kept in `extra` and written back unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config_error::ConfigError;
use serde_json::{Map, Value};

/// The activation named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum HiddenAct {
    /// Exact GELU, `x·Φ(x)` with the error function (HF `"gelu"`).
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh approximation of GELU (HF `"gelu_new"`, `"gelu_pytorch_tanh"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// Rectified linear unit.
    #[serde(rename = "relu")]
    Relu,
}

/// Class labels as HF stores them: `id2label` (keys are decimal strings) and `label2id`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Labels {
    /// Label names indexed by class id.
    pub names: Vec<String>,
}

impl Labels {
    /// `n` labels named `LABEL_0 … LABEL_{n-1}` (HF's default names).
    pub fn default_names(n: usize) -> Self {
        Self {
            names: (0..n).map(|i| format!("LABEL_{i}")).collect(),
        }
    }

    /// Labels with the given names, in class-id order.
    pub fn from_names<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self {
            names: names.into_iter().map(Into::into).collect(),
        }
    }

    fn id2label(&self) -> BTreeMap<String, String> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| (i.to_string(), n.clone()))
            .collect()
    }

    fn label2id(&self) -> BTreeMap<String, usize> {
        self.names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect()
    }

    /// Builds labels from the raw `id2label` map and an optional explicit `num_labels`.
    fn from_raw(id2label: Option<BTreeMap<String, String>>, num_labels: Option<usize>) -> Result<Self, ConfigError> {
        match id2label {
            Some(map) if !map.is_empty() => {
                let mut names = vec![None; map.len()];
                for (k, v) in map {
                    let i: usize = k
                        .parse()
                        .map_err(|_| ConfigError::Invalid(format!("id2label key `{k}` is not a class index")))?;
                    if i >= names.len() {
                        return Err(ConfigError::Invalid(format!(
                            "id2label has {} entries but a key `{i}` outside 0..{}",
                            names.len(),
                            names.len()
                        )));
                    }
                    names[i] = Some(v);
                }
                let names: Vec<String> = names.into_iter().map(|n| n.unwrap_or_default()).collect();
                if let Some(n) = num_labels {
                    if n != names.len() {
                        return Err(ConfigError::Invalid(format!(
                            "num_labels is {n} but id2label has {} entries",
                            names.len()
                        )));
                    }
                }
                Ok(Self { names })
            }
            // transformers' default is two labels.
            _ => Ok(Self::default_names(num_labels.unwrap_or(2))),
        }
    }
}

fn d_bert_model_type() -> String {
    "bert".into()
}
fn d_vit_model_type() -> String {
    "vit".into()
}
fn d_01() -> f64 {
    0.1
}
fn d_002() -> f64 {
    0.02
}
fn d_ln_eps() -> f64 {
    1e-12
}
fn d_512() -> usize {
    512
}
fn d_2() -> usize {
    2
}
fn d_true() -> bool {
    true
}
fn d_3() -> usize {
    3
}
fn d_224() -> usize {
    224
}
fn d_16() -> usize {
    16
}
fn d_absolute() -> String {
    "absolute".into()
}

/// Heads removed from each encoder layer, by layer index: the original indices (among the
/// config's `num_attention_heads`) of the heads no longer in the weights. HF's `pruned_heads`.
pub type PrunedHeads = BTreeMap<usize, BTreeSet<usize>>;

/// `pruned_heads` as config.json stores it: `{"layer": [head indices]}` (keys are strings).
type RawPrunedHeads = BTreeMap<String, Vec<usize>>;

fn pruned_heads_from_raw(raw: RawPrunedHeads) -> Result<PrunedHeads, ConfigError> {
    let mut out = PrunedHeads::new();
    for (k, heads) in raw {
        let layer: usize = k
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("pruned_heads key `{k}` is not a layer index")))?;
        if !heads.is_empty() {
            out.entry(layer).or_default().extend(heads);
        }
    }
    Ok(out)
}

fn pruned_heads_to_raw(p: &PrunedHeads) -> RawPrunedHeads {
    p.iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(l, h)| (l.to_string(), h.iter().copied().collect()))
        .collect()
}

/// The heads that layer `layer` keeps: original indices in ascending order.
fn kept_heads(pruned: &PrunedHeads, heads: usize, layer: usize) -> Vec<usize> {
    let gone = pruned.get(&layer);
    (0..heads).filter(|h| !gone.is_some_and(|g| g.contains(h))).collect()
}

/// Checks that every pruned head names an existing layer and head, and that each layer keeps one.
fn check_pruned_heads(pruned: &PrunedHeads, layers: usize, heads: usize) -> Result<(), ConfigError> {
    for (&layer, gone) in pruned {
        if layer >= layers {
            return Err(ConfigError::Invalid(format!(
                "pruned_heads names layer {layer} but the model has {layers} layers"
            )));
        }
        if let Some(&h) = gone.iter().find(|&&h| h >= heads) {
            return Err(ConfigError::Invalid(format!(
                "pruned_heads names head {h} of layer {layer} but layers have {heads} heads"
            )));
        }
        if gone.len() >= heads {
            return Err(ConfigError::Invalid(format!(
                "pruned_heads removes every head of layer {layer}"
            )));
        }
    }
    Ok(())
}

/// Raw serde form shared by the two configs' label handling.
#[derive(Serialize, Deserialize)]
struct RawLabels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label2id: Option<BTreeMap<String, usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_labels: Option<usize>,
}

/// BERT configuration (`model_type: "bert"`), as in transformers' `BertConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawBertConfig", into = "RawBertConfig")]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden (model) width.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads (must divide `hidden_size`).
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    pub hidden_act: HiddenAct,
    /// Dropout on embeddings and sub-layer outputs.
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    pub attention_probs_dropout_prob: f64,
    /// Number of position embeddings (maximum sequence length).
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    pub type_vocab_size: usize,
    /// Standard deviation of the normal initialiser.
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Padding token id.
    pub pad_token_id: usize,
    /// Dropout before the classifier (`None`: `hidden_dropout_prob`).
    pub classifier_dropout: Option<f64>,
    /// Attention heads removed per layer (HF `pruned_heads`); empty for an unpruned model.
    pub pruned_heads: PrunedHeads,
    /// Class labels (`id2label` / `label2id`); `num_labels` is their count.
    pub labels: Labels,
    /// Every other field of config.json, kept for round trips.
    pub extra: Map<String, Value>,
}

#[derive(Serialize, Deserialize)]
struct RawBertConfig {
    #[serde(default = "d_bert_model_type")]
    model_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default)]
    hidden_act: HiddenAct,
    #[serde(default = "d_01")]
    hidden_dropout_prob: f64,
    #[serde(default = "d_01")]
    attention_probs_dropout_prob: f64,
    #[serde(default = "d_512")]
    max_position_embeddings: usize,
    #[serde(default = "d_2")]
    type_vocab_size: usize,
    #[serde(default = "d_002")]
    initializer_range: f64,
    #[serde(default = "d_ln_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: usize,
    #[serde(default = "d_absolute")]
    position_embedding_type: String,
    #[serde(default)]
    classifier_dropout: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pruned_heads: RawPrunedHeads,
    #[serde(flatten)]
    labels: RawLabels,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl TryFrom<RawBertConfig> for BertConfig {
    type Error = ConfigError;
    fn try_from(r: RawBertConfig) -> Result<Self, ConfigError> {
        if r.model_type != "bert" {
            return Err(ConfigError::Invalid(format!(
                "model_type is `{}`, expected `bert`",
                r.model_type
            )));
        }
        if r.position_embedding_type != "absolute" {
            return Err(ConfigError::Invalid(format!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                r.position_embedding_type
            )));
        }
        let labels = Labels::from_raw(r.labels.id2label, r.labels.num_labels)?;
        // `architectures` is rewritten on save (this crate always saves a classifier).
        let _ = r.architectures;
        let extra = r.extra;
        let c = BertConfig {
            vocab_size: r.vocab_size,
            hidden_size: r.hidden_size,
            num_hidden_layers: r.num_hidden_layers,
            num_attention_heads: r.num_attention_heads,
            intermediate_size: r.intermediate_size,
            hidden_act: r.hidden_act,
            hidden_dropout_prob: r.hidden_dropout_prob,
            attention_probs_dropout_prob: r.attention_probs_dropout_prob,
            max_position_embeddings: r.max_position_embeddings,
            type_vocab_size: r.type_vocab_size,
            initializer_range: r.initializer_range,
            layer_norm_eps: r.layer_norm_eps,
            pad_token_id: r.pad_token_id,
            classifier_dropout: r.classifier_dropout,
            pruned_heads: pruned_heads_from_raw(r.pruned_heads)?,
            labels,
            extra,
        };
        c.validate()?;
        Ok(c)
    }
}

impl From<BertConfig> for RawBertConfig {
    fn from(c: BertConfig) -> Self {
        let extra = c.extra;
        RawBertConfig {
            model_type: "bert".into(),
            architectures: Some(vec!["BertForSequenceClassification".into()]),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            intermediate_size: c.intermediate_size,
            hidden_act: c.hidden_act,
            hidden_dropout_prob: c.hidden_dropout_prob,
            attention_probs_dropout_prob: c.attention_probs_dropout_prob,
            max_position_embeddings: c.max_position_embeddings,
            type_vocab_size: c.type_vocab_size,
            initializer_range: c.initializer_range,
            layer_norm_eps: c.layer_norm_eps,
            pad_token_id: c.pad_token_id,
            position_embedding_type: "absolute".into(),
            classifier_dropout: c.classifier_dropout,
            pruned_heads: pruned_heads_to_raw(&c.pruned_heads),
            labels: RawLabels {
                id2label: Some(c.labels.id2label()),
                label2id: Some(c.labels.label2id()),
                num_labels: None,
            },
            extra,
        }
    }
}

impl BertConfig {
    /// A BERT config of the given shape with HF defaults for everything else.
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        intermediate_size: usize,
        num_labels: usize,
    ) -> Self {
        Self {
            vocab_size,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            intermediate_size,
            hidden_act: HiddenAct::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            classifier_dropout: None,
            pruned_heads: PrunedHeads::new(),
            labels: Labels::default_names(num_labels),
            extra: Map::new(),
        }
    }

    /// Number of classes (`len(id2label)`).
    pub fn num_labels(&self) -> usize {
        self.labels.names.len()
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The heads encoder layer `layer` keeps (original indices, ascending).
    pub fn kept_heads(&self, layer: usize) -> Vec<usize> {
        kept_heads(&self.pruned_heads, self.num_attention_heads, layer)
    }

    /// Number of attention heads of encoder layer `layer` (after head pruning).
    pub fn heads_in_layer(&self, layer: usize) -> usize {
        self.kept_heads(layer).len()
    }

    /// Checks the shape parameters for consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_heads(self.hidden_size, self.num_attention_heads)?;
        check_pruned_heads(&self.pruned_heads, self.num_hidden_layers, self.num_attention_heads)?;
        if self.num_labels() == 0 {
            return Err(ConfigError::Invalid(String::from(
                "a classifier needs at least one label",
            )));
        }
        check_prob("hidden_dropout_prob", self.hidden_dropout_prob)?;
        check_prob("attention_probs_dropout_prob", self.attention_probs_dropout_prob)?;
        if let Some(p) = self.classifier_dropout {
            check_prob("classifier_dropout", p)?;
        }
        Ok(())
    }
}

/// ViT configuration (`model_type: "vit"`), as in transformers' `ViTConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawVitConfig", into = "RawVitConfig")]
pub struct VitConfig {
    /// Hidden (model) width.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads (must divide `hidden_size`).
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    pub hidden_act: HiddenAct,
    /// Dropout on embeddings and sub-layer outputs.
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    pub attention_probs_dropout_prob: f64,
    /// Standard deviation of the (truncated) normal initialiser.
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Input image side in pixels (square images).
    pub image_size: usize,
    /// Patch side in pixels (must divide `image_size`).
    pub patch_size: usize,
    /// Input channels.
    pub num_channels: usize,
    /// Whether query/key/value projections have a bias.
    pub qkv_bias: bool,
    /// Attention heads removed per layer (HF `pruned_heads`); empty for an unpruned model.
    pub pruned_heads: PrunedHeads,
    /// Class labels (`id2label` / `label2id`); `num_labels` is their count.
    pub labels: Labels,
    /// Every other field of config.json, kept for round trips.
    pub extra: Map<String, Value>,
}

#[derive(Serialize, Deserialize)]
struct RawVitConfig {
    #[serde(default = "d_vit_model_type")]
    model_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default)]
    hidden_act: HiddenAct,
    #[serde(default)]
    hidden_dropout_prob: f64,
    #[serde(default)]
    attention_probs_dropout_prob: f64,
    #[serde(default = "d_002")]
    initializer_range: f64,
    #[serde(default = "d_ln_eps")]
    layer_norm_eps: f64,
    #[serde(default = "d_224")]
    image_size: usize,
    #[serde(default = "d_16")]
    patch_size: usize,
    #[serde(default = "d_3")]
    num_channels: usize,
    #[serde(default = "d_true")]
    qkv_bias: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pruned_heads: RawPrunedHeads,
    #[serde(flatten)]
    labels: RawLabels,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl TryFrom<RawVitConfig> for VitConfig {
    type Error = ConfigError;
    fn try_from(r: RawVitConfig) -> Result<Self, ConfigError> {
        if r.model_type != "vit" {
            return Err(ConfigError::Invalid(format!(
                "model_type is `{}`, expected `vit`",
                r.model_type
            )));
        }
        let labels = Labels::from_raw(r.labels.id2label, r.labels.num_labels)?;
        // `architectures` is rewritten on save (this crate always saves a classifier).
        let _ = r.architectures;
        let extra = r.extra;
        let c = VitConfig {
            hidden_size: r.hidden_size,
            num_hidden_layers: r.num_hidden_layers,
            num_attention_heads: r.num_attention_heads,
            intermediate_size: r.intermediate_size,
            hidden_act: r.hidden_act,
            hidden_dropout_prob: r.hidden_dropout_prob,
            attention_probs_dropout_prob: r.attention_probs_dropout_prob,
            initializer_range: r.initializer_range,
            layer_norm_eps: r.layer_norm_eps,
            image_size: r.image_size,
            patch_size: r.patch_size,
            num_channels: r.num_channels,
            qkv_bias: r.qkv_bias,
            pruned_heads: pruned_heads_from_raw(r.pruned_heads)?,
            labels,
            extra,
        };
        c.validate()?;
        Ok(c)
    }
}

impl From<VitConfig> for RawVitConfig {
    fn from(c: VitConfig) -> Self {
        let extra = c.extra;
        RawVitConfig {
            model_type: "vit".into(),
            architectures: Some(vec!["ViTForImageClassification".into()]),
            hidden_size: c.hidden_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            intermediate_size: c.intermediate_size,
            hidden_act: c.hidden_act,
            hidden_dropout_prob: c.hidden_dropout_prob,
            attention_probs_dropout_prob: c.attention_probs_dropout_prob,
            initializer_range: c.initializer_range,
            layer_norm_eps: c.layer_norm_eps,
            image_size: c.image_size,
            patch_size: c.patch_size,
            num_channels: c.num_channels,
            qkv_bias: c.qkv_bias,
            pruned_heads: pruned_heads_to_raw(&c.pruned_heads),
            labels: RawLabels {
                id2label: Some(c.labels.id2label()),
                label2id: Some(c.labels.label2id()),
                num_labels: None,
            },
            extra,
        }
    }
}

impl VitConfig {
    /// A ViT config of the given shape with HF defaults for everything else.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        image_size: usize,
        patch_size: usize,
        num_channels: usize,
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        intermediate_size: usize,
        num_labels: usize,
    ) -> Self {
        Self {
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            intermediate_size,
            hidden_act: HiddenAct::Gelu,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            image_size,
            patch_size,
            num_channels,
            qkv_bias: true,
            pruned_heads: PrunedHeads::new(),
            labels: Labels::default_names(num_labels),
            extra: Map::new(),
        }
    }

    /// Number of classes (`len(id2label)`).
    pub fn num_labels(&self) -> usize {
        self.labels.names.len()
    }

    /// Number of patches per image (tokens excluding CLS).
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The heads encoder layer `layer` keeps (original indices, ascending).
    pub fn kept_heads(&self, layer: usize) -> Vec<usize> {
        kept_heads(&self.pruned_heads, self.num_attention_heads, layer)
    }

    /// Number of attention heads of encoder layer `layer` (after head pruning).
    pub fn heads_in_layer(&self, layer: usize) -> usize {
        self.kept_heads(layer).len()
    }

    /// Checks the shape parameters for consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_heads(self.hidden_size, self.num_attention_heads)?;
        check_pruned_heads(&self.pruned_heads, self.num_hidden_layers, self.num_attention_heads)?;
        if self.image_size.checked_rem(self.patch_size) != Some(0) {
            return Err(ConfigError::Invalid(format!(
                "patch_size {} does not divide image_size {}",
                self.patch_size, self.image_size
            )));
        }
        if self.num_labels() == 0 {
            return Err(ConfigError::Invalid(String::from(
                "a classifier needs at least one label",
            )));
        }
        check_prob("hidden_dropout_prob", self.hidden_dropout_prob)?;
        check_prob("attention_probs_dropout_prob", self.attention_probs_dropout_prob)
    }
}

fn check_heads(hidden: usize, heads: usize) -> Result<(), ConfigError> {
    if hidden.checked_rem(heads) != Some(0) {
        return Err(ConfigError::Invalid(format!(
            "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
        )));
    }
    Ok(())
}

fn check_prob(name: &str, p: f64) -> Result<(), ConfigError> {
    if !(0.0..1.0).contains(&p) {
        return Err(ConfigError::Invalid(format!("{name} must be in [0, 1), got {p}")));
    }
    Ok(())
}

/// The `quantization_config` of a 4-bit bitsandbytes checkpoint (transformers'
/// `BitsAndBytesConfig.to_dict()` fields), kept in the config's `extra` under that key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationConfig {
    /// `"bitsandbytes"`.
    pub quant_method: String,
    /// Whether the linear weights are 4-bit.
    #[serde(default)]
    pub load_in_4bit: bool,
    /// Whether the linear weights are 8-bit (not supported here).
    #[serde(default)]
    pub load_in_8bit: bool,
    /// `"nf4"` or `"fp4"`.
    #[serde(default = "d_fp4")]
    pub bnb_4bit_quant_type: String,
    /// Whether the absmax constants are themselves quantized.
    #[serde(default)]
    pub bnb_4bit_use_double_quant: bool,
    /// The dtype the forward pass dequantizes to.
    #[serde(default = "d_float32")]
    pub bnb_4bit_compute_dtype: String,
    /// The storage dtype of the packed weights.
    #[serde(default = "d_uint8")]
    pub bnb_4bit_quant_storage: String,
    /// Values per absmax block (not a transformers field; every weight's quant state has it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bnb_4bit_blocksize: Option<usize>,
    /// Linear modules left unquantized (the classification head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_int8_skip_modules: Option<Vec<String>>,
    /// Every other field, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn d_fp4() -> String {
    "fp4".into()
}
fn d_float32() -> String {
    "float32".into()
}
fn d_uint8() -> String {
    "uint8".into()
}

impl QuantizationConfig {
    /// The key of config.json that holds it.
    pub const KEY: &'static str = "quantization_config";

    /// 4-bit NF4 with f32 compute, as the `qlora` op writes it.
    pub fn nf4(double_quant: bool, block_size: usize, skip_modules: Vec<String>) -> Self {
        Self {
            quant_method: "bitsandbytes".into(),
            load_in_4bit: true,
            load_in_8bit: false,
            bnb_4bit_quant_type: "nf4".into(),
            bnb_4bit_use_double_quant: double_quant,
            bnb_4bit_compute_dtype: "float32".into(),
            bnb_4bit_quant_storage: "uint8".into(),
            bnb_4bit_blocksize: Some(block_size),
            llm_int8_skip_modules: Some(skip_modules),
            extra: Map::new(),
        }
    }
}

/// A model configuration of either supported family, dispatched on `model_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// `model_type: "bert"`.
    Bert(BertConfig),
    /// `model_type: "vit"`.
    Vit(VitConfig),
}

impl ModelConfig {
    /// Parses config.json text, choosing the family from `model_type`.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let v: Value = serde_json::from_str(text)?;
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or(ConfigError::NoModelType)?
            .to_string();
        match model_type.as_str() {
            "bert" => Ok(ModelConfig::Bert(serde_json::from_value(v)?)),
            "vit" => Ok(ModelConfig::Vit(serde_json::from_value(v)?)),
            other => Err(ConfigError::UnsupportedModelType(other.to_string())),
        }
    }

    /// Reads and parses a config.json file; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|e| ConfigError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Pretty JSON in HF layout.
    pub fn to_json_string(&self) -> String {
        let r = match self {
            ModelConfig::Bert(c) => serde_json::to_string_pretty(c),
            ModelConfig::Vit(c) => serde_json::to_string_pretty(c),
        };
        r.expect("config serialises")
    }

    /// Number of classes.
    pub fn num_labels(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.num_labels(),
            ModelConfig::Vit(c) => c.num_labels(),
        }
    }

    /// Number of encoder layers.
    pub fn num_hidden_layers(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.num_hidden_layers,
            ModelConfig::Vit(c) => c.num_hidden_layers,
        }
    }

    /// Width of one attention head (`hidden_size / num_attention_heads`, unchanged by head pruning).
    pub fn head_dim(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.head_dim(),
            ModelConfig::Vit(c) => c.head_dim(),
        }
    }

    /// The heads encoder layer `layer` keeps (original indices, ascending).
    pub fn kept_heads(&self, layer: usize) -> Vec<usize> {
        match self {
            ModelConfig::Bert(c) => c.kept_heads(layer),
            ModelConfig::Vit(c) => c.kept_heads(layer),
        }
    }

    /// Attention heads removed per layer (HF `pruned_heads`).
    pub fn pruned_heads(&self) -> &PrunedHeads {
        match self {
            ModelConfig::Bert(c) => &c.pruned_heads,
            ModelConfig::Vit(c) => &c.pruned_heads,
        }
    }

    /// Mutable access to the removed heads (call [`ModelConfig::validate`] after changing them).
    pub fn pruned_heads_mut(&mut self) -> &mut PrunedHeads {
        match self {
            ModelConfig::Bert(c) => &mut c.pruned_heads,
            ModelConfig::Vit(c) => &mut c.pruned_heads,
        }
    }

    /// A lower bound of the model's weight count: the embeddings (or patch projection and
    /// positions) and every layer's attention (kept heads only) and feed-forward matrices; the
    /// biases, norms, pooler and classifier, a small part, are left out. Never overflows.
    pub fn min_weight_count(&self) -> u64 {
        let n = |x: usize| x as u64;
        let (hidden, intermediate, heads) = match self {
            ModelConfig::Bert(c) => (n(c.hidden_size), n(c.intermediate_size), n(c.num_attention_heads)),
            ModelConfig::Vit(c) => (n(c.hidden_size), n(c.intermediate_size), n(c.num_attention_heads)),
        };
        let head_dim = hidden / heads.max(1);
        let embedding_rows = match self {
            ModelConfig::Bert(c) => n(c.vocab_size)
                .saturating_add(n(c.max_position_embeddings))
                .saturating_add(n(c.type_vocab_size)),
            ModelConfig::Vit(c) => {
                let side = n(c.image_size) / n(c.patch_size.max(1));
                n(c.num_channels)
                    .saturating_mul(n(c.patch_size).saturating_mul(n(c.patch_size)))
                    .saturating_add(side.saturating_mul(side).saturating_add(1))
            }
        };
        let layers = (0..self.num_hidden_layers()).fold(0u64, |sum, layer| {
            let attention = n(self.kept_heads(layer).len()).saturating_mul(head_dim);
            let per_layer = hidden
                .saturating_mul(attention)
                .saturating_mul(4)
                .saturating_add(hidden.saturating_mul(intermediate).saturating_mul(2));
            sum.saturating_add(per_layer)
        });
        layers.saturating_add(embedding_rows.saturating_mul(hidden))
    }

    /// A lower bound of the values one training step keeps for its backward pass, for `batch`
    /// examples of `positions` tokens (or patches and the class token) when every weight trains.
    /// Per example and layer: the attention probabilities (kept heads × positions²), and at
    /// every position the query-key-value input and output (4 × hidden), the attention context
    /// and the feed-forward input (2 × hidden), and the feed-forward activation before and after
    /// GELU (2 × intermediate). In the last layer, which a classifier may compute for the first
    /// position only, the query-key-value input, keys and values count at every position and the
    /// rest at one. Norms, residuals and the embeddings are left out. Never overflows.
    pub fn min_activation_count(&self, batch: usize, positions: usize) -> u64 {
        let n = |x: usize| x as u64;
        let (hidden, intermediate) = match self {
            ModelConfig::Bert(c) => (n(c.hidden_size), n(c.intermediate_size)),
            ModelConfig::Vit(c) => (n(c.hidden_size), n(c.intermediate_size)),
        };
        let s = n(positions);
        let layers = self.num_hidden_layers();
        let per_example = (0..layers).fold(0u64, |sum, layer| {
            let heads = n(self.kept_heads(layer).len());
            let last = layer + 1 == layers;
            let rows = if last { 1 } else { s };
            let probabilities = heads.saturating_mul(rows).saturating_mul(s);
            // The input, keys and values at every position; the queries at the rows computed.
            let qkv = s
                .saturating_mul(hidden)
                .saturating_mul(3)
                .saturating_add(rows.saturating_mul(hidden));
            let rest = rows.saturating_mul(hidden.saturating_mul(2).saturating_add(intermediate.saturating_mul(2)));
            sum.saturating_add(probabilities.saturating_add(qkv).saturating_add(rest))
        });
        per_example.saturating_mul(n(batch))
    }

    /// The positions a ViT's encoder sees for images of `height × width` pixels (patches and the
    /// class token); `None` for a text model.
    pub fn image_positions(&self, height: usize, width: usize) -> Option<usize> {
        match self {
            ModelConfig::Bert(_) => None,
            ModelConfig::Vit(c) => {
                let p = c.patch_size.max(1);
                Some((height / p) * (width / p) + 1)
            }
        }
    }

    /// Checks the configuration for consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            ModelConfig::Bert(c) => c.validate(),
            ModelConfig::Vit(c) => c.validate(),
        }
    }

    /// The fields of config.json this crate does not model, kept for round trips.
    pub fn extra(&self) -> &Map<String, Value> {
        match self {
            ModelConfig::Bert(c) => &c.extra,
            ModelConfig::Vit(c) => &c.extra,
        }
    }

    /// Mutable access to the fields this crate does not model.
    pub fn extra_mut(&mut self) -> &mut Map<String, Value> {
        match self {
            ModelConfig::Bert(c) => &mut c.extra,
            ModelConfig::Vit(c) => &mut c.extra,
        }
    }

    /// The `quantization_config`, when the checkpoint is quantized (an error when it is malformed).
    pub fn quantization(&self) -> Result<Option<QuantizationConfig>, ConfigError> {
        match self.extra().get(QuantizationConfig::KEY) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(ConfigError::Quantization),
        }
    }

    /// Sets (or, with `None`, removes) the `quantization_config`.
    pub fn set_quantization(&mut self, q: Option<&QuantizationConfig>) {
        let extra = self.extra_mut();
        match q {
            Some(q) => {
                let v = serde_json::to_value(q).expect("quantization config serialises");
                extra.insert(QuantizationConfig::KEY.into(), v);
            }
            None => {
                extra.remove(QuantizationConfig::KEY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minilm_style_config_parses_with_hf_defaults() {
        let text = r#"{"_name_or_path": "x", "architectures": ["BertModel"],
            "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02,
            "intermediate_size": 1536, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
            "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 6,
            "pad_token_id": 0, "position_embedding_type": "absolute", "type_vocab_size": 2,
            "use_cache": true, "vocab_size": 30522}"#;
        let ModelConfig::Bert(c) = ModelConfig::from_json_str(text).unwrap() else {
            panic!("not bert")
        };
        assert_eq!(c.hidden_size, 384);
        assert_eq!(c.num_labels(), 2, "HF default is two labels");
        assert_eq!(c.labels.names, vec!["LABEL_0", "LABEL_1"]);
        assert_eq!(c.extra.get("use_cache"), Some(&Value::Bool(true)));
    }

    #[test]
    fn labels_round_trip_and_are_checked() {
        let mut c = BertConfig::new(100, 32, 2, 4, 64, 3);
        c.labels = Labels::from_names(["neg", "neu", "pos"]);
        let json = ModelConfig::Bert(c.clone()).to_json_string();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["id2label"]["2"], "pos");
        assert_eq!(v["label2id"]["neu"], 1);
        assert_eq!(v["model_type"], "bert");
        let back: BertConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);

        let vit = VitConfig::new(32, 8, 3, 48, 2, 3, 96, 3);
        let json = ModelConfig::Vit(vit.clone()).to_json_string();
        let back = ModelConfig::from_json_str(&json).unwrap();
        assert_eq!(back.num_labels(), 3);
        let ModelConfig::Vit(back) = back else { panic!() };
        assert_eq!(back.patch_size, 8);
        assert_eq!(ModelConfig::Vit(back), ModelConfig::Vit(vit));

        let bad = r#"{"model_type":"bert","vocab_size":10,"hidden_size":30,"num_hidden_layers":1,
            "num_attention_heads":4,"intermediate_size":8}"#;
        let e = ModelConfig::from_json_str(bad).unwrap_err().to_string();
        assert!(e.contains("not a multiple"), "{e}");
        let bad = r#"{"model_type":"bert","vocab_size":10,"hidden_size":32,"num_hidden_layers":1,
            "num_attention_heads":4,"intermediate_size":8,"id2label":{"0":"a","1":"b"},"num_labels":3}"#;
        let e = ModelConfig::from_json_str(bad).unwrap_err().to_string();
        assert!(e.contains("num_labels is 3"), "{e}");
        let e = ModelConfig::from_json_str(r#"{"model_type":"gpt2"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpt2"), "{e}");
    }
    #[test]
    fn quantization_config_round_trips_through_config_json() {
        let mut c = ModelConfig::Bert(BertConfig::new(100, 32, 2, 4, 64, 2));
        assert_eq!(c.quantization().unwrap(), None);
        let q = QuantizationConfig::nf4(true, 64, vec!["classifier".into()]);
        c.set_quantization(Some(&q));
        let json = c.to_json_string();
        let v: Value = serde_json::from_str(&json).unwrap();
        let qc = &v["quantization_config"];
        assert_eq!(qc["quant_method"], "bitsandbytes");
        assert_eq!(qc["load_in_4bit"], true);
        assert_eq!(qc["bnb_4bit_quant_type"], "nf4");
        assert_eq!(qc["bnb_4bit_use_double_quant"], true);
        assert_eq!(qc["bnb_4bit_compute_dtype"], "float32");
        assert_eq!(qc["bnb_4bit_blocksize"], 64);
        let back = ModelConfig::from_json_str(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.quantization().unwrap(), Some(q));
        // transformers' own dict (private fields included) parses and keeps what it does not know.
        let hf = r#"{"model_type":"vit","hidden_size":32,"num_hidden_layers":1,"num_attention_heads":2,
            "intermediate_size":8,"quantization_config":{"_load_in_4bit":true,"load_in_4bit":true,
            "quant_method":"bitsandbytes","bnb_4bit_quant_type":"nf4","llm_int8_threshold":6.0}}"#;
        let mut c = ModelConfig::from_json_str(hf).unwrap();
        let q = c.quantization().unwrap().unwrap();
        assert!(q.load_in_4bit && !q.bnb_4bit_use_double_quant);
        assert_eq!(q.extra["_load_in_4bit"], true);
        c.set_quantization(None);
        assert!(!c.to_json_string().contains("quantization_config"));
    }

    #[test]
    fn pruned_heads_round_trip_in_hf_layout_and_are_checked() {
        // HF writes `pruned_heads` with string layer keys; an empty list means nothing pruned.
        let text = r#"{"model_type":"bert","vocab_size":10,"hidden_size":32,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":8,"pruned_heads":{"1":[3,0,3],"0":[]}}"#;
        let ModelConfig::Bert(c) = ModelConfig::from_json_str(text).unwrap() else {
            panic!("not bert")
        };
        assert_eq!(c.pruned_heads, PrunedHeads::from([(1, BTreeSet::from([0, 3]))]));
        assert!(!c.extra.contains_key("pruned_heads"));
        assert_eq!(c.kept_heads(0), vec![0, 1, 2, 3]);
        assert_eq!(c.kept_heads(1), vec![1, 2]);
        assert_eq!(c.heads_in_layer(1), 2);
        assert_eq!(c.head_dim(), 8, "head width is unchanged by pruning");
        let json = ModelConfig::Bert(c.clone()).to_json_string();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["pruned_heads"], serde_json::json!({"1": [0, 3]}));
        let back: BertConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);

        // Unpruned configs write no `pruned_heads` (the same bytes as before it existed).
        let json = ModelConfig::Vit(VitConfig::new(32, 8, 3, 48, 2, 3, 96, 3)).to_json_string();
        assert!(!json.contains("pruned_heads"), "{json}");
        let mut vit = VitConfig::new(32, 8, 3, 48, 2, 3, 96, 3);
        vit.pruned_heads.insert(0, BTreeSet::from([2]));
        let back = ModelConfig::from_json_str(&ModelConfig::Vit(vit.clone()).to_json_string()).unwrap();
        assert_eq!(back, ModelConfig::Vit(vit));
        assert_eq!(back.kept_heads(0), vec![0, 1]);

        let base = r#"{"model_type":"bert","vocab_size":10,"hidden_size":32,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":8,"pruned_heads":"#;
        for (heads, expect) in [
            (r#"{"2":[0]}"#, "layer 2 but the model has 2 layers"),
            (r#"{"0":[4]}"#, "head 4 of layer 0"),
            (r#"{"1":[0,1,2,3]}"#, "every head of layer 1"),
            (r#"{"x":[0]}"#, "`x` is not a layer index"),
        ] {
            let e = ModelConfig::from_json_str(&format!("{base}{heads}}}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect), "{heads}: {e}");
        }
    }
}

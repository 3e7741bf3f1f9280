//! The one catalog of a model's linear layers: their Hugging Face module names, what each does,
//! and mutable access to them on a built model, in one fixed order.
//!
//! Pruning ([`crate::ml::compress::prune`]), LoRA and QLoRA ([`crate::ml::compress::lora`]) and
//! the size measures ([`crate::ml::compress::sizes`]) all read this list, so they agree on which
//! layers exist, what they are called and in which order global ties are broken. The order is:
//! each encoder layer's query, key, value, attention output, intermediate and output
//! projections, then the pooler (BERT only) and the classifier ([`HEAD`]). A module's weight is
//! `<name>.weight` and its bias `<name>.bias`.

use super::config::ModelConfig;
use super::layers::Linear;
use super::model::Model;

/// The classification head's module name (trained in full, never adapted or quantized).
pub const HEAD: &str = "classifier";

/// What a linear layer does in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An encoder layer's query projection.
    Query,
    /// An encoder layer's key projection.
    Key,
    /// An encoder layer's value projection.
    Value,
    /// An encoder layer's attention output projection.
    AttentionOutput,
    /// An encoder layer's feed-forward expansion (`intermediate.dense`).
    Intermediate,
    /// An encoder layer's feed-forward projection back to the hidden size (`output.dense`).
    Output,
    /// BERT's pooler (`bert.pooler.dense`).
    Pooler,
    /// The classification head ([`HEAD`]).
    Classifier,
}

impl Role {
    /// The linears of every encoder layer, in catalog order.
    pub const ENCODER: [Role; 6] = [
        Role::Query,
        Role::Key,
        Role::Value,
        Role::AttentionOutput,
        Role::Intermediate,
        Role::Output,
    ];
}

/// One linear layer of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearModule {
    /// Hugging Face module name (`bert.encoder.layer.3.attention.self.query`).
    pub name: String,
    /// What it does.
    pub role: Role,
    /// The encoder layer it belongs to (`None` for the pooler and the head).
    pub layer: Option<usize>,
}

impl LinearModule {
    /// The name of its weight, `<name>.weight`.
    pub fn weight(&self) -> String {
        format!("{}.weight", self.name)
    }

    /// The name of its bias, `<name>.bias` (absent when the layer has none).
    pub fn bias(&self) -> String {
        format!("{}.bias", self.name)
    }
}

/// The module name of the linear with `role` (one of [`Role::ENCODER`]) in encoder layer
/// `layer`: BERT's attention block is `attention.self`, ViT's `attention.attention`.
pub fn encoder_module(config: &ModelConfig, layer: usize, role: Role) -> String {
    let (root, attention) = match config {
        ModelConfig::Bert(_) => ("bert", "attention.self"),
        ModelConfig::Vit(_) => ("vit", "attention.attention"),
    };
    let p = format!("{root}.encoder.layer.{layer}.");
    match role {
        Role::Query => format!("{p}{attention}.query"),
        Role::Key => format!("{p}{attention}.key"),
        Role::Value => format!("{p}{attention}.value"),
        Role::AttentionOutput => format!("{p}attention.output.dense"),
        Role::Intermediate => format!("{p}intermediate.dense"),
        Role::Output => format!("{p}output.dense"),
        Role::Pooler | Role::Classifier => unreachable!("{role:?} is not in an encoder layer"),
    }
}

/// Every linear layer of a model with this config, in catalog order (see the module doc).
pub fn linear_modules(config: &ModelConfig) -> Vec<LinearModule> {
    let mut out = Vec::with_capacity(config.num_hidden_layers() * Role::ENCODER.len() + 2);
    for layer in 0..config.num_hidden_layers() {
        for role in Role::ENCODER {
            out.push(LinearModule {
                name: encoder_module(config, layer, role),
                role,
                layer: Some(layer),
            });
        }
    }
    if matches!(config, ModelConfig::Bert(_)) {
        out.push(LinearModule {
            name: "bert.pooler.dense".into(),
            role: Role::Pooler,
            layer: None,
        });
    }
    out.push(LinearModule {
        name: HEAD.into(),
        role: Role::Classifier,
        layer: None,
    });
    out
}

/// Every linear layer of a built model with its module name, mutable, in the order and with the
/// names of [`linear_modules`] of its config.
pub fn linears_mut(model: &mut Model) -> Vec<(String, &mut Linear)> {
    let names = linear_modules(&model.config());
    let mut layers: Vec<&mut Linear> = Vec::with_capacity(names.len());
    // Each encoder layer's fields in the order of `Role::ENCODER`.
    match model {
        Model::Bert(m) => {
            for l in m.layers.iter_mut() {
                let a = &mut l.attention;
                layers.extend([
                    &mut a.query,
                    &mut a.key,
                    &mut a.value,
                    &mut l.attention_output,
                    &mut l.intermediate,
                    &mut l.output,
                ]);
            }
            layers.push(&mut m.pooler);
            layers.push(&mut m.classifier);
        }
        Model::Vit(m) => {
            for l in m.layers.iter_mut() {
                let a = &mut l.attention;
                layers.extend([
                    &mut a.query,
                    &mut a.key,
                    &mut a.value,
                    &mut l.attention_output,
                    &mut l.intermediate,
                    &mut l.output,
                ]);
            }
            layers.push(&mut m.classifier);
        }
    }
    assert_eq!(
        names.len(),
        layers.len(),
        "the linear-layer catalog and the model disagree"
    );
    names.into_iter().map(|m| m.name).zip(layers).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::models::model::Pretrained;
    use crate::ml::testutil::{tiny_bert, tiny_vit};
    use candle_core::{Device, Var};
    use std::collections::HashMap;

    /// The names are the variables the model really has, each linear's weight once, in order.
    #[test]
    fn catalog_names_the_model_s_linear_weights() {
        for config in [ModelConfig::Bert(tiny_bert(3)), ModelConfig::Vit(tiny_vit(3))] {
            let mut p = Pretrained::random(&config, 1, &Device::Cpu).unwrap();
            let vars: HashMap<String, Var> = p.params.named_vars().into_iter().collect();
            let catalog = linear_modules(&config);
            let shapes: Vec<Vec<usize>> = catalog
                .iter()
                .map(|m| match vars.get(&m.weight()) {
                    Some(v) => v.dims().to_vec(),
                    None => panic!("{} is not a variable", m.weight()),
                })
                .collect();
            let walked = linears_mut(&mut p.model);
            assert_eq!(walked.len(), catalog.len());
            for ((name, linear), (m, shape)) in walked.iter().zip(catalog.iter().zip(&shapes)) {
                assert_eq!(name, &m.name);
                assert_eq!(linear.weight.dims(), &shape[..], "{name}");
            }
            assert_eq!(catalog.last().unwrap().name, HEAD);
            assert_eq!(
                catalog.iter().filter(|m| m.role == Role::Query).count(),
                config.num_hidden_layers()
            );
        }
    }
}

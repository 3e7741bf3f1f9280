//! A model's size, measured in the formats a researcher compares: dense f32, NF4 (as QLoRA
//! stores a base) and sparse (bitmask plus values), from the weights themselves.
//!
//! - dense: 4 bytes per parameter.
//! - NF4: the linear weights QLoRA quantises ([`base_linears`]: the encoder's and the pooler's) with
//!   [`Nf4Tensor`](super::nf4::Nf4Tensor) (block 64, double quantisation) and counted as it is
//!   stored (packed codes plus constants); everything else (embeddings, LayerNorms, biases, the
//!   classifier) in f32.
//! - sparse: per tensor, a bitmask of one bit per entry plus 4 bytes per nonzero entry.
//!
//! Pruning zeros shrink only the sparse size; removing heads shrinks all three.

use candle_core::{DType, Result};
use serde::Serialize;

use super::lora::base_linears;
use super::nf4::{Nf4Tensor, DEFAULT_BLOCK_SIZE};
use crate::ml::models::config::ModelConfig;
use crate::ml::models::params::ParamStore;

/// Measured sizes of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sizes {
    /// Parameters.
    pub params: usize,
    /// Parameters that are not exactly zero.
    pub nonzeros: usize,
    /// Bytes as dense f32.
    pub dense_bytes: u64,
    /// Bytes with the linear weights in NF4 (double quantisation, block 64), the rest f32.
    pub nf4_bytes: u64,
    /// Bytes as bitmask plus nonzero f32 values.
    pub sparse_bytes: u64,
}

/// Measures the sizes of a model's weights.
pub fn measure(config: &ModelConfig, params: &ParamStore) -> Result<Sizes> {
    let mut counter = SizeCounter::new(config);
    for (name, t) in params.tensors()? {
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        counter.add(&name, t.dims(), &values)?;
    }
    Ok(counter.sizes())
}

/// [`Sizes`] added up one tensor at a time (so that no copy of the whole model is needed).
#[derive(Debug, Clone)]
pub struct SizeCounter {
    quantised: Vec<String>,
    sizes: Sizes,
}

impl SizeCounter {
    /// An empty count for a model with `config` (which says which weights NF4 would quantise).
    pub fn new(config: &ModelConfig) -> Self {
        Self {
            quantised: base_linears(config).into_iter().map(|m| m + ".weight").collect(),
            sizes: Sizes {
                params: 0,
                nonzeros: 0,
                dense_bytes: 0,
                nf4_bytes: 0,
                sparse_bytes: 0,
            },
        }
    }

    /// Counts the tensor `name` of shape `dims` holding `values`.
    pub fn add(&mut self, name: &str, dims: &[usize], values: &[f32]) -> Result<()> {
        let s = &mut self.sizes;
        let n = values.len();
        let nnz = values.iter().filter(|v| **v != 0.0).count();
        s.params += n;
        s.nonzeros += nnz;
        s.dense_bytes += 4 * n as u64;
        s.sparse_bytes += n.div_ceil(8) as u64 + 4 * nnz as u64;
        s.nf4_bytes += if self.quantised.iter().any(|q| q == name) {
            let q = Nf4Tensor::quantize(values, dims, DEFAULT_BLOCK_SIZE, true).map_err(candle_core::Error::wrap)?;
            q.bytes() as u64
        } else {
            4 * n as u64
        };
        Ok(())
    }

    /// The sizes counted so far.
    pub fn sizes(&self) -> Sizes {
        self.sizes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::checkpoint::Pretrained;
    use crate::ml::models::config::BertConfig;
    use candle_core::{Device, Tensor};

    #[test]
    fn sizes_follow_the_weights() {
        let config = ModelConfig::Bert(BertConfig::new(50, 64, 2, 2, 128, 2));
        let p = Pretrained::random(&config, 1, &Device::Cpu).unwrap();
        let s = measure(&config, &p.params).unwrap();
        assert_eq!(s.params, p.params.num_parameters());
        assert_eq!(s.dense_bytes, 4 * s.params as u64);
        // Random weights: (almost) no zeros, so the sparse form costs a bitmask more.
        assert!(s.nonzeros > s.params * 9 / 10);
        assert!(s.sparse_bytes > s.dense_bytes);
        // Linear weights of the encoder and pooler: 64·64·4 + 64·128·2 per layer, ×2, + 64·64.
        let linear = (2 * (4 * 64 * 64 + 2 * 64 * 128) + 64 * 64) as u64;
        // In NF4 with double quantisation: 4 bits + 8 bits per 64 + 32 bits per 64·256 (+ the offset).
        let expected_nf4 = s.dense_bytes - 4 * linear + linear / 2 + linear / 64;
        assert!(
            s.nf4_bytes >= expected_nf4 && s.nf4_bytes < expected_nf4 + 200,
            "{s:?} vs {expected_nf4}"
        );
        // Zeroing half of one matrix halves its values in the sparse count only.
        let name = "bert.encoder.layer.0.intermediate.dense.weight";
        let var = p.params.named_vars().into_iter().find(|(n, _)| n == name).unwrap().1;
        let w = var.as_tensor().to_vec2::<f32>().unwrap();
        let half: Vec<f32> = w
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { 0.0 } else { *v })
            .collect();
        var.set(&Tensor::from_vec(half, var.as_tensor().dims(), &Device::Cpu).unwrap())
            .unwrap();
        let z = measure(&config, &p.params).unwrap();
        assert_eq!(z.dense_bytes, s.dense_bytes);
        assert_eq!(z.nf4_bytes, s.nf4_bytes);
        assert_eq!(z.nonzeros, s.nonzeros - 128 * 64 / 2);
        assert_eq!(z.sparse_bytes, s.sparse_bytes - 4 * (128 * 64 / 2) as u64);
    }
}

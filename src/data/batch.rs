//! Batches: the example order (in order or seeded shuffle) and tensors built from examples.
//!
//! Text batches are padded to their longest sequence (dynamic padding) with an attention mask;
//! image batches are ImageNet-normalised `[batch, 3, side, side]` floats.

use candle_core::{Device, Tensor};

use super::error::DataError;
use super::pixels::normalise_into;
use super::synthetic_text::shuffle;
use crate::ml::{ModelInput, Rng};

/// A batch of model inputs and their labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The model inputs.
    pub input: ModelInput,
    /// Class labels, u32 `[batch]`.
    pub labels: Tensor,
    /// The position of each example in its split (to line up cached per-example outputs).
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the batch has no examples (never true for batches from a `Dataset`).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// `0..n` in order, or shuffled with a generator seeded from `shuffle_seed`.
pub fn example_order(n: usize, shuffle_seed: Option<u64>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if let Some(seed) = shuffle_seed {
        shuffle(&mut order, &mut Rng::for_stream(seed, "rkd-data-shuffle"));
    }
    order
}

fn label_tensor(labels: &[u32], indices: &[usize], device: &Device) -> Result<Tensor, DataError> {
    let ls: Vec<u32> = indices.iter().map(|&i| labels[i]).collect();
    Ok(Tensor::from_vec(ls, indices.len(), device)?)
}

/// A text batch: ids padded with `pad_id` to the longest sequence (at most `max_len`), a 0/1
/// attention mask, and token types: 0, or 1 from `segments[i]` on for a sentence pair (`segments`
/// empty: single texts, all 0); all u32 `[batch, seq]`.
pub fn text_batch(
    seqs: &[Vec<u32>],
    segments: &[u32],
    labels: &[u32],
    indices: &[usize],
    pad_id: u32,
    max_len: usize,
    device: &Device,
) -> Result<Batch, DataError> {
    let len = indices
        .iter()
        .map(|&i| seqs[i].len())
        .max()
        .unwrap_or(0)
        .min(max_len)
        .max(1);
    let b = indices.len();
    let mut ids = Vec::with_capacity(b * len);
    let mut mask = Vec::with_capacity(b * len);
    let mut types = Vec::with_capacity(b * len);
    for &i in indices {
        let s = &seqs[i][..seqs[i].len().min(len)];
        ids.extend_from_slice(s);
        ids.extend(std::iter::repeat_n(pad_id, len - s.len()));
        mask.extend(std::iter::repeat_n(1u32, s.len()));
        mask.extend(std::iter::repeat_n(0u32, len - s.len()));
        let second = segments.get(i).map_or(s.len(), |&at| (at as usize).min(s.len()));
        types.extend(std::iter::repeat_n(0u32, second));
        types.extend(std::iter::repeat_n(1u32, s.len() - second));
        types.extend(std::iter::repeat_n(0u32, len - s.len()));
    }
    Ok(Batch {
        input: ModelInput::Text {
            input_ids: Tensor::from_vec(ids, (b, len), device)?,
            token_type_ids: Some(Tensor::from_vec(types, (b, len), device)?),
            attention_mask: Some(Tensor::from_vec(mask, (b, len), device)?),
        },
        labels: label_tensor(labels, indices, device)?,
        indices: indices.to_vec(),
    })
}

/// A per-example image transform (augmentation): `(index in split, RGB bytes) → RGB bytes`.
pub type Transform<'a> = &'a (dyn Fn(usize, &[u8]) -> Vec<u8> + Sync);

/// An image batch from RGB buffers (`[side, side, 3]` bytes each), ImageNet-normalised into
/// f32 `[batch, 3, side, side]`. `transform`, when given, replaces each buffer first (augmentation).
pub fn image_batch(
    images: &[Vec<u8>],
    labels: &[u32],
    indices: &[usize],
    side: usize,
    transform: Option<Transform<'_>>,
    device: &Device,
) -> Result<Batch, DataError> {
    use rayon::prelude::*;
    let per = 3 * side * side;
    let chunks: Vec<Vec<f32>> = indices
        .par_iter()
        .map(|&i| {
            let mut out = Vec::with_capacity(per);
            match transform {
                Some(f) => normalise_into(&f(i, &images[i]), &mut out),
                None => normalise_into(&images[i], &mut out),
            }
            out
        })
        .collect();
    let pixels: Vec<f32> = chunks.concat();
    Ok(Batch {
        input: ModelInput::Images {
            pixel_values: Tensor::from_vec(pixels, (indices.len(), 3, side, side), device)?,
        },
        labels: label_tensor(labels, indices, device)?,
        indices: indices.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_seeded() {
        assert_eq!(example_order(5, None), [0, 1, 2, 3, 4]);
        let a = example_order(50, Some(3));
        assert_eq!(a, example_order(50, Some(3)));
        assert_ne!(a, example_order(50, Some(4)));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn dynamic_padding_and_mask() {
        let seqs = vec![vec![2, 7, 3], vec![2, 7, 8, 9, 3], vec![2, 3]];
        let b = text_batch(&seqs, &[], &[1, 0, 1], &[0, 2], 0, 64, &Device::Cpu).unwrap();
        let ModelInput::Text {
            input_ids,
            attention_mask,
            token_type_ids,
        } = &b.input
        else {
            panic!("not text")
        };
        assert_eq!(input_ids.to_vec2::<u32>().unwrap(), [[2, 7, 3], [2, 3, 0]]);
        assert_eq!(
            attention_mask.as_ref().unwrap().to_vec2::<u32>().unwrap(),
            [[1, 1, 1], [1, 1, 0]]
        );
        assert_eq!(token_type_ids.as_ref().unwrap().dims(), [2, 3]);
        assert_eq!(b.labels.to_vec1::<u32>().unwrap(), [1, 1]);
        let b = text_batch(&seqs, &[], &[1, 0, 1], &[1, 0], 0, 4, &Device::Cpu).unwrap();
        let ModelInput::Text { input_ids, .. } = &b.input else {
            panic!()
        };
        assert_eq!(input_ids.dims(), [2, 4]);
    }

    #[test]
    fn a_sentence_pair_has_token_type_one_from_its_second_segment_to_its_end() {
        // [CLS] a [SEP] b c [SEP] and [CLS] a [SEP] b [SEP]: the second text starts at 3.
        let seqs = vec![vec![2, 7, 3, 8, 9, 3], vec![2, 7, 3, 8, 3]];
        let b = text_batch(&seqs, &[3, 3], &[0, 1], &[0, 1], 0, 64, &Device::Cpu).unwrap();
        let ModelInput::Text { token_type_ids, .. } = &b.input else {
            panic!("not text")
        };
        assert_eq!(
            token_type_ids.as_ref().unwrap().to_vec2::<u32>().unwrap(),
            [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0]]
        );
    }
}

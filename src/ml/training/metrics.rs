//! Classification metrics: predictions, confusion counts, accuracy (overall and per class),
//! and model-size counts.

use candle_core::{Result, Tensor, D};

use crate::ml::models::layers::ForwardCtx;
use crate::ml::models::model::{Model, ModelInput};
use crate::ml::models::params::ParamStore;

/// The predicted class of each row of `logits` (`[batch, classes]`): the arg-max, first on ties.
pub fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_dtype(candle_core::DType::U32)?.to_vec1()
}

/// Counts of (true class, predicted class) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    classes: usize,
    /// `counts[truth * classes + predicted]`.
    counts: Vec<u64>,
}

impl Confusion {
    /// An empty table for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// Adds one example; labels or predictions outside the classes are an error.
    pub fn add(&mut self, truth: u32, predicted: u32) -> Result<()> {
        let (t, p) = (truth as usize, predicted as usize);
        if t >= self.classes || p >= self.classes {
            candle_core::bail!(
                "label {truth} or prediction {predicted} is outside the {} classes",
                self.classes
            )
        }
        self.counts[t * self.classes + p] += 1;
        Ok(())
    }

    /// Adds a batch of labels and predictions.
    pub fn add_all(&mut self, truth: &[u32], predicted: &[u32]) -> Result<()> {
        if truth.len() != predicted.len() {
            candle_core::bail!("{} labels for {} predictions", truth.len(), predicted.len())
        }
        truth.iter().zip(predicted).try_for_each(|(&t, &p)| self.add(t, p))
    }

    /// Adds another table's counts (same number of classes).
    pub fn merge(&mut self, other: &Confusion) -> Result<()> {
        if other.classes != self.classes {
            candle_core::bail!("cannot merge {} classes into {}", other.classes, self.classes)
        }
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Examples counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Examples predicted correctly.
    pub fn correct(&self) -> u64 {
        (0..self.classes).map(|i| self.counts[i * self.classes + i]).sum()
    }

    /// Fraction predicted correctly (0 when empty).
    pub fn accuracy(&self) -> f64 {
        let n = self.total();
        if n == 0 {
            0.0
        } else {
            self.correct() as f64 / n as f64
        }
    }

    /// Examples of each true class.
    pub fn support(&self) -> Vec<u64> {
        (0..self.classes)
            .map(|t| self.counts[t * self.classes..(t + 1) * self.classes].iter().sum())
            .collect()
    }

    /// Per-class accuracy (recall): correct / examples of that class; `None` for absent classes.
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        self.support()
            .iter()
            .enumerate()
            .map(|(t, &n)| (n > 0).then(|| self.counts[t * self.classes + t] as f64 / n as f64))
            .collect()
    }

    /// Rows of the table: `rows[truth][predicted]`.
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts.chunks(self.classes.max(1)).map(<[u64]>::to_vec).collect()
    }
}

/// The share of examples whose label is the most frequent one (the majority-class baseline).
pub fn majority_accuracy(labels: &[u32]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let mut counts = std::collections::BTreeMap::new();
    for &l in labels {
        *counts.entry(l).or_insert(0usize) += 1;
    }
    *counts.values().max().unwrap_or(&0) as f64 / labels.len() as f64
}

/// What [`evaluate`] measures over a set of batches.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Labels against predictions.
    pub confusion: Confusion,
    /// Mean cross-entropy per example.
    pub loss: f64,
    /// The predicted class of every example, in batch order (for paired comparisons).
    pub predicted: Vec<u32>,
}

/// Runs `model` in eval mode over `(input, labels)` batches; the model should be built on
/// detached weights ([`ParamStore::frozen_var_builder`]) so that no autograd graph is kept.
pub fn evaluate<'a>(
    model: &Model,
    batches: impl IntoIterator<Item = (&'a ModelInput, &'a Tensor)>,
) -> Result<Evaluation> {
    let mut confusion = Confusion::new(model.num_labels());
    let mut loss_sum = 0.0;
    let mut predicted = Vec::new();
    for (input, labels) in batches {
        let out = model.forward(input, &mut ForwardCtx::eval())?;
        let n = labels.dim(0)?;
        let loss = candle_nn::loss::cross_entropy(&out.logits, labels)?.to_scalar::<f32>()? as f64;
        loss_sum += loss * n as f64;
        let p = predictions(&out.logits)?;
        confusion.add_all(&labels.to_vec1::<u32>()?, &p)?;
        predicted.extend(p);
    }
    let n = confusion.total().max(1) as f64;
    Ok(Evaluation {
        confusion,
        loss: loss_sum / n,
        predicted,
    })
}

/// Scalar parameters and how many of them are not zero.
pub fn parameter_counts(params: &ParamStore) -> Result<(usize, usize)> {
    let mut total = 0;
    let mut nonzero = 0;
    for (_, var) in params.named_vars() {
        let t = var.as_tensor();
        total += t.elem_count();
        nonzero += t
            .ne(&t.zeros_like()?)?
            .to_dtype(candle_core::DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
    }
    Ok((total, nonzero))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn confusion_counts_and_accuracies() {
        let mut c = Confusion::new(3);
        c.add_all(&[0, 0, 1, 1, 1, 2], &[0, 1, 1, 1, 0, 0]).unwrap();
        assert_eq!(c.total(), 6);
        assert_eq!(c.correct(), 3);
        assert!((c.accuracy() - 0.5).abs() < 1e-12);
        assert_eq!(c.support(), vec![2, 3, 1]);
        assert_eq!(c.per_class_accuracy(), vec![Some(0.5), Some(2.0 / 3.0), Some(0.0)]);
        assert!(c.add(3, 0).is_err());
        let mut empty = Confusion::new(2);
        empty.add_all(&[0], &[0]).unwrap();
        assert_eq!(empty.per_class_accuracy(), vec![Some(1.0), None]);
        assert_eq!(majority_accuracy(&[1, 1, 0, 2]), 0.5);
    }

    #[test]
    fn predictions_are_the_arg_max() {
        let logits = Tensor::new(&[[0.1f32, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]], &Device::Cpu).unwrap();
        assert_eq!(predictions(&logits).unwrap(), vec![1, 0, 2]);
    }
}

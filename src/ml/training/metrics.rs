//! Classification metrics: predictions, confusion counts, accuracy (overall and per class),
//! and model-size counts.

use candle_core::{Result, Tensor, D};

use super::regression;
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

    /// Matthews correlation coefficient (Gorodkin's multi-class form; for two classes the usual
    /// `(tp·tn − fp·fn) / √((tp+fp)(tp+fn)(tn+fp)(tn+fn))`): 1 perfect, 0 no better than chance,
    /// and 0 where it is undefined (all examples, or all predictions, in one class), as
    /// scikit-learn reports it.
    pub fn matthews(&self) -> f64 {
        let k = self.classes;
        let s = self.total() as f64;
        let c = self.correct() as f64;
        let t: Vec<f64> = self.support().iter().map(|&n| n as f64).collect();
        let p: Vec<f64> = (0..k)
            .map(|j| (0..k).map(|i| self.counts[i * k + j]).sum::<u64>() as f64)
            .collect();
        let tp: f64 = t.iter().zip(&p).map(|(a, b)| a * b).sum();
        let tt: f64 = t.iter().map(|a| a * a).sum();
        let pp: f64 = p.iter().map(|b| b * b).sum();
        let denominator = ((s * s - pp) * (s * s - tt)).sqrt();
        if denominator == 0.0 {
            0.0
        } else {
            (c * s - tp) / denominator
        }
    }

    /// F1 of class `positive`: the harmonic mean of its precision and recall (0 when it was
    /// never predicted and never true).
    pub fn f1(&self, positive: usize) -> f64 {
        let k = self.classes;
        if positive >= k {
            return 0.0;
        }
        let tp = self.counts[positive * k + positive] as f64;
        let predicted: u64 = (0..k).map(|i| self.counts[i * k + positive]).sum();
        let actual: u64 = self.counts[positive * k..(positive + 1) * k].iter().sum();
        let denominator = (predicted + actual) as f64;
        if denominator == 0.0 {
            0.0
        } else {
            2.0 * tp / denominator
        }
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
    /// The predicted class of every example, in batch order (for paired comparisons; empty for
    /// regression).
    pub predicted: Vec<u32>,
    /// Regression: the model's output for every example, in batch order (else empty).
    pub outputs: Vec<f32>,
    /// Regression: the targets, in the same order (else empty).
    pub targets: Vec<f32>,
}

impl Evaluation {
    /// Examples evaluated.
    pub fn examples(&self) -> usize {
        if self.targets.is_empty() {
            self.confusion.total() as usize
        } else {
            self.targets.len()
        }
    }

    /// Whether the labels were regression targets.
    pub fn is_regression(&self) -> bool {
        !self.targets.is_empty()
    }

    /// Pearson correlation of outputs and targets (regression; 0 for classification).
    pub fn pearson(&self) -> f64 {
        let (x, y) = self.pairs();
        regression::pearson(&x, &y)
    }

    /// Spearman correlation of outputs and targets (regression; 0 for classification).
    pub fn spearman(&self) -> f64 {
        let (x, y) = self.pairs();
        regression::spearman(&x, &y)
    }

    fn pairs(&self) -> (Vec<f64>, Vec<f64>) {
        let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect();
        (f(&self.outputs), f(&self.targets))
    }

    /// What the best epoch is chosen by: accuracy, or for regression Pearson correlation.
    pub fn score(&self) -> f64 {
        if self.is_regression() {
            self.pearson()
        } else {
            self.confusion.accuracy()
        }
    }

    /// Puts the per-example results into example order, where the `k`-th result so far is
    /// example `order[k]`'s (batches in length buckets come in another order).
    pub fn into_example_order(&mut self, order: &[usize]) -> Result<()> {
        fn permute<T: Copy + Default>(v: &mut Vec<T>, order: &[usize]) -> Result<()> {
            if v.is_empty() {
                return Ok(());
            }
            if v.len() != order.len() {
                candle_core::bail!("{} results for {} examples", v.len(), order.len())
            }
            let mut out = vec![T::default(); v.len()];
            for (&value, &at) in v.iter().zip(order) {
                *out.get_mut(at)
                    .ok_or_else(|| candle_core::Error::Msg(format!("example {at} out of range")))? = value;
            }
            *v = out;
            Ok(())
        }
        permute(&mut self.predicted, order)?;
        permute(&mut self.outputs, order)?;
        permute(&mut self.targets, order)
    }

    /// Adds another evaluation's examples (the mean loss weighted by examples).
    pub fn merge(&mut self, other: Evaluation) -> Result<()> {
        let (a, b) = (self.examples() as f64, other.examples() as f64);
        if a + b > 0.0 {
            self.loss = (self.loss * a + other.loss * b) / (a + b);
        }
        self.confusion.merge(&other.confusion)?;
        self.predicted.extend(other.predicted);
        self.outputs.extend(other.outputs);
        self.targets.extend(other.targets);
        Ok(())
    }
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
    let (mut outputs, mut targets) = (Vec::new(), Vec::new());
    let mut n = 0usize;
    for (input, labels) in batches {
        let out = model.forward(input, &mut ForwardCtx::eval().logits_only())?;
        let b = labels.dim(0)?;
        let loss = regression::supervised_loss(&out.logits, labels)?.to_scalar::<f32>()? as f64;
        loss_sum += loss * b as f64;
        n += b;
        if regression::is_regression(labels) {
            outputs.extend(
                regression::outputs(&out.logits)?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?,
            );
            targets.extend(labels.to_vec1::<f32>()?);
        } else {
            let p = predictions(&out.logits)?;
            confusion.add_all(&labels.to_vec1::<u32>()?, &p)?;
            predicted.extend(p);
        }
    }
    Ok(Evaluation {
        confusion,
        loss: loss_sum / n.max(1) as f64,
        predicted,
        outputs,
        targets,
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
    fn matthews_and_f1_match_hand_computed_values() {
        // Two classes: tp 3, fn 1, fp 2, tn 4 (truth 1 is positive).
        let mut c = Confusion::new(2);
        let truth = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0];
        let pred = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0];
        c.add_all(&truth, &pred).unwrap();
        // (3·4 − 2·1) / √(5·4·6·5) = 10 / √600
        assert!((c.matthews() - 10.0 / 600f64.sqrt()).abs() < 1e-12, "{}", c.matthews());
        // precision 3/5, recall 3/4: F1 = 2·3 / (5 + 4) = 2/3
        assert!((c.f1(1) - 2.0 / 3.0).abs() < 1e-12);
        // All predictions in one class: MCC undefined, reported as 0 (scikit-learn's convention).
        let mut one = Confusion::new(2);
        one.add_all(&[0, 1, 1], &[1, 1, 1]).unwrap();
        assert_eq!(one.matthews(), 0.0);
        // Perfect and inverted.
        let mut perfect = Confusion::new(3);
        perfect.add_all(&[0, 1, 2, 2], &[0, 1, 2, 2]).unwrap();
        assert!((perfect.matthews() - 1.0).abs() < 1e-12);
        let mut inverted = Confusion::new(2);
        inverted.add_all(&[0, 0, 1, 1], &[1, 1, 0, 0]).unwrap();
        assert!((inverted.matthews() + 1.0).abs() < 1e-12);
        // Multi-class (Gorodkin): truth [0,0,1,1,2,2], predicted [0,1,1,1,2,0]:
        // s = 6, c = 4, t = (2,2,2), p = (2,3,1), t·p = 12: (4·6 − 12) / √((36 − 14)(36 − 12)) = 12 / √528.
        let mut multi = Confusion::new(3);
        multi.add_all(&[0, 0, 1, 1, 2, 2], &[0, 1, 1, 1, 2, 0]).unwrap();
        assert!((multi.matthews() - 12.0 / 528f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn predictions_are_the_arg_max() {
        let logits = Tensor::new(&[[0.1f32, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]], &Device::Cpu).unwrap();
        assert_eq!(predictions(&logits).unwrap(), vec![1, 0, 2]);
    }
}

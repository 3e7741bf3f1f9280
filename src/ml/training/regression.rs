//! Regression (GLUE's STS-B: a similarity score): the loss of a one-output model against f32
//! targets, and the correlations it is scored by.
//!
//! A batch's labels say which task it is: u32 class ids (classification, cross-entropy) or f32
//! targets (regression, mean squared error of the model's single output), so every training
//! loop, evaluation and distillation loss picks its loss from the labels alone.

use candle_core::{DType, Result, Tensor};

/// Whether a batch's labels are regression targets (f32) rather than class ids.
pub fn is_regression(labels: &Tensor) -> bool {
    labels.dtype() == DType::F32
}

/// The model's outputs as one value per example (`[batch, 1]` logits → `[batch]`).
pub fn outputs(logits: &Tensor) -> Result<Tensor> {
    let (_, width) = logits.dims2()?;
    if width != 1 {
        candle_core::bail!("a regression model has one output, this one has {width}")
    }
    logits.squeeze(1)
}

/// Mean squared error between two `[batch]` tensors (the gradient flows into `prediction`).
pub fn mse(prediction: &Tensor, target: &Tensor) -> Result<Tensor> {
    (prediction - target)?.sqr()?.mean_all()
}

/// The supervised loss of a batch: cross-entropy against class ids, or the mean squared error
/// of the single output against f32 targets.
pub fn supervised_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    if is_regression(labels) {
        mse(&outputs(logits)?, labels)
    } else {
        candle_nn::loss::cross_entropy(logits, labels)
    }
}

/// Pearson's correlation of two equally long series (0 when either is constant or empty).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n == 0 {
        return 0.0;
    }
    let mean = |v: &[f64]| v[..n].iter().sum::<f64>() / n as f64;
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (x[i] - mx, y[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks from 1, ties sharing the mean of their ranks (as SciPy's `rankdata`).
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Spearman's rank correlation: Pearson's on the ranks (ties averaged).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn correlations_match_hand_computed_values() {
        // x = 1..5, y = (2, 1, 4, 3, 5): Σdx·dy = 8, Σdx² = Σdy² = 10 → 0.8.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 1.0, 4.0, 3.0, 5.0];
        assert!((pearson(&x, &y) - 0.8).abs() < 1e-12);
        // Monotone but not linear: Spearman 1, Pearson below.
        let cubes = [1.0, 8.0, 27.0, 64.0, 125.0];
        assert!((spearman(&x, &cubes) - 1.0).abs() < 1e-12);
        assert!(pearson(&x, &cubes) < 0.95);
        // Ties share their mean rank: (1, 2, 2, 3) → ranks (1, 2.5, 2.5, 4).
        assert_eq!(ranks(&[1.0, 2.0, 2.0, 3.0]), [1.0, 2.5, 2.5, 4.0]);
        // Spearman with ties against y = (1, 2, 3, 4): Pearson of (1, 2.5, 2.5, 4) and (1, 2, 3, 4)
        // = 4.5 / √(4.5·5) = 0.9486832980505138.
        assert!((spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]) - 0.9486832980505138).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
    }

    #[test]
    fn the_labels_pick_the_loss() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1.0f32], [3.0]], &dev).unwrap();
        let targets = Tensor::new(&[2.0f32, 2.0], &dev).unwrap();
        let l = supervised_loss(&logits, &targets).unwrap().to_scalar::<f32>().unwrap();
        assert!((l - 1.0).abs() < 1e-6);
        let two = Tensor::new(&[[0.0f32, 0.0], [0.0, 0.0]], &dev).unwrap();
        let ids = Tensor::new(&[0u32, 1], &dev).unwrap();
        let ce = supervised_loss(&two, &ids).unwrap().to_scalar::<f32>().unwrap();
        assert!((ce - std::f32::consts::LN_2).abs() < 1e-6);
        assert!(supervised_loss(&two, &targets).is_err());
    }
}

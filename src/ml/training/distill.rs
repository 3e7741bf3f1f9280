//! Knowledge-distillation losses: Hinton's soft-target loss, multi-teacher fusion and the
//! TinyBERT intermediate-layer losses.
//!
//! The prediction loss is `alpha·CE(z_s, y) + (1 − alpha)·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))`
//! with the KL summed over classes and averaged over the batch (PyTorch's `batchmean`);
//! `t2_scale: false` drops the T² factor (the TextBrewer convention). Teachers are constants:
//! their logits arrive as plain numbers (stored predictions, or a forward pass on detached
//! weights), so no gradient flows into them.

use candle_core::{DType, Device, Result, Tensor, D};

/// The prediction-loss settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KdConfig {
    /// Softmax temperature T of the soft targets (and of the student in the soft term).
    pub temperature: f64,
    /// Weight of the hard-label cross-entropy; the soft term gets `1 − alpha`.
    pub alpha: f64,
    /// Multiply the soft term by T² (Hinton; keeps its gradients' scale independent of T).
    pub t2_scale: bool,
}

impl Default for KdConfig {
    fn default() -> Self {
        Self {
            temperature: 4.0,
            alpha: 0.5,
            t2_scale: true,
        }
    }
}

/// The parts of a distillation loss (scalar tensors; `total` carries the gradient).
#[derive(Debug, Clone)]
pub struct KdLoss {
    /// What is minimised: the weighted prediction terms plus any intermediate terms.
    pub total: Tensor,
    /// Cross-entropy against the labels (unweighted).
    pub hard: f64,
    /// `KL(teacher ‖ student)` at temperature T, batch mean (unweighted, without T²).
    pub soft: f64,
}

/// `KL(softmax(teacher/T) ‖ softmax(student/T))`, summed over classes and averaged over the
/// batch. `teacher` holds constants (`[batch, classes]`); the gradient flows into `student`.
pub fn soft_kl(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let batch = student.dim(0)? as f64;
    let log_q = candle_nn::ops::log_softmax(&(student / temperature)?, D::Minus1)?;
    let log_p = candle_nn::ops::log_softmax(&(teacher.detach() / temperature)?, D::Minus1)?;
    let p = log_p.exp()?;
    // Σ p·(log p − log q): the p·log p part is a constant that makes the value a true KL
    // (zero when the distributions agree).
    let kl = (&p * (log_p - log_q)?)?.sum_all()?;
    kl / batch
}

/// The prediction loss of a batch: `alpha·CE + (1 − alpha)·[T²]·KL`. Terms whose weight is zero
/// are reported but left out of the graph.
///
/// For regression (f32 `labels`, one output) the terms are mean squared errors, against the
/// labels and against the teacher's output, and the temperature plays no part.
pub fn kd_loss(student: &Tensor, labels: &Tensor, teacher: &Tensor, cfg: &KdConfig) -> Result<KdLoss> {
    use super::regression::{is_regression, mse, outputs, supervised_loss};
    let hard = supervised_loss(student, labels)?;
    let regression = is_regression(labels);
    let soft = if regression {
        mse(&outputs(student)?, &outputs(&teacher.detach())?)?
    } else {
        soft_kl(student, teacher, cfg.temperature)?
    };
    let scale = if cfg.t2_scale && !regression {
        cfg.temperature * cfg.temperature
    } else {
        1.0
    };
    let total = match (cfg.alpha > 0.0, cfg.alpha < 1.0) {
        (true, true) => ((&hard * cfg.alpha)? + (&soft * ((1.0 - cfg.alpha) * scale))?)?,
        (true, false) => hard.clone(),
        (false, _) => (&soft * scale)?,
    };
    Ok(KdLoss {
        total,
        hard: scalar(&hard)?,
        soft: scalar(&soft)?,
    })
}

/// A scalar tensor's value as f64.
pub fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

crate::keywords! {
    /// How several teachers' logits are combined, as written in `fusion:` ([`Fusion`] adds the weights).
    pub enum FusionKind {
        /// The plain average.
        Mean = "mean",
        /// Fixed weights, one per teacher.
        Weighted = "weighted",
        /// Per example, by each teacher's confidence in the label.
        Confidence = "confidence",
    }
}

/// How several teachers' logits are combined into one target per example.
#[derive(Debug, Clone, PartialEq)]
pub enum Fusion {
    /// The plain average of the teachers' logits.
    Mean,
    /// Fixed weights (one per teacher, summing to 1).
    Weighted(Vec<f64>),
    /// Per example, teacher k gets `(1 − softmax_k(CE_k)) / (K − 1)`, where `CE_k` is its
    /// cross-entropy on the label: the more confident a teacher is in the right class, the
    /// more it counts (CA-MKD).
    Confidence,
}

/// The weight of each teacher for one example, given each teacher's logits and the label.
/// The weights are non-negative and sum to 1.
pub fn fusion_weights(fusion: &Fusion, logits: &[&[f32]], label: usize) -> Vec<f64> {
    let k = logits.len();
    match fusion {
        Fusion::Mean => vec![1.0 / k as f64; k],
        Fusion::Weighted(w) => w.clone(),
        Fusion::Confidence if k == 1 => vec![1.0],
        Fusion::Confidence => {
            let ce: Vec<f64> = logits.iter().map(|z| cross_entropy_one(z, label)).collect();
            let s = softmax_f64(&ce);
            s.iter().map(|s| (1.0 - s) / (k - 1) as f64).collect()
        }
    }
}

/// Fuses the teachers' logits of a batch: `teachers[k][i]` is teacher k's logits for example i.
/// Returns the fused logits `[batch, classes]` and each example's teacher weights.
pub fn fuse_batch(
    fusion: &Fusion,
    teachers: &[Vec<&[f32]>],
    labels: &[u32],
    device: &Device,
) -> Result<(Tensor, Vec<Vec<f64>>)> {
    let batch = labels.len();
    let classes = teachers.first().and_then(|t| t.first()).map_or(0, |z| z.len());
    let mut fused = Vec::with_capacity(batch * classes);
    let mut weights = Vec::with_capacity(batch);
    for (i, &label) in labels.iter().enumerate() {
        let row: Vec<&[f32]> = teachers.iter().map(|t| t[i]).collect();
        let w = fusion_weights(fusion, &row, label as usize);
        for c in 0..classes {
            fused.push(row.iter().zip(&w).map(|(z, w)| w * z[c] as f64).sum::<f64>() as f32);
        }
        weights.push(w);
    }
    Ok((Tensor::from_vec(fused, (batch, classes), device)?, weights))
}

fn cross_entropy_one(logits: &[f32], label: usize) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64));
    let lse = max + logits.iter().map(|&z| (z as f64 - max).exp()).sum::<f64>().ln();
    lse - logits.get(label).copied().unwrap_or(f32::NAN) as f64
}

fn softmax_f64(x: &[f64]) -> Vec<f64> {
    let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// TinyBERT's uniform layer map: student layer `m` (0-based) learns from teacher layer
/// `(m + 1)·k − 1` with `k = teacher_layers / student_layers` (rounded down).
pub fn uniform_layer_map(student_layers: usize, teacher_layers: usize) -> Result<Vec<usize>> {
    if student_layers > teacher_layers {
        candle_core::bail!(
            "the student has more layers ({student_layers}) than the teacher ({teacher_layers}): \
             give an explicit `map:` of teacher layers"
        );
    }
    let k = teacher_layers / student_layers.max(1);
    Ok((0..student_layers).map(|m| (m + 1) * k - 1).collect())
}

/// Mean squared error between two tensors of one shape (`target` is a constant).
pub fn mse(x: &Tensor, target: &Tensor) -> Result<Tensor> {
    (x - target.detach())?.sqr()?.mean_all()
}

/// TinyBERT's hidden-state loss, summed over the mapped layers: the embedding outputs
/// (`hidden[0]`) and each student layer's output against its teacher layer's, through
/// `project` when the widths differ.
pub fn hidden_loss(
    student: &[Tensor],
    teacher: &[Tensor],
    map: &[usize],
    project: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut total = mse(&project(&student[0])?, &teacher[0])?;
    for (m, &t) in map.iter().enumerate() {
        total = (total + mse(&project(&student[m + 1])?, &teacher[t + 1])?)?;
    }
    Ok(total)
}

/// TinyBERT's attention loss, summed over the mapped layers: MSE between the student's and
/// the teacher's pre-softmax attention scores, with padded key positions set to zero in both
/// (`key_mask`: `[batch, seq]`, 1 = token, 0 = padding).
pub fn attention_loss(
    student: &[Tensor],
    teacher: &[Tensor],
    map: &[usize],
    key_mask: Option<&Tensor>,
) -> Result<Tensor> {
    let mask = match key_mask {
        Some(m) => {
            let (b, s) = m.dims2()?;
            Some(m.to_dtype(DType::F32)?.reshape((b, 1, 1, s))?)
        }
        None => None,
    };
    let masked = |t: &Tensor| -> Result<Tensor> {
        match &mask {
            Some(m) => t.broadcast_mul(m),
            None => Ok(t.clone()),
        }
    };
    let mut total: Option<Tensor> = None;
    for (m, &t) in map.iter().enumerate() {
        let term = mse(&masked(&student[m])?, &masked(&teacher[t])?)?;
        total = Some(match total {
            Some(acc) => (acc + term)?,
            None => term,
        });
    }
    match total {
        Some(t) => Ok(t),
        None => Tensor::new(0f32, student.first().map_or(&Device::Cpu, |t| t.device())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[&[f32]]) -> Tensor {
        let cols = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), cols), &Device::Cpu).unwrap()
    }

    fn labels(l: &[u32]) -> Tensor {
        Tensor::new(l, &Device::Cpu).unwrap()
    }

    #[test]
    fn uniform_logits_give_zero_kl() {
        let s = t(&[&[0.0, 0.0, 0.0], &[1.0, 1.0, 1.0]]);
        let z = t(&[&[5.0, 5.0, 5.0], &[-2.0, -2.0, -2.0]]);
        let kl = scalar(&soft_kl(&s, &z, 4.0).unwrap()).unwrap();
        assert!(kl.abs() < 1e-7, "{kl}");
        // Identical logits at any temperature: zero too.
        let a = t(&[&[1.0, -3.0, 0.5]]);
        assert!(scalar(&soft_kl(&a, &a, 2.0).unwrap()).unwrap().abs() < 1e-7);
    }

    #[test]
    fn two_class_kl_by_hand_with_and_without_t_squared() {
        // Teacher logits (2, 0), student logits (0, 0), T = 2:
        // p = softmax(1, 0) = (e/(e+1), 1/(e+1)) = (0.7310586, 0.2689414); q = (0.5, 0.5).
        // KL = 0.7310586·ln(1.4621172) + 0.2689414·ln(0.5378828) = 0.2777185 − 0.1667745 = 0.1109441.
        let e = std::f64::consts::E;
        let p1 = e / (e + 1.0);
        let kl_hand = p1 * (2.0 * p1).ln() + (1.0 - p1) * (2.0 * (1.0 - p1)).ln();
        assert!((kl_hand - 0.110_944_1).abs() < 1e-6);
        let student = t(&[&[0.0, 0.0]]);
        let teacher = t(&[&[2.0, 0.0]]);
        let y = labels(&[0]);
        // CE of (0, 0) against class 0 = ln 2.
        let ln2 = std::f64::consts::LN_2;
        let with = kd_loss(
            &student,
            &y,
            &teacher,
            &KdConfig {
                temperature: 2.0,
                alpha: 0.25,
                t2_scale: true,
            },
        )
        .unwrap();
        assert!((with.soft - kl_hand).abs() < 1e-6);
        assert!((with.hard - ln2).abs() < 1e-6);
        let total = scalar(&with.total).unwrap();
        assert!((total - (0.25 * ln2 + 0.75 * 4.0 * kl_hand)).abs() < 1e-5, "{total}");
        let without = kd_loss(
            &student,
            &y,
            &teacher,
            &KdConfig {
                temperature: 2.0,
                alpha: 0.25,
                t2_scale: false,
            },
        )
        .unwrap();
        let total = scalar(&without.total).unwrap();
        assert!((total - (0.25 * ln2 + 0.75 * kl_hand)).abs() < 1e-6, "{total}");
        // alpha = 1: plain cross-entropy; alpha = 0: the soft term only.
        let ce = kd_loss(
            &student,
            &y,
            &teacher,
            &KdConfig {
                temperature: 2.0,
                alpha: 1.0,
                t2_scale: true,
            },
        )
        .unwrap();
        assert!((scalar(&ce.total).unwrap() - ln2).abs() < 1e-6);
        let soft = kd_loss(
            &student,
            &y,
            &teacher,
            &KdConfig {
                temperature: 2.0,
                alpha: 0.0,
                t2_scale: true,
            },
        )
        .unwrap();
        assert!((scalar(&soft.total).unwrap() - 4.0 * kl_hand).abs() < 1e-5);
    }

    #[test]
    fn kl_is_averaged_over_the_batch_and_summed_over_classes() {
        // Two copies of one example give the same value as one.
        let one = soft_kl(&t(&[&[0.3, -1.0, 2.0]]), &t(&[&[1.0, 0.0, -1.0]]), 1.0).unwrap();
        let two = soft_kl(
            &t(&[&[0.3, -1.0, 2.0], &[0.3, -1.0, 2.0]]),
            &t(&[&[1.0, 0.0, -1.0], &[1.0, 0.0, -1.0]]),
            1.0,
        )
        .unwrap();
        assert!((scalar(&one).unwrap() - scalar(&two).unwrap()).abs() < 1e-7);
    }

    #[test]
    fn the_gradient_reaches_the_student_and_vanishes_at_the_teacher() {
        let v = candle_core::Var::from_tensor(&t(&[&[0.0, 0.0]])).unwrap();
        let teacher = t(&[&[2.0, 0.0]]);
        let kl = soft_kl(v.as_tensor(), &teacher, 1.0).unwrap();
        let g = kl.backward().unwrap();
        let grad = g.get(v.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        // d KL / d z_s = (q − p)/T: q = (0.5, 0.5), p = (0.8808, 0.1192).
        assert!((grad[0][0] - (0.5 - 0.880_797)).abs() < 1e-5, "{grad:?}");
        assert!((grad[0][1] - (0.5 - 0.119_203)).abs() < 1e-5, "{grad:?}");
        let at_teacher = candle_core::Var::from_tensor(&teacher).unwrap();
        let g = soft_kl(at_teacher.as_tensor(), &teacher, 3.0)
            .unwrap()
            .backward()
            .unwrap();
        let grad = g.get(at_teacher.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert!(grad[0].iter().all(|x| x.abs() < 1e-7), "{grad:?}");
    }

    #[test]
    fn fusion_weights_for_a_hand_made_batch() {
        // Two teachers, label 0. Teacher A logits (2, 0): CE = ln(1 + e^-2) = 0.126928;
        // teacher B (0, 0): CE = ln 2 = 0.693147. softmax(CE) = (0.362110, 0.637890).
        // With K = 2, weight_k = 1 − softmax_k: A 0.637890, B 0.362110 (the confident teacher counts more).
        let a: &[f32] = &[2.0, 0.0];
        let b: &[f32] = &[0.0, 0.0];
        let w = fusion_weights(&Fusion::Confidence, &[a, b], 0);
        let ce_a = (1.0 + (-2.0f64).exp()).ln();
        let ce_b = std::f64::consts::LN_2;
        let sa = ce_a.exp() / (ce_a.exp() + ce_b.exp());
        assert!((w[0] - (1.0 - sa)).abs() < 1e-9 && (w[1] - sa).abs() < 1e-9, "{w:?}");
        assert!((w[0] - 0.637_890).abs() < 1e-5, "{w:?}");
        // Label 1: teacher A is confidently wrong, so B counts more.
        let w1 = fusion_weights(&Fusion::Confidence, &[a, b], 1);
        assert!(w1[1] > w1[0], "{w1:?}");
        // Three teachers: the weights still sum to 1.
        let c: &[f32] = &[-1.0, 1.0];
        let w3 = fusion_weights(&Fusion::Confidence, &[a, b, c], 0);
        assert!(
            (w3.iter().sum::<f64>() - 1.0).abs() < 1e-12 && w3[0] > w3[1] && w3[1] > w3[2],
            "{w3:?}"
        );
        assert_eq!(fusion_weights(&Fusion::Mean, &[a, b], 0), vec![0.5, 0.5]);
        assert_eq!(
            fusion_weights(&Fusion::Weighted(vec![0.7, 0.3]), &[a, b], 1),
            vec![0.7, 0.3]
        );
        assert_eq!(fusion_weights(&Fusion::Confidence, &[a], 1), vec![1.0]);
    }

    #[test]
    fn fused_logits_are_the_weighted_sum() {
        let a: Vec<&[f32]> = vec![&[2.0, 0.0], &[1.0, 1.0]];
        let b: Vec<&[f32]> = vec![&[0.0, 4.0], &[3.0, -1.0]];
        let (fused, w) = fuse_batch(
            &Fusion::Weighted(vec![0.75, 0.25]),
            &[a.clone(), b.clone()],
            &[0, 1],
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(fused.to_vec2::<f32>().unwrap(), vec![vec![1.5, 1.0], vec![1.5, 0.5]]);
        assert_eq!(w, vec![vec![0.75, 0.25], vec![0.75, 0.25]]);
        let (mean, _) = fuse_batch(&Fusion::Mean, &[a, b], &[0, 1], &Device::Cpu).unwrap();
        assert_eq!(mean.to_vec2::<f32>().unwrap(), vec![vec![1.0, 2.0], vec![2.0, 0.0]]);
    }

    #[test]
    fn uniform_layer_map_follows_tinybert() {
        // 4-layer student, 12-layer teacher: teacher layers 3, 6, 9, 12 (1-based).
        assert_eq!(uniform_layer_map(4, 12).unwrap(), vec![2, 5, 8, 11]);
        assert_eq!(uniform_layer_map(3, 6).unwrap(), vec![1, 3, 5]);
        assert_eq!(uniform_layer_map(2, 2).unwrap(), vec![0, 1]);
        assert!(uniform_layer_map(4, 2)
            .unwrap_err()
            .to_string()
            .contains("explicit `map:`"));
    }

    #[test]
    fn intermediate_losses_are_zero_for_identical_states_and_ignore_padding() {
        let dev = Device::Cpu;
        let h: Vec<Tensor> = (0..3)
            .map(|i| Tensor::full(i as f32, (2, 4, 8), &dev).unwrap())
            .collect();
        let id = |x: &Tensor| Ok(x.clone());
        assert_eq!(scalar(&hidden_loss(&h, &h, &[0, 1], &id).unwrap()).unwrap(), 0.0);
        // Student layer 0 against teacher layer 1 (value 2 vs 1 → MSE 1), embeddings 0 vs 0.
        let v = scalar(&hidden_loss(&h[..2], &h, &[1], &id).unwrap()).unwrap();
        assert!((v - 1.0).abs() < 1e-6, "{v}");
        let a = Tensor::zeros((2, 2, 4, 4), DType::F32, &dev).unwrap();
        let mut b = vec![0f32; 2 * 2 * 4 * 4];
        // Differences only in the last key column, which is padding in both examples.
        for (i, x) in b.iter_mut().enumerate() {
            if i % 4 == 3 {
                *x = 9.0;
            }
        }
        let b = Tensor::from_vec(b, (2, 2, 4, 4), &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 0], [1, 1, 1, 0]], &dev).unwrap();
        let masked = attention_loss(std::slice::from_ref(&a), std::slice::from_ref(&b), &[0], Some(&mask)).unwrap();
        assert_eq!(scalar(&masked).unwrap(), 0.0);
        let unmasked = scalar(&attention_loss(&[a], &[b], &[0], None).unwrap()).unwrap();
        assert!((unmasked - 81.0 / 4.0).abs() < 1e-4, "{unmasked}");
    }
}

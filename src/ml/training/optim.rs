//! AdamW with decoupled weight decay (as `torch.optim.AdamW`) and global-norm gradient clipping
//! (as `torch.nn.utils.clip_grad_norm_`).
//!
//! candle-nn's `AdamW` has one weight decay for every variable, no clipping, and spends most of a
//! small model's step in a dozen allocating tensor ops per variable. This one keeps the moment
//! estimates as plain `f32` buffers and updates each f32 CPU variable in place in one fused pass
//! (variables in parallel on the current rayon pool; each variable's arithmetic is sequential,
//! so the result does not depend on the thread count). Other devices and dtypes take a path made
//! of ordinary tensor ops with the same arithmetic.
//!
//! Weight decay is not applied to biases and LayerNorm weights ([`decays`]), as the
//! Hugging Face `Trainer` does.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};
use rayon::prelude::*;

/// AdamW hyper-parameters (PyTorch's defaults except the learning rate, which is set per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first-moment estimate.
    pub beta1: f64,
    /// Decay of the second-moment estimate.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (applied as `p -= lr * wd * p`), for the variables that decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Whether a variable gets weight decay: not biases, not LayerNorm parameters.
pub fn decays(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !(lower.ends_with("bias") || lower.contains("layernorm") || lower.contains("layer_norm"))
}

enum Moments {
    /// Fused in-place path: f32 variable on the CPU.
    Cpu { m: Vec<f32>, v: Vec<f32> },
    /// Tensor-op path for other devices or dtypes.
    Tensors { m: Tensor, v: Tensor },
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    moments: Moments,
}

/// AdamW over a fixed list of named variables.
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    slots: Vec<Slot>,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("config", &self.config)
            .field("step", &self.step)
            .field("vars", &self.slots.len())
            .finish()
    }
}

fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

impl AdamW {
    /// An optimiser for `vars` (name, variable), moments at zero.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let moments = if is_cpu_f32(var.as_tensor()) {
                    let n = var.elem_count();
                    Moments::Cpu {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    Moments::Tensors {
                        m: var.zeros_like()?,
                        v: var.zeros_like()?,
                    }
                };
                Ok(Slot {
                    decay: decays(&name),
                    name,
                    var,
                    moments,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config, step: 0, slots })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Sets the learning rate for the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Optimiser steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Names of the variables that get weight decay, in order.
    pub fn decayed_names(&self) -> Vec<&str> {
        self.slots.iter().filter(|s| s.decay).map(|s| s.name.as_str()).collect()
    }

    /// The moment estimates of every variable, by name: `(name, first, second)` as tensors on
    /// the variable's device (what a training checkpoint saves).
    pub fn moments(&self) -> Result<Vec<(String, Tensor, Tensor)>> {
        self.slots
            .iter()
            .map(|s| {
                let (m, v) = match &s.moments {
                    Moments::Cpu { m, v } => {
                        let shape = s.var.shape();
                        (
                            Tensor::from_slice(m, shape, &candle_core::Device::Cpu)?,
                            Tensor::from_slice(v, shape, &candle_core::Device::Cpu)?,
                        )
                    }
                    Moments::Tensors { m, v } => (m.clone(), v.clone()),
                };
                Ok((s.name.clone(), m, v))
            })
            .collect()
    }

    /// Restores a saved state: the steps taken and every variable's moments (`moments(name)`
    /// gives a variable's first and second moments). Fails when a variable is missing or its
    /// shape differs, leaving nothing half-restored that a caller would trust.
    pub fn restore(&mut self, steps: u64, moments: impl Fn(&str) -> Option<(Tensor, Tensor)>) -> Result<()> {
        let mut restored = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let Some((m, v)) = moments(&s.name) else {
                candle_core::bail!("the checkpoint has no optimizer state for `{}`", s.name)
            };
            if m.shape() != s.var.shape() || v.shape() != s.var.shape() {
                candle_core::bail!(
                    "the checkpoint's optimizer state for `{}` has shape {:?}, the variable {:?}",
                    s.name,
                    m.dims(),
                    s.var.dims()
                )
            }
            restored.push(match &s.moments {
                Moments::Cpu { .. } => Moments::Cpu {
                    m: m.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                    v: v.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                },
                Moments::Tensors { .. } => Moments::Tensors {
                    m: m.to_device(s.var.device())?.to_dtype(s.var.dtype())?,
                    v: v.to_device(s.var.device())?.to_dtype(s.var.dtype())?,
                },
            });
        }
        for (slot, moments) in self.slots.iter_mut().zip(restored) {
            slot.moments = moments;
        }
        self.step = steps;
        Ok(())
    }

    /// The global L2 norm of the gradients of this optimiser's variables (those without a
    /// gradient count as zero), accumulated in f64 in variable order.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let sums = self
            .slots
            .par_iter()
            .map(|s| match grads.get(s.var.as_tensor()) {
                Some(g) => sum_of_squares(g),
                None => Ok(0.0),
            })
            .collect::<Result<Vec<f64>>>()?;
        Ok(sums.iter().sum::<f64>().sqrt())
    }

    /// One AdamW step from `grads`, each gradient multiplied by `grad_scale` first (the clipping
    /// factor, 1.0 for none). Variables without a gradient are left alone (as in PyTorch).
    pub fn step(&mut self, grads: &GradStore, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let scalars = StepScalars {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            bias_correction1: 1.0 - c.beta1.powi(t),
            bias_correction2: 1.0 - c.beta2.powi(t),
            grad_scale,
        };
        self.slots.par_iter_mut().try_for_each(|slot| {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                return Ok(());
            };
            let wd = if slot.decay { scalars.weight_decay } else { 0.0 };
            match &mut slot.moments {
                Moments::Cpu { m, v } => {
                    let g = g.contiguous()?;
                    let op = FusedUpdate {
                        s: &scalars,
                        weight_decay: wd,
                        m: std::cell::RefCell::new(m),
                        v: std::cell::RefCell::new(v),
                    };
                    slot.var.as_tensor().inplace_op2(&g, &op)
                }
                Moments::Tensors { m, v } => tensor_update(&slot.var, g, m, v, &scalars, wd),
            }
        })
    }
}

/// Scale factor that brings a gradient of global norm `norm` to at most `max_norm`
/// (`max_norm / (norm + 1e-6)`, at most 1), as `torch.nn.utils.clip_grad_norm_`.
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

fn sum_of_squares(g: &Tensor) -> Result<f64> {
    if is_cpu_f32(g) {
        let g = g.contiguous()?;
        let locked = crate::ml::kernels::fused::locked(&g);
        let slice = locked.values("gradient norm")?;
        // Fixed chunks, summed in order: the same total on any thread count.
        let partial: Vec<f64> = slice
            .par_chunks(UPDATE_CHUNK)
            .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum())
            .collect();
        Ok(partial.iter().sum())
    } else {
        g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()
    }
}

/// Elements per parallel task of the update and of the gradient norm.
const UPDATE_CHUNK: usize = 1 << 15;

struct StepScalars {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    bias_correction1: f64,
    bias_correction2: f64,
    grad_scale: f64,
}

struct FusedUpdate<'a> {
    s: &'a StepScalars,
    weight_decay: f64,
    m: std::cell::RefCell<&'a mut Vec<f32>>,
    v: std::cell::RefCell<&'a mut Vec<f32>>,
}

impl InplaceOp2 for FusedUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("adamw: expected f32 variable and gradient")
        };
        let ((pa, pb), (ga, gb)) = match (l1.contiguous_offsets(), l2.contiguous_offsets()) {
            (Some(x), Some(y)) => (x, y),
            _ => candle_core::bail!("adamw: variable or gradient is not contiguous"),
        };
        let p = &mut p[pa..pb];
        let g = &g[ga..gb];
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        if p.len() != g.len() || p.len() != m.len() {
            candle_core::bail!("adamw: size mismatch ({} / {} / {})", p.len(), g.len(), m.len())
        }
        let s = self.s;
        // PyTorch's single-tensor AdamW: scalars in f64, element arithmetic in f32.
        let decay = (1.0 - s.lr * self.weight_decay) as f32;
        let b2 = s.beta2 as f32;
        let one_minus_b1 = (1.0 - s.beta1) as f32;
        let one_minus_b2 = (1.0 - s.beta2) as f32;
        let step_size = (s.lr / s.bias_correction1) as f32;
        let bc2_sqrt = s.bias_correction2.sqrt() as f32;
        let eps = s.eps as f32;
        let scale = s.grad_scale as f32;
        let unscaled = s.grad_scale == 1.0;
        // Element-wise, so fixed chunks in parallel give the same result on any thread count
        // (a large embedding matrix would otherwise keep one thread busy alone).
        p.par_chunks_mut(UPDATE_CHUNK)
            .zip(g.par_chunks(UPDATE_CHUNK))
            .zip(m.par_chunks_mut(UPDATE_CHUNK))
            .zip(v.par_chunks_mut(UPDATE_CHUNK))
            .for_each(|(((p, g), m), v)| {
                for i in 0..p.len() {
                    let gi = if unscaled { g[i] } else { g[i] * scale };
                    let pi = p[i] * decay;
                    let mi = m[i] + (gi - m[i]) * one_minus_b1;
                    let vi = v[i] * b2 + one_minus_b2 * gi * gi;
                    m[i] = mi;
                    v[i] = vi;
                    let denom = vi.sqrt() / bc2_sqrt + eps;
                    p[i] = pi - step_size * (mi / denom);
                }
            });
        Ok(())
    }
}

fn tensor_update(var: &Var, g: &Tensor, m: &mut Tensor, v: &mut Tensor, s: &StepScalars, wd: f64) -> Result<()> {
    let g = (g * s.grad_scale)?;
    let new_m = ((&*m * s.beta1)? + (&g * (1.0 - s.beta1))?)?;
    let new_v = ((&*v * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
    let denom = ((new_v.sqrt()? / s.bias_correction2.sqrt())? + s.eps)?;
    let p = (var.as_tensor() * (1.0 - s.lr * wd))?;
    let p = (p - ((&new_m / denom)? * (s.lr / s.bias_correction1))?)?;
    var.set(&p.detach())?;
    *m = new_m.detach();
    *v = new_v.detach();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(values: &[f32]) -> Var {
        Var::from_tensor(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap()
    }

    /// AdamW by hand in f64, one element at a time.
    fn reference(p0: f64, grads: &[f64], lr: f64, wd: f64) -> f64 {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            p *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let mhat = m / (1.0 - b1.powi(t));
            let vhat = v / (1.0 - b2.powi(t));
            p -= lr * mhat / (vhat.sqrt() + eps);
        }
        p
    }

    #[test]
    fn matches_a_hand_computed_adamw() {
        // loss = sum(c * p) so that the gradient is c, a constant we know.
        let w = var(&[1.0, -2.0, 0.5]);
        let b = var(&[0.25, 3.0]);
        let cw = [0.3f32, -1.5, 2.0];
        let cb = [-0.7f32, 0.01];
        let lr = 0.01;
        let wd = 0.1;
        let mut opt = AdamW::new(
            vec![("layer.weight".into(), w.clone()), ("layer.bias".into(), b.clone())],
            AdamWConfig {
                lr,
                weight_decay: wd,
                ..AdamWConfig::default()
            },
        )
        .unwrap();
        assert_eq!(opt.decayed_names(), vec!["layer.weight"]);
        for _ in 0..3 {
            let loss = (w.as_tensor() * Tensor::new(&cw, &Device::Cpu).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .add(
                    &(b.as_tensor() * Tensor::new(&cb, &Device::Cpu).unwrap())
                        .unwrap()
                        .sum_all()
                        .unwrap(),
                )
                .unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, 1.0).unwrap();
        }
        let got_w = w.as_tensor().to_vec1::<f32>().unwrap();
        let got_b = b.as_tensor().to_vec1::<f32>().unwrap();
        for (i, p0) in [1.0, -2.0, 0.5].iter().enumerate() {
            let want = reference(*p0, &[cw[i] as f64; 3], lr, wd);
            assert!((got_w[i] as f64 - want).abs() < 1e-6, "w[{i}]: {} vs {want}", got_w[i]);
        }
        for (i, p0) in [0.25, 3.0].iter().enumerate() {
            // Biases get no weight decay.
            let want = reference(*p0, &[cb[i] as f64; 3], lr, 0.0);
            assert!((got_b[i] as f64 - want).abs() < 1e-6, "b[{i}]: {} vs {want}", got_b[i]);
        }
        assert_eq!(opt.steps(), 3);
    }

    #[test]
    fn fused_and_tensor_paths_agree() {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..64).map(|i| ((i * 37 % 17) as f32 - 8.0) / 5.0).collect();
        let coef: Vec<f32> = (0..64).map(|i| ((i * 11 % 13) as f32 - 6.0) / 3.0).collect();
        let run = |fused: bool| {
            let v = var(&init);
            let mut opt = AdamW::new(vec![("w".into(), v.clone())], AdamWConfig::default()).unwrap();
            if !fused {
                for s in &mut opt.slots {
                    s.moments = Moments::Tensors {
                        m: s.var.zeros_like().unwrap(),
                        v: s.var.zeros_like().unwrap(),
                    };
                }
            }
            let c = Tensor::new(coef.as_slice(), &dev).unwrap();
            for _ in 0..4 {
                // Quadratic loss: the gradient depends on the current values.
                let loss = (v.as_tensor() * &c).unwrap().sqr().unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                let scale = clip_scale(opt.grad_norm(&grads).unwrap(), 1.0);
                opt.step(&grads, scale).unwrap();
            }
            v.as_tensor().to_vec1::<f32>().unwrap()
        };
        let a = run(true);
        let b = run(false);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let w = var(&[0.0, 0.0]);
        let opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default()).unwrap();
        let c = Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap();
        let grads = (w.as_tensor() * c).unwrap().sum_all().unwrap().backward().unwrap();
        let norm = opt.grad_norm(&grads).unwrap();
        assert!((norm - 5.0).abs() < 1e-12, "{norm}");
        let s = clip_scale(norm, 1.0);
        assert!((s * norm - 1.0).abs() < 1e-6, "{s}");
        assert_eq!(clip_scale(0.5, 1.0), 1.0, "small gradients are not scaled up");
        // With Adam the clipped step has the same direction; check the scale reaches the moments:
        // after one clipped step m = 0.1 * scale * g.
        let mut opt = opt;
        opt.step(&grads, s).unwrap();
        let Moments::Cpu { m, .. } = &opt.slots[0].moments else {
            panic!("cpu path expected")
        };
        assert!((m[0] as f64 - 0.1 * s * 3.0).abs() < 1e-6 && (m[1] as f64 - 0.1 * s * 4.0).abs() < 1e-6);
    }

    #[test]
    fn no_decay_for_biases_and_layer_norms() {
        assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(decays("vit.embeddings.cls_token"));
        assert!(!decays("bert.encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
        assert!(!decays("vit.encoder.layer.3.layernorm_before.weight"));
        assert!(!decays("vit.layernorm.weight"));
    }
}

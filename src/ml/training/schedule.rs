//! Learning-rate schedule: linear warm-up then linear decay to zero, as transformers'
//! `get_linear_schedule_with_warmup` with `warmup_steps = ceil(warmup_ratio * total)`.

/// Linear warm-up from 0 to the peak over `warmup_steps`, then linear decay to 0 at `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    /// The learning rate at the end of warm-up.
    pub peak_lr: f64,
    /// Steps of warm-up.
    pub warmup_steps: usize,
    /// Steps in all.
    pub total_steps: usize,
}

impl LinearSchedule {
    /// A schedule over `total_steps` whose first `ceil(warmup * total_steps)` steps warm up.
    pub fn new(peak_lr: f64, warmup: f64, total_steps: usize) -> Self {
        let warmup_steps = (warmup.clamp(0.0, 1.0) * total_steps as f64).ceil() as usize;
        Self {
            peak_lr,
            warmup_steps,
            total_steps,
        }
    }

    /// The learning rate of optimiser step `step` (0-based), as the PyTorch scheduler gives it
    /// after `step` calls of `scheduler.step()`: 0 at step 0 when there is warm-up.
    pub fn lr(&self, step: usize) -> f64 {
        let factor = if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            let left = self.total_steps.saturating_sub(step) as f64;
            let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
            (left / span).max(0.0)
        };
        self.peak_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_linear_decay() {
        let s = LinearSchedule::new(1e-3, 0.1, 100);
        assert_eq!(s.warmup_steps, 10);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 5e-4).abs() < 1e-15);
        assert!((s.lr(10) - 1e-3).abs() < 1e-15);
        assert!((s.lr(55) - 5e-4).abs() < 1e-15);
        assert!((s.lr(99) - 1e-3 / 90.0).abs() < 1e-15);
        assert_eq!(s.lr(100), 0.0);
        assert_eq!(s.lr(150), 0.0);
        // Monotone up, then monotone down.
        let lrs: Vec<f64> = (0..=100).map(|i| s.lr(i)).collect();
        assert!(lrs[..=10].windows(2).all(|w| w[0] < w[1]));
        assert!(lrs[10..].windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn warm_up_steps_round_up_and_zero_warm_up_starts_at_the_peak() {
        assert_eq!(LinearSchedule::new(1.0, 0.1, 13).warmup_steps, 2);
        let s = LinearSchedule::new(2.0, 0.0, 4);
        assert_eq!(s.warmup_steps, 0);
        assert_eq!((0..4).map(|i| s.lr(i)).collect::<Vec<_>>(), vec![2.0, 1.5, 1.0, 0.5]);
        // All warm-up.
        let s = LinearSchedule::new(1.0, 1.0, 4);
        assert_eq!((0..4).map(|i| s.lr(i)).collect::<Vec<_>>(), vec![0.0, 0.25, 0.5, 0.75]);
    }
}

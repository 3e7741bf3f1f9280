//! Dynamic loss scaling for f16 training.

use serde::{Deserialize, Serialize};

/// Dynamic loss scaling for f16 (as PyTorch's `GradScaler`): the loss is multiplied by the scale
/// before the backward pass so that small gradients survive f16; a step whose gradients overflow
/// is skipped and halves the scale, and every 2,000 good steps double it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// The current factor.
    pub scale: f64,
    good_steps: usize,
}

impl LossScale {
    /// Starts at 2^16.
    pub fn new() -> Self {
        Self {
            scale: 65536.0,
            good_steps: 0,
        }
    }

    /// Records a step: `finite` when every gradient was finite. Returns whether to apply it.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps == 2000 {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        }
        finite
    }
}

impl Default for LossScale {
    fn default() -> Self {
        Self::new()
    }
}

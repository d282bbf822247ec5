//! The learning-rate schedule of CLIP pretraining: linear warm-up, then cosine decay
//! (open_clip's `cosine_lr`, with an optional floor).
//!
//! ```text
//! step < W:   lr = peak · (step + 1) / W
//! otherwise:  lr = min + ½ (peak − min) (1 + cos(π · (step − W) / (T − W)))
//! ```

use anyhow::{bail, Result};

/// Warm-up plus cosine decay over `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CosineSchedule {
    /// Learning rate at the end of warm-up.
    pub peak_lr: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Steps of the whole run (the cosine reaches `min_lr` here).
    pub total_steps: usize,
    /// Floor of the decay (0 in open_clip).
    pub min_lr: f64,
}

impl CosineSchedule {
    /// Checks the numbers make a schedule.
    pub fn validate(&self) -> Result<()> {
        if !(self.peak_lr > 0.0 && self.peak_lr.is_finite()) {
            bail!("learning rate {} must be positive and finite", self.peak_lr);
        }
        if !(self.min_lr >= 0.0 && self.min_lr <= self.peak_lr) {
            bail!(
                "minimum learning rate {} must lie in [0, {}]",
                self.min_lr,
                self.peak_lr
            );
        }
        if self.total_steps == 0 {
            bail!("a schedule needs at least one step");
        }
        Ok(())
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_the_floor() {
        let s = CosineSchedule {
            peak_lr: 1e-3,
            warmup_steps: 10,
            total_steps: 110,
            min_lr: 1e-5,
        };
        s.validate().unwrap();
        assert!((s.lr(0) - 1e-4).abs() < 1e-15);
        assert!((s.lr(9) - 1e-3).abs() < 1e-15);
        assert!((s.lr(10) - 1e-3).abs() < 1e-15);
        assert!((s.lr(60) - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-12);
        assert!((s.lr(110) - 1e-5).abs() < 1e-15);
        assert!((s.lr(500) - 1e-5).abs() < 1e-15);
        assert!((10..110).all(|t| s.lr(t + 1) <= s.lr(t)));
        let bad = CosineSchedule { peak_lr: -1.0, ..s };
        assert!(bad.validate().is_err());
    }
}

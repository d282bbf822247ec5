//! The pretraining loop: batches from a caller's [`BatchSource`], one
//! [`loss_and_grads`] per step, optional global-norm clipping, AdamW at the scheduled
//! learning rate, the logit scale clamped to [0, ln 100] after each update (as
//! open_clip's training loop does), and per-step statistics.
//!
//! The loop draws no random numbers: for the same initial weights (a seed of
//! [`init_weights`](crate::clip::init::init_weights)) and the same batches, every step
//! gives the same numbers, bit for bit.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::adamw::{AdamW, AdamWConfig};
use super::loss::MAX_LOGIT_SCALE;
use super::schedule::CosineSchedule;
use super::step::{loss_and_grads, step_flops, Batch, LossStats};
use crate::clip::params::LOGIT_SCALE;
use crate::clip::weights::ClipWeights;
use crate::clip::LoadOptions;

/// Where batches come from. Any `FnMut(usize) -> Result<Batch>` (given the step index)
/// is a source.
pub trait BatchSource {
    /// The batch of step `step` (0-based).
    fn next_batch(&mut self, step: usize) -> Result<Batch>;
}

impl<F: FnMut(usize) -> Result<Batch>> BatchSource for F {
    fn next_batch(&mut self, step: usize) -> Result<Batch> {
        self(step)
    }
}

/// Pretraining hyper-parameters (defaults: CLIP's optimizer settings).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PretrainConfig {
    /// Optimizer steps of the whole run (the schedule's length).
    pub steps: usize,
    /// Peak learning rate (after warm-up).
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Rescale the gradient to this global L2 norm when it is larger.
    pub max_grad_norm: Option<f64>,
    /// Log a line (tracing, `info`) every this many steps (0: never).
    pub log_every: usize,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            steps: 1000,
            lr: 5e-4,
            warmup_steps: 100,
            min_lr: 0.0,
            adamw: AdamWConfig::default(),
            max_grad_norm: None,
            log_every: 50,
        }
    }
}

impl PretrainConfig {
    /// The learning-rate schedule these settings describe.
    pub fn schedule(&self) -> CosineSchedule {
        CosineSchedule {
            peak_lr: self.lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
            min_lr: self.min_lr,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepStats {
    /// The step's index (0-based).
    pub step: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Loss and in-batch retrieval accuracies before the update.
    pub loss: LossStats,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Pairs in the batch.
    pub batch: usize,
    /// Wall time of the step (gradients and update), seconds.
    pub seconds: f64,
    /// FLOPs of the forward and backward passes ([`step_flops`]).
    pub flops: f64,
}

impl StepStats {
    /// Images (pairs) per second.
    pub fn images_per_second(&self) -> f64 {
        self.batch as f64 / self.seconds
    }

    /// Achieved GFLOP/s of the passes.
    pub fn gflops_per_second(&self) -> f64 {
        self.flops / self.seconds / 1e9
    }
}

impl std::fmt::Display for StepStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {:>6}  loss {:.4}  acc i→t {:5.1}%  t→i {:5.1}%  scale {:6.2}  lr {:.2e}  |g| {:.3}  {:.0} img/s  {:.1} GFLOP/s",
            self.step,
            self.loss.loss,
            100.0 * self.loss.image_to_text_accuracy,
            100.0 * self.loss.text_to_image_accuracy,
            self.loss.scale,
            self.lr,
            self.grad_norm,
            self.images_per_second(),
            self.gflops_per_second()
        )
    }
}

/// Contrastive pretraining of all CLIP weights (CPU, f32).
pub struct Trainer {
    weights: ClipWeights,
    config: PretrainConfig,
    schedule: CosineSchedule,
    optimizer: AdamW,
    step: usize,
}

impl Trainer {
    /// A trainer starting from `weights` (e.g. fresh from
    /// [`init_weights`](crate::clip::init::init_weights)).
    pub fn new(weights: ClipWeights, config: PretrainConfig) -> Result<Self> {
        let schedule = config.schedule();
        schedule.validate()?;
        if let Some(m) = config.max_grad_norm {
            if !(m > 0.0 && m.is_finite()) {
                bail!("max gradient norm {m} must be positive and finite");
            }
        }
        Ok(Trainer {
            weights: weights.to_dtype(DType::F32)?,
            config,
            schedule,
            optimizer: AdamW::new(config.adamw)?,
            step: 0,
        })
    }

    /// The current weights.
    pub fn weights(&self) -> &ClipWeights {
        &self.weights
    }

    /// The weights, ending the training.
    pub fn into_weights(self) -> ClipWeights {
        self.weights
    }

    /// Steps taken so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// The settings.
    pub fn config(&self) -> &PretrainConfig {
        &self.config
    }

    /// One optimizer step on `batch`.
    pub fn step(&mut self, batch: &Batch) -> Result<StepStats> {
        let t0 = Instant::now();
        let lr = self.schedule.lr(self.step);
        let clip = self.weights.to_clip(&LoadOptions::default())?;
        let (loss, mut grads) = loss_and_grads(&clip, batch)?;
        drop(clip);
        if !loss.loss.is_finite() {
            bail!("step {}: the loss is {} (diverged)", self.step, loss.loss);
        }
        let grad_norm = grads.global_norm()?;
        if let Some(max) = self.config.max_grad_norm {
            if grad_norm > max {
                grads.scale(max / grad_norm)?;
            }
        }
        self.optimizer.step(&mut self.weights, &grads, lr)?;
        let s = self.weights.get(LOGIT_SCALE)?.to_scalar::<f32>()?;
        let clamped = (s as f64).clamp(0.0, MAX_LOGIT_SCALE) as f32;
        if clamped != s {
            self.weights
                .set(LOGIT_SCALE, Tensor::new(clamped, &Device::Cpu)?)?;
        }
        let stats = StepStats {
            step: self.step,
            lr,
            loss,
            grad_norm,
            batch: batch.len(),
            seconds: t0.elapsed().as_secs_f64(),
            flops: step_flops(self.weights.config(), batch.len(), batch.text_positions()),
        };
        self.step += 1;
        Ok(stats)
    }

    /// Runs the remaining steps of the schedule, asking `source` for each batch and
    /// handing every step's statistics to `on_step`; returns the last step's.
    pub fn run(
        &mut self,
        source: &mut dyn BatchSource,
        mut on_step: impl FnMut(&StepStats),
    ) -> Result<Option<StepStats>> {
        let mut last = None;
        while self.step < self.config.steps {
            let batch = source.next_batch(self.step)?;
            let stats = self.step(&batch)?;
            if self.config.log_every > 0
                && (stats.step % self.config.log_every == 0 || self.step == self.config.steps)
            {
                tracing::info!("{stats}");
            }
            on_step(&stats);
            last = Some(stats);
        }
        Ok(last)
    }
}

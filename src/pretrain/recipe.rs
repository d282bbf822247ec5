//! The demo CLIP's recipe: what a small CLIP pretrained on the world's pretraining domain
//! is made of ([`Architecture`], [`WorldPretrainSettings`]) and what a run of it measured
//! ([`PretrainReport`]). [`WorldPretrainSettings::default`] is the recipe of the shipped
//! `assets/demo-clip`, so `fedpurel pretrain --out DIR` with no other flag reproduces it;
//! [`super::pipeline`] runs it.

use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::adamw::AdamWConfig;
use super::trainer::PretrainConfig;
use super::world::ZeroShotScore;
use crate::clip::config::{ClipConfig, TextConfig, VisionConfig};
use crate::clip::tokenizer::ClipTokenizer;
use crate::data::world::{vocab, IMAGE_SIZE};

/// The shape of the small CLIP (MLPs 4 × width, CLIP's 77-token context, the world's
/// vocabulary and 32 × 32 input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Architecture {
    /// Vision patch side in pixels (divides 32).
    pub patch_size: usize,
    /// Vision residual width.
    pub vision_width: usize,
    /// Vision blocks.
    pub vision_layers: usize,
    /// Text residual width.
    pub text_width: usize,
    /// Text blocks.
    pub text_layers: usize,
    /// Joint embedding width.
    pub embed_dim: usize,
    /// Width of one attention head in both towers (heads = width / head width).
    pub head_width: usize,
}

impl Default for Architecture {
    fn default() -> Self {
        Architecture {
            patch_size: 4,
            vision_width: 96,
            vision_layers: 4,
            text_width: 64,
            text_layers: 2,
            embed_dim: 64,
            head_width: 32,
        }
    }
}

impl Architecture {
    /// The full CLIP configuration for a vocabulary of `vocab_size` tokens.
    pub fn config(&self, vocab_size: usize) -> Result<ClipConfig> {
        let a = self;
        for (what, width) in [("vision", a.vision_width), ("text", a.text_width)] {
            if a.head_width == 0 || width == 0 || width % a.head_width != 0 {
                bail!(
                    "--{what}-width {width} must be a positive multiple of the head width {}",
                    a.head_width
                );
            }
        }
        if a.patch_size == 0 || !(IMAGE_SIZE as usize).is_multiple_of(a.patch_size) {
            bail!(
                "--patch-size {} must divide the world's image size {IMAGE_SIZE}",
                a.patch_size
            );
        }
        let config = ClipConfig {
            text: TextConfig {
                vocab_size,
                width: a.text_width,
                layers: a.text_layers,
                heads: a.text_width / a.head_width,
                mlp_width: 4 * a.text_width,
                context_length: ClipTokenizer::CONTEXT_LENGTH,
            },
            vision: VisionConfig {
                image_size: IMAGE_SIZE as usize,
                patch_size: a.patch_size,
                width: a.vision_width,
                layers: a.vision_layers,
                heads: a.vision_width / a.head_width,
                mlp_width: 4 * a.vision_width,
            },
            embed_dim: a.embed_dim,
            layer_norm_eps: 1e-5,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Everything a pretraining run depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldPretrainSettings {
    /// Seed of the initial weights and of the class order of the batches.
    pub seed: u64,
    /// Seed of the world (its images and captions; the demo task uses world seed 0).
    pub world_seed: u64,
    /// The model's shape.
    pub architecture: Architecture,
    /// Optimizer steps.
    pub steps: usize,
    /// Pairs per batch.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Floor of the cosine decay, as a fraction of the peak.
    pub min_lr_fraction: f64,
    /// AdamW decoupled weight decay (linear-map matrices only).
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: none).
    pub max_grad_norm: f64,
    /// Count every caption true of an image as its positive (else only drawn pairs).
    pub multi_positive: bool,
    /// Zero-shot check every this many steps on a small test set of both domains (0:
    /// only at the end).
    pub eval_every: usize,
    /// Test images per class of the checks during training.
    pub eval_per_class: usize,
    /// Test images per class of the final evaluation (50: the demo's test set).
    pub final_eval_per_class: usize,
    /// The zero-shot prompt template.
    pub template: String,
    /// Steps averaged into one line of `training-log.jsonl`.
    pub log_every: usize,
}

impl Default for WorldPretrainSettings {
    /// The recipe of the shipped demo CLIP (`assets/demo-clip`).
    fn default() -> Self {
        WorldPretrainSettings {
            seed: 1,
            world_seed: 0,
            architecture: Architecture::default(),
            steps: 3000,
            batch: 128,
            lr: 1e-3,
            warmup_steps: 150,
            min_lr_fraction: 0.02,
            weight_decay: 0.1,
            max_grad_norm: 1.0,
            multi_positive: true,
            eval_every: 250,
            eval_per_class: 10,
            final_eval_per_class: 50,
            template: "a photo of a {}.".into(),
            log_every: 10,
        }
    }
}

impl WorldPretrainSettings {
    /// The trainer's settings.
    pub fn trainer_config(&self) -> PretrainConfig {
        PretrainConfig {
            steps: self.steps,
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            min_lr: self.lr * self.min_lr_fraction,
            adamw: AdamWConfig {
                weight_decay: self.weight_decay,
                ..AdamWConfig::default()
            },
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            log_every: 0,
        }
    }

    /// Checks the numbers before any work.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            bail!("--steps must be at least 1");
        }
        if self.batch < 2 {
            bail!(
                "--batch {}: a contrastive batch needs at least 2 pairs",
                self.batch
            );
        }
        if !(0.0..=1.0).contains(&self.min_lr_fraction) {
            bail!("--min-lr-fraction {} must lie in [0, 1]", self.min_lr_fraction);
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            bail!(
                "--max-grad-norm {} must be ≥ 0 (0: no clipping)",
                self.max_grad_norm
            );
        }
        if self.eval_per_class == 0 || self.final_eval_per_class == 0 {
            bail!("--eval-per-class and --final-eval-per-class must be at least 1");
        }
        if self.template.matches("{}").count() != 1 {
            bail!(
                "--template `{}` must contain exactly one `{{}}` placeholder",
                self.template
            );
        }
        self.trainer_config().schedule().validate()?;
        self.architecture.config(vocab::Vocabulary::build().len())?;
        Ok(())
    }

    /// The command line that reproduces these settings into `out`, every flag spelled
    /// out.
    pub fn command_line(&self, out: &Path) -> String {
        let a = &self.architecture;
        let mut cmd = format!(
            "fedpurel pretrain --out {} --seed {} --world-seed {} --steps {} --batch {} --lr {} \
             --warmup-steps {} --min-lr-fraction {} --weight-decay {} --max-grad-norm {} \
             --patch-size {} --vision-width {} --vision-layers {} --text-width {} --text-layers {} \
             --embed-dim {} --head-width {} --eval-every {} --eval-per-class {} \
             --final-eval-per-class {} --log-every {} --template '{}'",
            out.display(),
            self.seed,
            self.world_seed,
            self.steps,
            self.batch,
            self.lr,
            self.warmup_steps,
            self.min_lr_fraction,
            self.weight_decay,
            self.max_grad_norm,
            a.patch_size,
            a.vision_width,
            a.vision_layers,
            a.text_width,
            a.text_layers,
            a.embed_dim,
            a.head_width,
            self.eval_every,
            self.eval_per_class,
            self.final_eval_per_class,
            self.log_every,
            self.template
        );
        if !self.multi_positive {
            cmd.push_str(" --single-positive");
        }
        cmd
    }
}

/// A zero-shot check during or after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Steps taken when it was measured.
    pub step: usize,
    /// On the pretraining domain's test split.
    pub pretrain: ZeroShotScore,
    /// On the downstream domain's test split (the demo's task, balanced).
    pub downstream: ZeroShotScore,
}

/// What a finished run measured (also `pretrain.json` in the model directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainReport {
    /// The settings.
    pub settings: WorldPretrainSettings,
    /// The command that reproduces the directory.
    pub command: String,
    /// Trainable scalars.
    pub parameters: usize,
    /// Pairs seen (steps × batch), every one a distinct image.
    pub pairs_seen: usize,
    /// Wall time of the training loop (with its zero-shot checks), seconds.
    pub train_seconds: f64,
    /// CPU time (all threads) of the same, seconds, where measurable.
    pub train_cpu_seconds: Option<f64>,
    /// Worker threads (rayon).
    pub threads: usize,
    /// Mean loss and in-batch image → text accuracy of the last `log_every` steps.
    pub final_loss: f64,
    /// See `final_loss`.
    pub final_in_batch_accuracy: f64,
    /// Zero-shot on the full test sets, measured on the directory as written.
    pub zero_shot: EvalRecord,
    /// The checks during training.
    pub history: Vec<EvalRecord>,
    /// Size of each file written, bytes.
    pub files: Vec<(String, u64)>,
}

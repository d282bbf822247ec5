//! Pretraining-step workload: one contrastive step of a small freshly initialized CLIP
//! (all weights, both towers: forward with weight tapes, InfoNCE, explicit backward,
//! AdamW) on a random batch, and the inference forward of the same batch for scale.

use anyhow::Result;
use candle_core::Device;
use rand::Rng;

use super::{best_time, BenchResult};
use crate::clip::config::{ClipConfig, TextConfig, VisionConfig};
use crate::clip::init::init_weights;
use crate::clip::random::uniform;
use crate::clip::LoadOptions;
use crate::pretrain::step::forward_flops;
use crate::pretrain::{step_flops, Batch, PretrainConfig, Trainer};

/// Settings of the pretraining-step workload.
#[derive(Debug, Clone)]
pub struct PretrainBenchSettings {
    /// Pairs per batch.
    pub batch: usize,
    /// Image side in pixels.
    pub image_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Vision width (heads = width / 32).
    pub vision_width: usize,
    /// Vision layers.
    pub vision_layers: usize,
    /// Text width (heads = width / 32).
    pub text_width: usize,
    /// Text layers.
    pub text_layers: usize,
    /// Text context length; EOT positions are drawn in [context/2, context).
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Joint embedding width.
    pub embed_dim: usize,
    /// Timed steps after a warm-up step (the best is reported, the mean in the detail).
    pub steps: usize,
}

impl PretrainBenchSettings {
    /// The architecture these settings describe (MLP 4 × width, head width 32).
    pub fn config(&self) -> ClipConfig {
        ClipConfig {
            text: TextConfig {
                vocab_size: self.vocab,
                width: self.text_width,
                layers: self.text_layers,
                heads: (self.text_width / 32).max(1),
                mlp_width: 4 * self.text_width,
                context_length: self.context,
            },
            vision: VisionConfig {
                image_size: self.image_size,
                patch_size: self.patch_size,
                width: self.vision_width,
                layers: self.vision_layers,
                heads: (self.vision_width / 32).max(1),
                mlp_width: 4 * self.vision_width,
            },
            embed_dim: self.embed_dim,
            layer_norm_eps: 1e-5,
        }
    }
}

/// A random batch of this architecture's shape (seeded).
fn random_batch(config: &ClipConfig, batch: usize) -> Result<Batch> {
    let v = &config.vision;
    let t = &config.text;
    let pixels = uniform(&[batch, 3, v.image_size, v.image_size], 31, 1.5, &Device::Cpu)?;
    let mut rng = crate::rng::stream(0, "bench-pretrain-tokens");
    let (tokens, eot) = (0..batch)
        .map(|_| {
            let e = rng.random_range(t.context_length / 2..t.context_length);
            let mut row: Vec<u32> = (0..t.context_length)
                .map(|_| rng.random_range(1..t.vocab_size as u32))
                .collect();
            row[e + 1..].iter_mut().for_each(|x| *x = 0);
            (row, e)
        })
        .unzip();
    Ok(Batch {
        pixels,
        tokens,
        eot,
        positives: None,
    })
}

/// Runs the workload.
pub fn run(s: &PretrainBenchSettings, peak_gflops: f64) -> Result<Vec<BenchResult>> {
    let config = s.config();
    let weights = init_weights(&config, 0)?;
    let batch = random_batch(&config, s.batch)?;
    let settings = PretrainConfig {
        steps: s.steps + 2,
        warmup_steps: 1,
        log_every: 0,
        ..PretrainConfig::default()
    };
    let mut trainer = Trainer::new(weights.clone(), settings)?;
    trainer.step(&batch)?;
    let mut times = Vec::new();
    for _ in 0..s.steps.max(1) {
        times.push(trainer.step(&batch)?.seconds);
    }
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let clip = weights.to_clip(&LoadOptions::default())?;
    let text_len = batch.text_positions();
    let t_fwd = best_time(1, || {
        let img = clip.encode_images(&batch.pixels)?;
        let ids: Vec<Vec<u32>> = batch.tokens.iter().map(|r| r[..text_len].to_vec()).collect();
        let txt = clip.encode_token_ids(&ids, &batch.eot)?;
        Ok((img, txt))
    })?;
    let flops = step_flops(&config, s.batch, text_len);
    let v = &config.vision;
    let detail = format!(
        "batch {}, {}×{} px patch {} ({} tokens), vision {}×{}, text {}×{} ctx {} (computed {}), vocab {}, {:.2} M params; {:.0} img/s best, {:.0} mean over {} steps",
        s.batch,
        v.image_size,
        v.image_size,
        v.patch_size,
        v.tokens(),
        v.width,
        v.layers,
        config.text.width,
        config.text.layers,
        config.text.context_length,
        text_len,
        config.text.vocab_size,
        weights.numel() as f64 / 1e6,
        s.batch as f64 / best,
        s.batch as f64 / mean,
        times.len()
    );
    let name = format!(
        "pretrain/v{}x{}-p{}-t{}x{}-b{}",
        v.width, v.layers, v.patch_size, config.text.width, config.text.layers, s.batch
    );
    Ok(vec![
        BenchResult::new(
            format!("{name}/forward"),
            t_fwd,
            forward_flops(&config, s.batch, text_len),
            peak_gflops,
            "inference forward of the same batch (no tapes)",
        ),
        BenchResult::new(format!("{name}/step"), best, flops, peak_gflops, detail),
    ])
}

//! Contrastive pretraining of a small CLIP, all weights of both towers, with the
//! encoders' explicit backward passes (no autodiff).
//!
//! | file | owns |
//! | --- | --- |
//! | `loss` | symmetric InfoNCE with the logit scale clamped at ln 100, and its gradient |
//! | `step` | a [`Batch`] of image–text pairs → loss and [`ClipGrads`](crate::clip::ClipGrads); the step's FLOP count |
//! | `adamw` | AdamW (decoupled decay on linear-map matrices only) |
//! | `schedule` | warm-up + cosine learning rate |
//! | `trainer` | the loop: [`BatchSource`], clipping, update, logit-scale clamp, [`StepStats`] |
//! | `world` | balanced (image, caption) batches of the synthetic world's pretraining domain ([`WorldPairs`]), zero-shot accuracy on either domain |
//! | `recipe` | the demo CLIP's recipe ([`WorldPretrainSettings`]) and what a run measured ([`PretrainReport`]) |
//! | `pipeline` | running the recipe: train, evaluate, write the model directory whole |
//! | `model_card` | `MODEL_CARD.md` from a run's report |
//!
//! # Example
//! A freshly initialized CLIP for 16×16 images learns to match four solid colours with
//! four two-token captions, then is written as a Hugging Face directory.
//! ```
//! use candle_core::{Device, Tensor};
//! use fedpurel::clip::config::{ClipConfig, TextConfig, VisionConfig};
//! use fedpurel::clip::init::init_weights;
//! use fedpurel::clip::weights::SaveOptions;
//! use fedpurel::pretrain::{Batch, PretrainConfig, Trainer};
//!
//! # fn main() -> anyhow::Result<()> {
//! let config = ClipConfig {
//!     text: TextConfig { vocab_size: 8, width: 32, layers: 1, heads: 2, mlp_width: 64, context_length: 4 },
//!     vision: VisionConfig { image_size: 16, patch_size: 8, width: 32, layers: 1, heads: 2, mlp_width: 64 },
//!     embed_dim: 16,
//!     layer_norm_eps: 1e-5,
//! };
//! let colours = [[1.0f32, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0]];
//! // The caller's data: any closure from the step index to a batch.
//! let mut source = |_step: usize| -> anyhow::Result<Batch> {
//!     let px: Vec<f32> = colours.iter().flat_map(|c| c.iter().flat_map(|&v| [v; 16 * 16])).collect();
//!     Ok(Batch {
//!         pixels: Tensor::from_vec(px, (4, 3, 16, 16), &Device::Cpu)?,
//!         tokens: (0..4).map(|k| vec![1, 2 + k, 7, 0]).collect(), // start, colour word, end, pad
//!         eot: vec![2; 4],
//!         positives: None,
//!     })
//! };
//! let settings = PretrainConfig { steps: 30, lr: 2e-3, warmup_steps: 3, log_every: 0, ..Default::default() };
//! let mut trainer = Trainer::new(init_weights(&config, 0)?, settings)?;
//! let last = trainer.run(&mut source, |s| println!("{s}"))?.expect("ran");
//! assert!(last.loss.image_to_text_accuracy == 1.0);
//! let dir = std::env::temp_dir().join(format!("pretrain-doc-{}", std::process::id()));
//! trainer.weights().save_hf(&dir, &SaveOptions::default())?;
//! let back = fedpurel::clip::Clip::load(&dir, &Default::default())?;
//! assert_eq!(back.config, config);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

pub mod adamw;
pub mod loss;
pub mod model_card;
pub mod pipeline;
pub mod recipe;
pub mod schedule;
pub mod step;
pub mod trainer;
pub mod world;

pub use adamw::{AdamW, AdamWConfig};
pub use loss::{contrastive_loss, contrastive_loss_with, ContrastiveLoss, MAX_LOGIT_SCALE};
pub use pipeline::pretrain_world;
pub use recipe::{Architecture, PretrainReport, WorldPretrainSettings};
pub use schedule::CosineSchedule;
pub use step::{loss_and_grads, step_flops, Batch, LossStats};
pub use trainer::{BatchSource, PretrainConfig, StepStats, Trainer};
pub use world::{zero_shot_accuracy, WorldPairs, WorldTestSet, ZeroShotScore};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::config::{ClipConfig, TextConfig, VisionConfig};
    use crate::clip::init::init_weights;
    use candle_core::{Device, Tensor};
    use rand::Rng;

    fn toy_config() -> ClipConfig {
        ClipConfig {
            text: TextConfig {
                vocab_size: 12,
                width: 32,
                layers: 2,
                heads: 2,
                mlp_width: 64,
                context_length: 5,
            },
            vision: VisionConfig {
                image_size: 16,
                patch_size: 8,
                width: 32,
                layers: 2,
                heads: 2,
                mlp_width: 64,
            },
            embed_dim: 16,
            layer_norm_eps: 1e-5,
        }
    }

    /// Six solid colours with a little per-step pixel noise, each paired with its own
    /// caption "<start> colour <end>"; one pair of each class per batch.
    fn toy_source(seed: u64) -> impl FnMut(usize) -> anyhow::Result<Batch> {
        let colours: [[f32; 3]; 6] = [
            [1.5, -1.5, -1.5],
            [-1.5, 1.5, -1.5],
            [-1.5, -1.5, 1.5],
            [1.5, 1.5, -1.5],
            [-1.5, 1.5, 1.5],
            [1.5, -1.5, 1.5],
        ];
        move |step| {
            let mut rng = crate::rng::substream(seed, "toy-pixels", &[step as u64]);
            let px: Vec<f32> = colours
                .iter()
                .flat_map(|c| c.iter().flat_map(|&v| [v; 256]))
                .map(|v| v + 0.3 * (rng.random::<f32>() - 0.5))
                .collect();
            Ok(Batch {
                pixels: Tensor::from_vec(px, (6, 3, 16, 16), &Device::Cpu)?,
                tokens: (0..6).map(|k| vec![1, 2 + k as u32, 11, 0, 0]).collect(),
                eot: vec![2; 6],
                positives: None,
            })
        }
    }

    fn settings(steps: usize) -> PretrainConfig {
        PretrainConfig {
            steps,
            lr: 2e-3,
            warmup_steps: 4,
            log_every: 0,
            max_grad_norm: Some(5.0),
            ..PretrainConfig::default()
        }
    }

    #[test]
    fn the_pipeline_learns_a_separable_toy() {
        let mut trainer = Trainer::new(init_weights(&toy_config(), 3).unwrap(), settings(40)).unwrap();
        let mut stats = Vec::new();
        trainer.run(&mut toy_source(1), |s| stats.push(*s)).unwrap();
        assert_eq!(stats.len(), 40);
        let first = stats[0].loss;
        let last = stats.last().unwrap().loss;
        println!(
            "toy: loss {:.4} → {:.4}, accuracy {} / {}",
            first.loss, last.loss, last.image_to_text_accuracy, last.text_to_image_accuracy
        );
        // Random features at the initial scale 1/0.07: about chance (ln 6 ≈ 1.8) or worse.
        assert!(first.loss > 1.0, "starts unlearned: {}", first.loss);
        assert!(
            last.loss < 0.2 * first.loss,
            "loss {} → {}",
            first.loss,
            last.loss
        );
        assert_eq!(last.image_to_text_accuracy, 1.0);
        assert_eq!(last.text_to_image_accuracy, 1.0);
        // The logit scale is a trained parameter and stays within CLIP's clamp.
        let s = trainer
            .weights()
            .get("logit_scale")
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            s as f64 <= MAX_LOGIT_SCALE
                && s != init_weights(&toy_config(), 3)
                    .unwrap()
                    .get("logit_scale")
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
        );
    }

    #[test]
    fn same_seed_same_numbers() {
        let run = |seed: u64| {
            let mut t = Trainer::new(init_weights(&toy_config(), seed).unwrap(), settings(4)).unwrap();
            let mut losses = Vec::new();
            t.run(&mut toy_source(9), |s| losses.push(s.loss.loss)).unwrap();
            let w: Vec<f32> = t
                .weights()
                .get("vision_model.encoder.layers.1.mlp.fc2.weight")
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (losses, w)
        };
        let a = run(5);
        assert_eq!(a, run(5));
        assert_ne!(a.0, run(6).0);
    }

    #[test]
    fn bad_batches_are_named() {
        let mut trainer = Trainer::new(init_weights(&toy_config(), 0).unwrap(), settings(2)).unwrap();
        let mut b = toy_source(0)(0).unwrap();
        b.eot[2] = 7;
        let e = format!("{:#}", trainer.step(&b).unwrap_err());
        assert!(e.contains("row 2"), "{e}");
        let mut b = toy_source(0)(0).unwrap();
        b.tokens.pop();
        let e = format!("{:#}", trainer.step(&b).unwrap_err());
        assert!(e.contains("token rows"), "{e}");
        let mut b = toy_source(0)(0).unwrap();
        b.tokens[0][1] = 40;
        let e = format!("{:#}", trainer.step(&b).unwrap_err());
        assert!(e.contains("vocabulary"), "{e}");
        assert_eq!(trainer.steps_done(), 0);
    }
}

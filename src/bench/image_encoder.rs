//! Image-encoder workload: the ViT-B/16-sized vision tower (random weights) on a batch of
//! 32 images: forward only (the frozen feature extractor), forward with LoRA (evaluation
//! under LoRA), the same forward keeping its tape (the first half of a training step),
//! and forward + backward for two cotangents to rank-8 LoRA adapters on q, k, v of every
//! layer (FedPuReL's LoRA variant).

use anyhow::Result;
use candle_core::{DType, Device};

use super::{best_time, BenchResult};

use crate::clip::block::{BlockLora, Lora, Shape};
use crate::clip::config::{block_flops, ClipConfig};
use crate::clip::random::{uniform, vision_encoder};

/// Settings of the image-encoder workload.
#[derive(Debug, Clone)]
pub struct ImageBenchSettings {
    /// Images per batch.
    pub batch: usize,
    /// LoRA rank.
    pub rank: usize,
    /// Timed repetitions (best is reported).
    pub reps: usize,
    /// Cotangents in the backward.
    pub cotangents: usize,
}

/// Runs the workload.
pub fn run(s: &ImageBenchSettings, device: &Device, peak_gflops: f64) -> Result<Vec<BenchResult>> {
    let cfg = ClipConfig::vit_b16();
    let v = &cfg.vision;
    let enc = vision_encoder(&cfg, 17, device)?;
    let pixels = uniform(&[s.batch, 3, v.image_size, v.image_size], 19, 1.5, device)?;
    let w = v.width;
    let lora: Vec<BlockLora> = (0..v.layers as u64)
        .map(|i| -> Result<BlockLora> {
            let mk = |k: u64| -> Result<Option<Lora>> {
                Ok(Some(Lora {
                    a: uniform(&[s.rank, w], 100 * i + k, 0.03, device)?,
                    b: uniform(&[w, s.rank], 100 * i + k + 50, 0.03, device)?,
                    scale: 16.0 / (s.rank as f64).sqrt(),
                    dropout_mask: None,
                }))
            };
            Ok(BlockLora {
                q: mk(1)?,
                k: mk(2)?,
                v: mk(3)?,
                o: None,
            })
        })
        .collect::<Result<_>>()?;
    let tokens = (s.batch * v.tokens()) as f64;
    let patches =
        2.0 * (s.batch * v.grid() * v.grid()) as f64 * (3 * v.patch_size * v.patch_size) as f64 * w as f64;
    let fwd = patches + v.layers as f64 * block_flops(w, v.mlp_width, tokens, v.tokens() as f64);
    // Without a tape the last block runs its queries, output projection and MLP for the
    // class token alone (`Block::forward_first_rows`): count the work it does.
    let last_block = |lora: Option<&BlockLora>| -> f64 {
        let shape = Shape {
            n: s.batch,
            s: v.tokens(),
            causal: false,
        };
        let queries = enc
            .blocks
            .last()
            .and_then(|b| b.first_rows_queries(shape, lora, device, DType::F32));
        let (d, m, t, b) = (w as f64, v.mlp_width as f64, v.tokens() as f64, s.batch as f64);
        match queries {
            Some(q) => {
                2.0 * tokens * 3.0 * d * d + 4.0 * b * q as f64 * t * d + 2.0 * b * (d * d + 2.0 * d * m)
            }
            None => block_flops(w, v.mlp_width, tokens, t),
        }
    };
    let untaped = |lora| fwd - block_flops(w, v.mlp_width, tokens, v.tokens() as f64) + last_block(lora);
    let lora_fwd = v.layers as f64 * 3.0 * 2.0 * tokens * 2.0 * (w * s.rank) as f64;
    let (d, m) = (w as f64, v.mlp_width as f64);
    let per_cot = 2.0 * tokens * (4.0 * d * d + 2.0 * d * m) + 8.0 * tokens * v.tokens() as f64 * d;
    let bwd = s.cotangents as f64 * (v.layers as f64 * per_cot + 3.0 * lora_fwd);
    let d_feat = uniform(&[s.cotangents, s.batch, cfg.embed_dim], 23, 1.0, device)?;

    let t_fwd = best_time(s.reps, || {
        let f = enc.forward(&pixels, None, false)?.0;
        device.synchronize()?;
        Ok(f)
    })?;
    let t_lora = best_time(s.reps, || {
        let f = enc.forward(&pixels, Some(&lora), false)?.0;
        device.synchronize()?;
        Ok(f)
    })?;
    let t_taped = best_time(s.reps, || {
        let (f, tape) = enc.forward(&pixels, Some(&lora), true)?;
        device.synchronize()?;
        Ok((f, tape))
    })?;
    let t_bwd = best_time(s.reps, || {
        let (_, tape) = enc.forward(&pixels, Some(&lora), true)?;
        let g = enc.backward(tape.as_ref().expect("tape"), &d_feat, &lora)?;
        device.synchronize()?;
        Ok(g)
    })?;
    let detail = format!(
        "batch {}, {} tokens, LoRA r={} on q,k,v, {} cotangents",
        s.batch,
        v.tokens(),
        s.rank,
        s.cotangents
    );
    Ok(vec![
        BenchResult::new(
            "image-encoder/vit-b16/forward",
            t_fwd,
            untaped(None),
            peak_gflops,
            format!("{detail}; last block for the class token alone"),
        ),
        BenchResult::new(
            "image-encoder/vit-b16/forward-with-lora",
            t_lora,
            untaped(lora.last()) + lora_fwd,
            peak_gflops,
            format!("{detail}; last block for the class token alone"),
        ),
        BenchResult::new(
            "image-encoder/vit-b16/forward-taped-with-lora",
            t_taped,
            fwd + lora_fwd,
            peak_gflops,
            format!("{detail}; every block in full, tape kept"),
        ),
        BenchResult::new(
            format!("image-encoder/vit-b16/forward+lora-backward{}", s.cotangents),
            t_bwd,
            fwd + lora_fwd + bwd,
            peak_gflops,
            detail,
        ),
    ])
}

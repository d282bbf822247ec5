//! Seeded random tensors: parameter initialization, and weights for benchmarks at
//! published sizes without downloading a checkpoint. A SplitMix64 stream fills each
//! tensor; the same seed gives the same values on every machine.

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::block::Block;
use super::config::{ClipConfig, TextConfig};
use super::ops::{LayerNorm, Linear};
use super::text::TextEncoder;

/// SplitMix64: a tiny, well-mixed generator whose stream depends only on its seed.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits.
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A tensor with entries uniform in [−scale, scale], from `seed`.
pub fn uniform(shape: &[usize], seed: u64, scale: f32, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut g = SplitMix(seed ^ 0x9E37_79B9_7F4A_7C15);
    let data: Vec<f32> = (0..n).map(|_| (2.0 * g.unit() - 1.0) * scale).collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_device(device)?)
}

/// A tensor with entries N(0, std²) (Box–Muller), from `seed`.
pub fn normal(shape: &[usize], seed: u64, std: f32, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut g = SplitMix(seed ^ 0xD1B5_4A32_D192_ED03);
    let mut data = Vec::with_capacity(n + 1);
    while data.len() < n {
        let u1 = (g.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let u2 = (g.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * (1.0 - u1).ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        data.push((r * t.cos()) as f32 * std);
        data.push((r * t.sin()) as f32 * std);
    }
    data.truncate(n);
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_device(device)?)
}

fn linear(out: usize, inp: usize, seed: u64, dev: &Device) -> Result<Linear> {
    let s = 1.0 / (inp as f32).sqrt();
    Ok(Linear::new(
        uniform(&[out, inp], seed, s, dev)?,
        Some(uniform(&[out], seed + 1, 0.02, dev)?),
    ))
}

fn layer_norm(dim: usize, seed: u64, dev: &Device) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: (uniform(&[dim], seed, 0.1, dev)? + 1.0)?,
        bias: uniform(&[dim], seed + 1, 0.1, dev)?,
        eps: 1e-5,
    })
}

/// A residual block with random weights.
pub fn block(width: usize, mlp: usize, heads: usize, seed: u64, dev: &Device) -> Result<Block> {
    Ok(Block {
        ln1: layer_norm(width, seed, dev)?,
        qkv: linear(3 * width, width, seed + 10, dev)?,
        out: linear(width, width, seed + 20, dev)?,
        ln2: layer_norm(width, seed + 30, dev)?,
        fc1: linear(mlp, width, seed + 40, dev)?,
        fc2: linear(width, mlp, seed + 50, dev)?,
        heads,
        width,
    })
}

/// A text tower of the given shape with random weights (vocabulary trimmed to `vocab`
/// rows, since benchmarks feed embeddings directly).
pub fn text_encoder(config: &ClipConfig, vocab: usize, seed: u64, dev: &Device) -> Result<TextEncoder> {
    let c: &TextConfig = &config.text;
    let blocks = (0..c.layers)
        .map(|i| block(c.width, c.mlp_width, c.heads, seed + 1000 * (i as u64 + 1), dev))
        .collect::<Result<Vec<_>>>()?;
    Ok(TextEncoder {
        token_embedding: uniform(&[vocab, c.width], seed + 1, 0.02, dev)?,
        positional: uniform(&[c.context_length, c.width], seed + 2, 0.01, dev)?,
        blocks,
        final_norm: layer_norm(c.width, seed + 3, dev)?,
        projection: uniform(
            &[config.embed_dim, c.width],
            seed + 4,
            1.0 / (c.width as f32).sqrt(),
            dev,
        )?,
        config: TextConfig {
            vocab_size: vocab,
            ..c.clone()
        },
    })
}

/// A vision tower of the given shape with random weights.
pub fn vision_encoder(config: &ClipConfig, seed: u64, dev: &Device) -> Result<super::vision::VisionEncoder> {
    let c = &config.vision;
    let p = c.patch_size;
    let blocks = (0..c.layers)
        .map(|i| block(c.width, c.mlp_width, c.heads, seed + 1000 * (i as u64 + 1), dev))
        .collect::<Result<Vec<_>>>()?;
    Ok(super::vision::VisionEncoder {
        patch: uniform(
            &[c.width, 3 * p * p],
            seed + 1,
            1.0 / ((3 * p * p) as f32).sqrt(),
            dev,
        )?,
        class_embedding: uniform(&[c.width], seed + 2, 0.02, dev)?,
        positional: uniform(&[c.tokens(), c.width], seed + 3, 0.01, dev)?,
        pre_norm: layer_norm(c.width, seed + 4, dev)?,
        blocks,
        final_norm: layer_norm(c.width, seed + 5, dev)?,
        projection: uniform(
            &[config.embed_dim, c.width],
            seed + 6,
            1.0 / (c.width as f32).sqrt(),
            dev,
        )?,
        config: c.clone(),
    })
}

/// A whole CLIP of a published architecture with random weights (logit scale ln 100):
/// benchmarks at real sizes without a download. Named `vit-b32`, `vit-b16` or `vit-l14`.
pub fn clip(arch: &str, seed: u64, dev: &Device) -> Result<super::Clip> {
    let config = match arch {
        "vit-b32" => ClipConfig::vit_b32(),
        "vit-b16" => ClipConfig::vit_b16(),
        "vit-l14" => ClipConfig::vit_l14(),
        _ => anyhow::bail!("unknown architecture `{arch}`; random models: vit-b32, vit-b16, vit-l14"),
    };
    Ok(super::Clip {
        text: text_encoder(&config, config.text.vocab_size, seed, dev)?,
        vision: vision_encoder(&config, seed + 77, dev)?,
        logit_scale: 100f32.ln(),
        layout: super::checkpoint::Layout::HuggingFace,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_has_the_requested_moments_and_is_seeded() {
        let t = normal(&[20_000], 5, 0.02, &Device::Cpu).unwrap();
        let v: Vec<f32> = t.to_vec1().unwrap();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
        assert!(
            mean.abs() < 1e-3 && (var.sqrt() - 0.02).abs() < 1e-3,
            "mean {mean}, std {}",
            var.sqrt()
        );
        assert_eq!(
            v,
            normal(&[20_000], 5, 0.02, &Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        assert_ne!(
            v,
            normal(&[20_000], 6, 0.02, &Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }
}

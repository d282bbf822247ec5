//! Freshly initialized CLIP weights for pretraining, of any architecture a
//! [`ClipConfig`] validates (e.g. 32×32 images with patch 4, context 16).
//!
//! The scheme is Hugging Face's `CLIPPreTrainedModel._init_weights` with
//! `initializer_factor = 1` and `initializer_range = 0.02`, one rule for both towers
//! (D = the tower's width, L = its layers):
//!
//! | parameter | init |
//! | --- | --- |
//! | token embedding, text positions | N(0, 0.02²) |
//! | patch embedding, vision positions | N(0, 0.02²) |
//! | class embedding | N(0, D⁻¹) |
//! | q, k, v projections; fc2 | N(0, (D · 2L)⁻¹) |
//! | out projection | N(0, D⁻¹) |
//! | fc1 | N(0, (2D)⁻¹) |
//! | text / visual projection | N(0, D⁻¹) of the tower's width |
//! | every bias, LayerNorm β | 0 |
//! | LayerNorm γ | 1 |
//! | logit scale | ln(1 / 0.07) |
//!
//! (OpenAI's `initialize_parameters` differs in putting the depth factor on the output
//! projection instead of q/k/v, and in leaving the vision blocks at PyTorch's defaults.)
//! Every tensor draws from its own named stream of the seed (`clip-init/<name>`), so a
//! parameter's values depend only on the seed, its name and its shape.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::Rng;

use super::config::ClipConfig;
use super::params::{parts, BlockLayer, Part, Tower, Wb};
use super::weights::ClipWeights;

/// How one parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    Normal(f64),
    Constant(f64),
}

/// The rule of the table above for the parameter at `part`.
fn rule(config: &ClipConfig, part: Part) -> Init {
    let (d, l) = match part.tower() {
        Some(Tower::Text) => (config.text.width as f64, config.text.layers as f64),
        _ => (config.vision.width as f64, config.vision.layers as f64),
    };
    let depth_std = d.powf(-0.5) * (2.0 * l).powf(-0.5);
    match part {
        Part::LogitScale => Init::Constant((1.0f64 / 0.07).ln()),
        Part::Block(.., Wb::Bias) | Part::PreNorm(Wb::Bias) | Part::FinalNorm(_, Wb::Bias) => {
            Init::Constant(0.0)
        }
        Part::PreNorm(Wb::Weight)
        | Part::FinalNorm(_, Wb::Weight)
        | Part::Block(_, _, BlockLayer::Ln1 | BlockLayer::Ln2, Wb::Weight) => Init::Constant(1.0),
        Part::ClassEmbedding => Init::Normal(d.powf(-0.5)),
        Part::TokenEmbedding | Part::Positional(_) | Part::Patch => Init::Normal(0.02),
        Part::Block(_, _, BlockLayer::Q | BlockLayer::K | BlockLayer::V | BlockLayer::Fc2, Wb::Weight) => {
            Init::Normal(depth_std)
        }
        Part::Block(_, _, BlockLayer::Fc1, Wb::Weight) => Init::Normal((2.0 * d).powf(-0.5)),
        Part::Block(_, _, BlockLayer::Out, Wb::Weight) | Part::Projection(_) => Init::Normal(d.powf(-0.5)),
    }
}

/// `n` draws from N(0, std²) by Box–Muller on `rng` (written out, so the values never
/// change with a dependency's sampler).
fn normal_values(rng: &mut crate::rng::StreamRng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos() * std) as f32);
        out.push((r * t.sin() * std) as f32);
    }
    out.truncate(n);
    out
}

/// A freshly initialized CLIP of architecture `config` (f32, CPU), seeded.
pub fn init_weights(config: &ClipConfig, seed: u64) -> Result<ClipWeights> {
    config.validate()?;
    let mut tensors = BTreeMap::new();
    for part in parts(config) {
        let (name, shape) = (part.name(), part.shape(config));
        let n: usize = shape.iter().product();
        let values = match rule(config, part) {
            Init::Constant(c) => vec![c as f32; n],
            Init::Normal(std) => {
                let mut rng = crate::rng::stream(seed, &format!("clip-init/{name}"));
                normal_values(&mut rng, n, std)
            }
        };
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    ClipWeights::new(config.clone(), tensors)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clip::config::{TextConfig, VisionConfig};
    use crate::clip::params::LOGIT_SCALE;
    use crate::clip::weights::parameter_shapes;

    /// A small pretraining-sized architecture: 32×32 images, patch 8, context 16.
    pub(crate) fn small_config() -> ClipConfig {
        ClipConfig {
            text: TextConfig {
                vocab_size: 300,
                width: 64,
                layers: 2,
                heads: 2,
                mlp_width: 256,
                context_length: 16,
            },
            vision: VisionConfig {
                image_size: 32,
                patch_size: 8,
                width: 96,
                layers: 3,
                heads: 3,
                mlp_width: 384,
            },
            embed_dim: 48,
            layer_norm_eps: 1e-5,
        }
    }

    fn std_of(t: &Tensor) -> f64 {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    }

    #[test]
    fn follows_the_stated_scheme_and_is_seeded() {
        let c = small_config();
        let w = init_weights(&c, 7).unwrap();
        assert_eq!(
            w.numel(),
            parameter_shapes(&c)
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum::<usize>()
        );
        let close = |name: &str, want: f64| {
            let got = std_of(w.get(name).unwrap());
            assert!((got / want - 1.0).abs() < 0.08, "{name}: std {got}, want {want}");
        };
        close("text_model.embeddings.token_embedding.weight", 0.02);
        close("vision_model.embeddings.patch_embedding.weight", 0.02);
        close(
            "vision_model.encoder.layers.1.self_attn.q_proj.weight",
            (96f64 * 6.0).powf(-0.5),
        );
        close(
            "text_model.encoder.layers.0.self_attn.out_proj.weight",
            64f64.powf(-0.5),
        );
        close("text_model.encoder.layers.1.mlp.fc1.weight", 128f64.powf(-0.5));
        close(
            "vision_model.encoder.layers.2.mlp.fc2.weight",
            (96f64 * 6.0).powf(-0.5),
        );
        close("visual_projection.weight", 96f64.powf(-0.5));
        let ones: Vec<f32> = w
            .get("vision_model.post_layernorm.weight")
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(ones.iter().all(|&x| x == 1.0));
        let zeros: Vec<f32> = w
            .get("text_model.encoder.layers.0.mlp.fc1.bias")
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(zeros.iter().all(|&x| x == 0.0));
        let s = w.get(LOGIT_SCALE).unwrap().to_scalar::<f32>().unwrap();
        assert!((s - 2.6592).abs() < 1e-4);
        // Same seed, same numbers; another seed, other numbers.
        let again = init_weights(&c, 7).unwrap();
        let other = init_weights(&c, 8).unwrap();
        let name = "text_model.encoder.layers.1.self_attn.k_proj.weight";
        let v = |w: &ClipWeights| {
            w.get(name)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(v(&w), v(&again));
        assert_ne!(v(&w), v(&other));
        // The weights build into encoders that run at this size.
        let clip = w.to_clip(&Default::default()).unwrap();
        let px = Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(clip.encode_images(&px).unwrap().dims(), &[2, 48]);
    }

    #[test]
    fn bad_architectures_are_rejected_by_name() {
        let mut c = small_config();
        c.vision.patch_size = 5;
        let e = format!("{:#}", init_weights(&c, 0).unwrap_err());
        assert!(e.contains("patch size"), "{e}");
        let mut c = small_config();
        c.text.heads = 3;
        let e = format!("{:#}", init_weights(&c, 0).unwrap_err());
        assert!(e.contains("text heads"), "{e}");
    }
}

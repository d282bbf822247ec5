//! CLIP architecture description: named presets for the published ViT models, reading
//! and writing Hugging Face `config.json`, and inference from tensor shapes (as OpenAI's
//! `build_model`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The text transformer's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Vocabulary size (49 408 for CLIP's BPE).
    pub vocab_size: usize,
    /// Residual stream width.
    pub width: usize,
    /// Number of residual attention blocks.
    pub layers: usize,
    /// Number of attention heads.
    pub heads: usize,
    /// Hidden width of the MLP (4 × width in CLIP).
    pub mlp_width: usize,
    /// Maximum sequence length (77).
    pub context_length: usize,
}

/// The vision transformer's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// Input resolution in pixels (square).
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Residual stream width.
    pub width: usize,
    /// Number of residual attention blocks.
    pub layers: usize,
    /// Number of attention heads.
    pub heads: usize,
    /// Hidden width of the MLP.
    pub mlp_width: usize,
}

impl VisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: one class token plus the patches.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// Special-token ids written into a Hugging Face `config.json` (`text_config.*_token_id`);
/// `None` leaves the field out (Hugging Face's defaults apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Start of text.
    pub bos: Option<u32>,
    /// End of text (Hugging Face pools the text features at this token).
    pub eos: Option<u32>,
    /// Padding.
    pub pad: Option<u32>,
}

/// A whole CLIP model: both towers and the shared embedding width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// Text tower.
    pub text: TextConfig,
    /// Vision tower.
    pub vision: VisionConfig,
    /// Width of the joint image–text embedding space.
    pub embed_dim: usize,
    /// LayerNorm epsilon (1e-5 in every published CLIP).
    pub layer_norm_eps: f64,
}

impl ClipConfig {
    fn vit(
        image_size: usize,
        patch: usize,
        v_width: usize,
        v_layers: usize,
        t_width: usize,
        embed_dim: usize,
    ) -> Self {
        ClipConfig {
            text: TextConfig {
                vocab_size: 49408,
                width: t_width,
                layers: 12,
                heads: t_width / 64,
                mlp_width: 4 * t_width,
                context_length: 77,
            },
            vision: VisionConfig {
                image_size,
                patch_size: patch,
                width: v_width,
                layers: v_layers,
                heads: v_width / 64,
                mlp_width: 4 * v_width,
            },
            embed_dim,
            layer_norm_eps: 1e-5,
        }
    }

    /// OpenAI ViT-B/32.
    pub fn vit_b32() -> Self {
        Self::vit(224, 32, 768, 12, 512, 512)
    }

    /// OpenAI ViT-B/16 (the paper's backbone).
    pub fn vit_b16() -> Self {
        Self::vit(224, 16, 768, 12, 512, 512)
    }

    /// OpenAI ViT-L/14.
    pub fn vit_l14() -> Self {
        Self::vit(224, 14, 1024, 24, 768, 768)
    }

    /// A preset by name: `vit-b32`, `vit-b16`, `vit-l14` (also `ViT-B/16` spellings).
    pub fn preset(name: &str) -> Result<Self> {
        let key: String = name
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        match key.as_str() {
            "vitb32" => Ok(Self::vit_b32()),
            "vitb16" => Ok(Self::vit_b16()),
            "vitl14" => Ok(Self::vit_l14()),
            _ => bail!("unknown model preset `{name}`: expected vit-b32, vit-b16 or vit-l14"),
        }
    }

    /// Reads a Hugging Face `CLIPModel` `config.json`.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        Self::from_hf_json(&text, path)
    }

    /// Parses the text of a Hugging Face `config.json`; `path` names it in errors.
    pub fn from_hf_json(text: &str, path: &Path) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(text).with_context(|| {
            format!(
                "{}: not a Hugging Face CLIP config (expected `text_config`, `vision_config`, `projection_dim`)",
                path.display()
            )
        })?;
        let act_ok = |a: &Option<String>| a.as_deref().is_none_or(|a| a == "quick_gelu");
        if !act_ok(&raw.text_config.hidden_act) || !act_ok(&raw.vision_config.hidden_act) {
            bail!(
                "{}: field `hidden_act`: only `quick_gelu` (OpenAI CLIP) is supported",
                path.display()
            );
        }
        let t = &raw.text_config;
        let v = &raw.vision_config;
        let cfg = ClipConfig {
            text: TextConfig {
                vocab_size: t.vocab_size,
                width: t.hidden_size,
                layers: t.num_hidden_layers,
                heads: t.num_attention_heads,
                mlp_width: t.intermediate_size,
                context_length: t.max_position_embeddings,
            },
            vision: VisionConfig {
                image_size: v.image_size,
                patch_size: v.patch_size,
                width: v.hidden_size,
                layers: v.num_hidden_layers,
                heads: v.num_attention_heads,
                mlp_width: v.intermediate_size,
            },
            embed_dim: raw.projection_dim,
            layer_norm_eps: t.layer_norm_eps.unwrap_or(1e-5),
        };
        cfg.validate()
            .with_context(|| format!("{}: inconsistent configuration", path.display()))?;
        Ok(cfg)
    }

    /// The Hugging Face `CLIPModel` `config.json` of this architecture (the fields
    /// [`from_hf_config`](Self::from_hf_config) and `transformers` read; logit scale
    /// initial value ln(1/0.07) as CLIP's).
    pub fn to_hf_config_json(&self, tokens: &SpecialTokens) -> serde_json::Value {
        let t = &self.text;
        let v = &self.vision;
        let mut text = serde_json::json!({
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": t.mlp_width,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": self.layer_norm_eps,
            "projection_dim": self.embed_dim,
            "attention_dropout": 0.0,
        });
        for (key, id) in [
            ("bos_token_id", tokens.bos),
            ("eos_token_id", tokens.eos),
            ("pad_token_id", tokens.pad),
        ] {
            if let Some(id) = id {
                text[key] = id.into();
            }
        }
        serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.embed_dim,
            "logit_scale_init_value": (1.0f64 / 0.07).ln(),
            "initializer_factor": 1.0,
            "text_config": text,
            "vision_config": {
                "hidden_size": v.width,
                "intermediate_size": v.mlp_width,
                "num_hidden_layers": v.layers,
                "num_attention_heads": v.heads,
                "num_channels": 3,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "hidden_act": "quick_gelu",
                "layer_norm_eps": self.layer_norm_eps,
                "projection_dim": self.embed_dim,
                "attention_dropout": 0.0,
            },
            "torch_dtype": "float32",
        })
    }

    /// Checks internal consistency (heads divide widths, patches tile the image, …).
    pub fn validate(&self) -> Result<()> {
        let t = &self.text;
        let v = &self.vision;
        let checks = [
            (
                t.width > 0 && t.layers > 0 && t.heads > 0,
                "text width, layers and heads must be positive",
            ),
            (
                t.heads > 0 && t.width.is_multiple_of(t.heads),
                "text width must be a multiple of text heads",
            ),
            (
                v.width > 0 && v.layers > 0 && v.heads > 0,
                "vision width, layers and heads must be positive",
            ),
            (
                v.heads > 0 && v.width.is_multiple_of(v.heads),
                "vision width must be a multiple of vision heads",
            ),
            (
                v.patch_size > 0 && v.image_size >= v.patch_size && v.image_size.is_multiple_of(v.patch_size),
                "image size must be a positive multiple of the patch size",
            ),
            (t.context_length >= 2, "context length must be at least 2"),
            (t.vocab_size >= 2, "vocabulary must have at least 2 tokens"),
            (t.mlp_width > 0 && v.mlp_width > 0, "MLP widths must be positive"),
            (self.embed_dim > 0, "embedding width must be positive"),
            (
                self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite(),
                "LayerNorm epsilon must be positive",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                bail!("{msg} (found {self:?})");
            }
        }
        Ok(())
    }

    /// Multiply–accumulate FLOPs (2 per MAC) of one text-tower forward over `tokens`
    /// positions attending to `keys` positions each on average.
    pub fn text_forward_flops(&self, tokens: f64, mean_keys: f64) -> f64 {
        block_flops(self.text.width, self.text.mlp_width, tokens, mean_keys) * self.text.layers as f64
    }
}

/// FLOPs of one residual attention block's forward over `tokens` positions, each attending
/// to `mean_keys` positions on average: q/k/v/out projections, two MLP matmuls, and the
/// two attention matmuls.
pub fn block_flops(width: usize, mlp_width: usize, tokens: f64, mean_keys: f64) -> f64 {
    let d = width as f64;
    let m = mlp_width as f64;
    let proj = 2.0 * tokens * (4.0 * d * d + 2.0 * d * m);
    let attn = 2.0 * 2.0 * tokens * mean_keys * d;
    proj + attn
}

#[derive(Deserialize)]
struct HfConfig {
    text_config: HfTextConfig,
    vision_config: HfVisionConfig,
    projection_dim: usize,
}

#[derive(Deserialize)]
struct HfTextConfig {
    #[serde(default = "default_vocab")]
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "default_context")]
    max_position_embeddings: usize,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
}

#[derive(Deserialize)]
struct HfVisionConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    image_size: usize,
    patch_size: usize,
    hidden_act: Option<String>,
}

fn default_vocab() -> usize {
    49408
}

fn default_context() -> usize {
    77
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_published_shapes() {
        let b16 = ClipConfig::vit_b16();
        assert_eq!(b16.vision.tokens(), 197);
        assert_eq!(b16.text.heads, 8);
        assert_eq!(b16.vision.heads, 12);
        assert_eq!(ClipConfig::vit_b32().vision.tokens(), 50);
        assert_eq!(ClipConfig::vit_l14().vision.tokens(), 257);
        assert_eq!(ClipConfig::preset("ViT-B/16").unwrap(), b16);
        assert!(ClipConfig::preset("resnet50").is_err());
        for c in [
            ClipConfig::vit_b16(),
            ClipConfig::vit_b32(),
            ClipConfig::vit_l14(),
        ] {
            c.validate().unwrap();
        }
    }

    #[test]
    fn reads_fixture_hf_config() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/hf");
        let cfg = ClipConfig::from_hf_config(&dir.join("config.json")).unwrap();
        assert_eq!(cfg.text.width, 64);
        assert_eq!(cfg.text.heads, 1);
        assert_eq!(cfg.vision.width, 128);
        assert_eq!(cfg.vision.layers, 3);
        assert_eq!(cfg.vision.patch_size, 32);
        assert_eq!(cfg.embed_dim, 96);
    }

    #[test]
    fn bad_config_names_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, "{\"text_config\": {}}").unwrap();
        let err = format!("{:#}", ClipConfig::from_hf_config(&p).unwrap_err());
        assert!(err.contains("config.json"), "{err}");
        assert!(
            err.contains("text_config") || err.contains("missing field"),
            "{err}"
        );
    }
}

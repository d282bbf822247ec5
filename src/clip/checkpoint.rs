//! Checkpoint directories: detecting the key layout (Hugging Face `CLIPModel` or OpenAI
//! state dict, both as safetensors), memory-mapping the weights, and serving each tensor
//! under one canonical (Hugging Face) name with its shape checked.
//!
//! OpenAI keys are translated on the fly: `in_proj_weight` is split into q/k/v thirds and
//! the two projections are transposed, so the encoders only ever see one naming scheme.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::config::{ClipConfig, TextConfig, VisionConfig};
use super::params::Part;

/// Which key naming a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `transformers`' `CLIPModel` (`text_model.encoder.layers.N.self_attn.q_proj.weight`, …).
    HuggingFace,
    /// OpenAI's `clip/model.py` state dict (`transformer.resblocks.N.attn.in_proj_weight`, …).
    OpenAi,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::HuggingFace => "Hugging Face CLIPModel",
            Layout::OpenAi => "OpenAI state dict",
        })
    }
}

/// Where encoder weights come from: an opened [`Checkpoint`], or trainable weights held in
/// memory ([`super::weights::ClipWeights`]). Tensors are asked for by canonical (Hugging
/// Face) name with the shape the architecture implies.
pub trait WeightSource {
    /// The architecture the tensors describe.
    fn config(&self) -> &ClipConfig;

    /// The tensor called `name`, checked to have `shape`, in `dtype` on `device`.
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor>;

    /// The parameter at `part`, under its canonical name and with its shape for this
    /// architecture, in `dtype` on `device`.
    fn part(&self, part: Part, dtype: DType, device: &Device) -> Result<Tensor> {
        self.tensor(&part.name(), &part.shape(self.config()), dtype, device)
    }
}

impl WeightSource for Checkpoint {
    fn config(&self) -> &ClipConfig {
        &self.config
    }

    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Checkpoint::tensor(self, name, shape, dtype, device)
    }
}

/// An opened checkpoint: memory-mapped weights plus the architecture they describe.
pub struct Checkpoint {
    /// The directory the checkpoint was opened from.
    pub dir: PathBuf,
    /// The safetensors file holding the weights.
    pub file: PathBuf,
    /// The detected key layout.
    pub layout: Layout,
    /// The architecture (from `config.json`, else inferred from tensor shapes).
    pub config: ClipConfig,
    /// Where the architecture came from, for `model info`.
    pub config_source: String,
    weights: MmapedSafetensors,
    shapes: HashMap<String, Vec<usize>>,
}

const WEIGHT_FILES: [&str; 3] = [
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.safetensors",
];

impl Checkpoint {
    /// Opens a checkpoint directory (or a `.safetensors` file directly).
    pub fn open(path: &Path) -> Result<Self> {
        let (dir, file) = if path.is_file() {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (dir, path.to_path_buf())
        } else if path.is_dir() {
            let file = WEIGHT_FILES
                .iter()
                .map(|f| path.join(f))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    anyhow!(
                        "{}: no weights file found (expected one of {})",
                        path.display(),
                        WEIGHT_FILES.join(", ")
                    )
                })?;
            (path.to_path_buf(), file)
        } else {
            bail!("{}: no such checkpoint directory or file", path.display());
        };
        // SAFETY: the file is mapped read-only; we never hand out mutable access and the
        // tool does not write checkpoints it has open.
        let weights = unsafe { MmapedSafetensors::new(&file) }.map_err(|e| {
            anyhow!(
                "{}: not a readable safetensors file (truncated or another format?): {e}",
                file.display()
            )
        })?;
        let shapes: HashMap<String, Vec<usize>> = weights
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        let layout = detect_layout(&shapes).with_context(|| format!("{}", file.display()))?;
        let hf_config = dir.join("config.json");
        // A config.json beside OpenAI-layout weights is honoured too: shapes alone cannot
        // tell the head count when a width is not a multiple of 64 (the demo CLIP's).
        let (config, config_source) = if hf_config.is_file() {
            (
                ClipConfig::from_hf_config(&hf_config)?,
                hf_config.display().to_string(),
            )
        } else {
            let cfg = infer_config(layout, &shapes)
                .with_context(|| format!("{}: cannot infer the architecture", file.display()))?;
            (cfg, "inferred from tensor shapes".to_string())
        };
        let ckpt = Checkpoint {
            dir,
            file,
            layout,
            config,
            config_source,
            weights,
            shapes,
        };
        ckpt.check_against_config()?;
        Ok(ckpt)
    }

    /// Number of parameters stored in the file.
    pub fn parameter_count(&self) -> usize {
        self.shapes.values().map(|s| s.iter().product::<usize>()).sum()
    }

    /// Loads the tensor with canonical (Hugging Face) name `name`, checking its shape.
    pub fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let t = match self.layout {
            Layout::HuggingFace => self.raw(name, shape)?,
            Layout::OpenAi => self.openai_tensor(name, shape)?,
        };
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    fn raw(&self, key: &str, expected: &[usize]) -> Result<Tensor> {
        let found = self.shapes.get(key).ok_or_else(|| {
            anyhow!(
                "{}: missing tensor `{key}` ({} layout)",
                self.file.display(),
                self.layout
            )
        })?;
        if found.as_slice() != expected {
            bail!(
                "{}: tensor `{key}` has shape {found:?}, expected {expected:?} for the architecture from {}",
                self.file.display(),
                self.config_source
            );
        }
        let t = self
            .weights
            .load(key, &Device::Cpu)
            .map_err(|e| anyhow!("{}: cannot read tensor `{key}`: {e}", self.file.display()))?;
        Ok(t)
    }

    fn openai_tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match openai_slot(name)? {
            OpenAiSlot::Same(key) => self.raw(&key, shape),
            OpenAiSlot::Transposed(key) => Ok(self.raw(&key, &[shape[1], shape[0]])?.t()?.contiguous()?),
            OpenAiSlot::Third(key, which) => {
                let mut full = shape.to_vec();
                full[0] *= 3;
                let t = self.raw(&key, &full)?;
                Ok(t.narrow(0, which * shape[0], shape[0])?.contiguous()?)
            }
        }
    }

    /// Checks the few shapes that pin the architecture, so a config that disagrees with the
    /// weights fails at open time with a message naming both.
    fn check_against_config(&self) -> Result<()> {
        let c = &self.config;
        let probes: Vec<(&str, Vec<usize>)> = vec![
            (
                "text_model.embeddings.token_embedding.weight",
                vec![c.text.vocab_size, c.text.width],
            ),
            (
                "text_model.embeddings.position_embedding.weight",
                vec![c.text.context_length, c.text.width],
            ),
            (
                "vision_model.embeddings.patch_embedding.weight",
                vec![c.vision.width, 3, c.vision.patch_size, c.vision.patch_size],
            ),
            (
                "vision_model.embeddings.position_embedding.weight",
                vec![c.vision.tokens(), c.vision.width],
            ),
            ("text_projection.weight", vec![c.embed_dim, c.text.width]),
            ("visual_projection.weight", vec![c.embed_dim, c.vision.width]),
        ];
        for (name, shape) in probes {
            match self.layout {
                Layout::HuggingFace => {
                    self.raw_shape_check(name, &shape)?;
                }
                Layout::OpenAi => {
                    self.openai_tensor(name, &shape)?;
                }
            }
        }
        for (tower, layers, prefix) in [
            ("text", c.text.layers, "text_model.encoder.layers"),
            ("vision", c.vision.layers, "vision_model.encoder.layers"),
        ] {
            let present = count_layers(&self.shapes, self.layout, tower);
            if present != layers {
                bail!(
                    "{}: the architecture from {} has {layers} {tower} layers, the weights have {present} (`{prefix}.N`)",
                    self.file.display(),
                    self.config_source
                );
            }
        }
        Ok(())
    }

    fn raw_shape_check(&self, key: &str, expected: &[usize]) -> Result<()> {
        match self.shapes.get(key) {
            None => bail!(
                "{}: missing tensor `{key}` ({} layout)",
                self.file.display(),
                self.layout
            ),
            Some(found) if found.as_slice() != expected => bail!(
                "{}: tensor `{key}` has shape {found:?}, expected {expected:?} for the architecture from {}",
                self.file.display(),
                self.config_source
            ),
            Some(_) => Ok(()),
        }
    }
}

/// Where a canonical (Hugging Face) parameter lives in OpenAI's state dict: the one
/// translation between the two namings, used to read ([`Checkpoint::tensor`]) and to write
/// ([`super::weights::ClipWeights::save_openai`]) that layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenAiSlot {
    /// The same tensor under another key.
    Same(String),
    /// The transpose of the tensor under this key (the two projections).
    Transposed(String),
    /// Rows `[i·n, (i+1)·n)` of the fused q/k/v tensor under this key (i = 0, 1, 2 for q, k, v).
    Third(String, usize),
}

/// The OpenAI slot of canonical parameter `name`.
pub fn openai_slot(name: &str) -> Result<OpenAiSlot> {
    let (tower, rest) = if let Some(r) = name.strip_prefix("text_model.") {
        ("", r)
    } else if let Some(r) = name.strip_prefix("vision_model.") {
        ("visual.", r)
    } else {
        return Ok(match name {
            "logit_scale" => OpenAiSlot::Same("logit_scale".into()),
            "text_projection.weight" => OpenAiSlot::Transposed("text_projection".into()),
            "visual_projection.weight" => OpenAiSlot::Transposed("visual.proj".into()),
            _ => bail!("no OpenAI key for `{name}`"),
        });
    };
    if let Some(layer_rest) = rest.strip_prefix("encoder.layers.") {
        let (idx, param) = layer_rest
            .split_once('.')
            .ok_or_else(|| anyhow!("malformed key `{name}`"))?;
        let base = format!("{tower}transformer.resblocks.{idx}.");
        if let Some(qkv) = param.strip_prefix("self_attn.") {
            let third =
                |which: usize, suffix: &str| OpenAiSlot::Third(format!("{base}attn.in_proj_{suffix}"), which);
            match qkv {
                "q_proj.weight" => return Ok(third(0, "weight")),
                "k_proj.weight" => return Ok(third(1, "weight")),
                "v_proj.weight" => return Ok(third(2, "weight")),
                "q_proj.bias" => return Ok(third(0, "bias")),
                "k_proj.bias" => return Ok(third(1, "bias")),
                "v_proj.bias" => return Ok(third(2, "bias")),
                _ => {}
            }
        }
        let mapped = param
            .replace("self_attn.out_proj", "attn.out_proj")
            .replace("layer_norm1", "ln_1")
            .replace("layer_norm2", "ln_2")
            .replace("mlp.fc1", "mlp.c_fc")
            .replace("mlp.fc2", "mlp.c_proj");
        return Ok(OpenAiSlot::Same(format!("{base}{mapped}")));
    }
    let key = match (tower, rest) {
        ("", "embeddings.token_embedding.weight") => "token_embedding.weight",
        ("", "embeddings.position_embedding.weight") => "positional_embedding",
        ("", "final_layer_norm.weight") => "ln_final.weight",
        ("", "final_layer_norm.bias") => "ln_final.bias",
        ("visual.", "embeddings.position_embedding.weight") => "visual.positional_embedding",
        ("visual.", "embeddings.class_embedding") => "visual.class_embedding",
        ("visual.", "embeddings.patch_embedding.weight") => "visual.conv1.weight",
        ("visual.", "pre_layrnorm.weight") => "visual.ln_pre.weight",
        ("visual.", "pre_layrnorm.bias") => "visual.ln_pre.bias",
        ("visual.", "post_layernorm.weight") => "visual.ln_post.weight",
        ("visual.", "post_layernorm.bias") => "visual.ln_post.bias",
        _ => bail!("no OpenAI key for `{name}`"),
    };
    Ok(OpenAiSlot::Same(key.to_string()))
}

fn detect_layout(shapes: &HashMap<String, Vec<usize>>) -> Result<Layout> {
    if shapes.contains_key("text_model.embeddings.token_embedding.weight") {
        Ok(Layout::HuggingFace)
    } else if shapes.contains_key("token_embedding.weight") && shapes.contains_key("visual.proj") {
        Ok(Layout::OpenAi)
    } else if shapes.contains_key("token_embedding.weight") {
        bail!("OpenAI layout without `visual.proj`: only ViT image towers are supported (not ResNet)")
    } else {
        bail!(
            "not a CLIP checkpoint: neither `text_model.embeddings.token_embedding.weight` (Hugging Face) nor `token_embedding.weight` (OpenAI) is present"
        )
    }
}

fn count_layers(shapes: &HashMap<String, Vec<usize>>, layout: Layout, tower: &str) -> usize {
    let prefix = match (layout, tower) {
        (Layout::HuggingFace, "text") => "text_model.encoder.layers.",
        (Layout::HuggingFace, _) => "vision_model.encoder.layers.",
        (Layout::OpenAi, "text") => "transformer.resblocks.",
        (Layout::OpenAi, _) => "visual.transformer.resblocks.",
    };
    let mut layers: Vec<usize> = shapes
        .keys()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|r| r.split('.').next()?.parse().ok())
        .collect();
    layers.sort_unstable();
    layers.dedup();
    layers.len()
}

fn shape_of<'a>(shapes: &'a HashMap<String, Vec<usize>>, key: &str) -> Result<&'a [usize]> {
    shapes
        .get(key)
        .map(Vec::as_slice)
        .ok_or_else(|| anyhow!("missing tensor `{key}`"))
}

/// Infers the architecture from tensor shapes, as OpenAI's `build_model` does
/// (heads = width / 64).
fn infer_config(layout: Layout, shapes: &HashMap<String, Vec<usize>>) -> Result<ClipConfig> {
    let names: [&str; 6] = match layout {
        Layout::OpenAi => [
            "token_embedding.weight",
            "positional_embedding",
            "visual.conv1.weight",
            "visual.positional_embedding",
            "text_projection",
            "transformer.resblocks.0.mlp.c_fc.weight",
        ],
        Layout::HuggingFace => [
            "text_model.embeddings.token_embedding.weight",
            "text_model.embeddings.position_embedding.weight",
            "vision_model.embeddings.patch_embedding.weight",
            "vision_model.embeddings.position_embedding.weight",
            "text_projection.weight",
            "text_model.encoder.layers.0.mlp.fc1.weight",
        ],
    };
    let tok = shape_of(shapes, names[0])?;
    let pos = shape_of(shapes, names[1])?;
    let conv = shape_of(shapes, names[2])?;
    let vpos = shape_of(shapes, names[3])?;
    let tproj = shape_of(shapes, names[4])?;
    let fc = shape_of(shapes, names[5])?;
    let vfc_name = match layout {
        Layout::OpenAi => "visual.transformer.resblocks.0.mlp.c_fc.weight",
        Layout::HuggingFace => "vision_model.encoder.layers.0.mlp.fc1.weight",
    };
    let vfc = shape_of(shapes, vfc_name)?;
    if tok.len() != 2 || pos.len() != 2 || conv.len() != 4 || vpos.len() != 2 || tproj.len() != 2 {
        bail!("unexpected tensor ranks in the embedding tensors");
    }
    let t_width = tok[1];
    let v_width = conv[0];
    let patch = conv[2];
    let grid = ((vpos[0] - 1) as f64).sqrt().round() as usize;
    if grid * grid + 1 != vpos[0] {
        bail!(
            "vision positional embedding has {} rows, not a square grid plus one",
            vpos[0]
        );
    }
    let embed_dim = match layout {
        Layout::OpenAi => tproj[1],
        Layout::HuggingFace => tproj[0],
    };
    let cfg = ClipConfig {
        text: TextConfig {
            vocab_size: tok[0],
            width: t_width,
            layers: count_layers(shapes, layout, "text"),
            heads: (t_width / 64).max(1),
            mlp_width: fc[0],
            context_length: pos[0],
        },
        vision: VisionConfig {
            image_size: grid * patch,
            patch_size: patch,
            width: v_width,
            layers: count_layers(shapes, layout, "vision"),
            heads: (v_width / 64).max(1),
            mlp_width: vfc[0],
        },
        embed_dim,
        layer_norm_eps: 1e-5,
    };
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(layout: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-clip")
            .join(layout)
    }

    #[test]
    fn detects_both_layouts_and_the_same_architecture() {
        let hf = Checkpoint::open(&fixture("hf")).unwrap();
        let oa = Checkpoint::open(&fixture("openai")).unwrap();
        assert_eq!(hf.layout, Layout::HuggingFace);
        assert_eq!(oa.layout, Layout::OpenAi);
        assert_eq!(hf.config, oa.config);
        assert_eq!(oa.config_source, "inferred from tensor shapes");
    }

    #[test]
    fn openai_tensors_match_hf_tensors() {
        let hf = Checkpoint::open(&fixture("hf")).unwrap();
        let oa = Checkpoint::open(&fixture("openai")).unwrap();
        let c = &hf.config;
        let names: Vec<(String, Vec<usize>)> = vec![
            (
                "text_model.encoder.layers.1.self_attn.k_proj.weight".into(),
                vec![c.text.width, c.text.width],
            ),
            (
                "text_model.encoder.layers.1.self_attn.v_proj.bias".into(),
                vec![c.text.width],
            ),
            (
                "vision_model.encoder.layers.2.mlp.fc2.weight".into(),
                vec![c.vision.width, c.vision.mlp_width],
            ),
            ("vision_model.pre_layrnorm.bias".into(), vec![c.vision.width]),
            (
                "visual_projection.weight".into(),
                vec![c.embed_dim, c.vision.width],
            ),
            ("text_projection.weight".into(), vec![c.embed_dim, c.text.width]),
            ("logit_scale".into(), vec![]),
        ];
        for (n, s) in names {
            let a = hf.tensor(&n, &s, DType::F32, &Device::Cpu).unwrap();
            let b = oa.tensor(&n, &s, DType::F32, &Device::Cpu).unwrap();
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{n}");
        }
    }

    fn err_of(dir: &Path) -> String {
        match Checkpoint::open(dir) {
            Ok(_) => panic!("expected an error for {}", dir.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn truncated_and_foreign_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(fixture("hf").join("model.safetensors")).unwrap();
        std::fs::write(tmp.path().join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
        let e = err_of(tmp.path());
        assert!(
            e.contains("model.safetensors") && e.contains("safetensors"),
            "{e}"
        );
        std::fs::write(tmp.path().join("model.safetensors"), b"PK\x03\x04 a zip file").unwrap();
        let e = err_of(tmp.path());
        assert!(e.contains("model.safetensors"), "{e}");
        let e = err_of(&tmp.path().join("nope"));
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn config_disagreeing_with_weights_names_both() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture("hf").join("model.safetensors"),
            tmp.path().join("model.safetensors"),
        )
        .unwrap();
        let cfg = std::fs::read_to_string(fixture("hf").join("config.json")).unwrap();
        let cfg = cfg.replace("\"hidden_size\": 64", "\"hidden_size\": 128");
        std::fs::write(tmp.path().join("config.json"), cfg).unwrap();
        let e = err_of(tmp.path());
        assert!(e.contains("text_model.embeddings.token_embedding.weight"), "{e}");
        assert!(e.contains("config.json"), "{e}");
    }

    #[test]
    fn missing_tensor_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let src = fixture("hf").join("model.safetensors");
        let all = candle_core::safetensors::load(&src, &Device::Cpu).unwrap();
        let kept: HashMap<String, Tensor> = all
            .into_iter()
            .filter(|(k, _)| k != "visual_projection.weight")
            .collect();
        candle_core::safetensors::save(&kept, tmp.path().join("model.safetensors")).unwrap();
        std::fs::copy(fixture("hf").join("config.json"), tmp.path().join("config.json")).unwrap();
        let e = err_of(tmp.path());
        assert!(e.contains("missing tensor `visual_projection.weight`"), "{e}");
    }
}

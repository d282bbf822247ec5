//! Loading what a configuration names: the dataset and its federated split, the CLIP
//! checkpoint (or a random model of a published size), its tokenizer, and the image
//! pipeline at the model's input size.

use std::sync::Arc;

use anyhow::Result;

use super::config::RunConfig;
use crate::clip::tokenizer::ClipTokenizer;
use crate::clip::{Checkpoint, Clip, LoadOptions};
use crate::data::transforms::Transform;
use crate::data::{Dataset, Partition};

/// Everything a run directory's configuration loads: data, split, model, tokenizer.
pub struct Loaded {
    /// The resolved configuration.
    pub cfg: RunConfig,
    /// The dataset.
    pub ds: Arc<Dataset>,
    /// Its federated split.
    pub partition: Partition,
    /// The opened checkpoint (for the feature-cache fingerprint); None for a random
    /// model (`--model random:vit-b16`, benchmarks), whose frozen image features are
    /// random unit vectors instead of encoded images.
    pub ck: Option<Checkpoint>,
    /// CLIP.
    pub clip: Clip,
    /// CLIP's tokenizer.
    pub tok: ClipTokenizer,
    /// The image pipeline.
    pub transform: Transform,
}

/// Loads data, split, model and tokenizer of a configuration.
pub fn load(cfg: RunConfig) -> Result<Loaded> {
    let device = crate::device::parse_device(&cfg.device)?;
    let (ds, partition) = cfg.data.load()?;
    let (ck, mut clip, tok) = match cfg.model.to_str().and_then(|m| m.strip_prefix("random:")) {
        Some(arch) => {
            // CLIP's real vocabulary, compiled into the binary.
            (
                None,
                crate::clip::random::clip(arch, 1, &device)?,
                ClipTokenizer::clip_bpe()?,
            )
        }
        None => {
            let dir = super::demo_model::resolve(&cfg.model)?;
            let ck = Checkpoint::open(&dir)?;
            let clip = Clip::from_checkpoint(
                &ck,
                &LoadOptions {
                    device,
                    ..LoadOptions::default()
                },
            )?;
            (Some(ck), clip, ClipTokenizer::from_dir(&dir)?)
        }
    };
    clip.prepare_frozen()?;
    // The model's own input size (224 for the published CLIPs, 32 for the demo CLIP).
    let transform = Transform::at(
        cfg.transform.unwrap_or(cfg.data.dataset.default_transform()),
        clip.config.vision.image_size as u32,
    );
    Ok(Loaded {
        cfg,
        ds: Arc::new(ds),
        partition,
        ck,
        clip,
        tok,
        transform,
    })
}

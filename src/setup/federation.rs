//! The federation of a loaded configuration (PEFT parameters, zero-shot teacher, frozen
//! image features through the feature cache), the algorithm it names, and what a summary
//! says it is of.

use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Tensor;

use super::config::{LoraEncoder, PeftKind, RunConfig};
use super::load::Loaded;
use super::progress::{Event, Progress};
use crate::clip::text::PromptBatch;
use crate::clip::zeroshot::ZeroShotHead;
use crate::data::dataset::SplitKind;
use crate::data::features::{cached_split_features, EncodeRequest};
use crate::data::transforms::Mode;
use crate::fed::algorithm::Algorithm;
use crate::fed::federation::Federation;
use crate::fed::registry;
use crate::peft::lora::LoraSpec;
use crate::peft::model::{Peft, TextLora};
use crate::peft::prompt::PromptLearner;
use crate::report::run_dir::RunIdentity;

/// The federation of a loaded configuration: PEFT, zero-shot teacher, frozen features
/// (encoded once into the feature cache; `progress` hears when).
pub fn federation<'l>(l: &'l Loaded, progress: &dyn Progress) -> Result<Federation<'l>> {
    let cfg = &l.cfg;
    let classes = l.ds.prompt_names();
    let zs = ZeroShotHead::build(&l.clip, &l.tok, &classes, &cfg.template)?;
    let fixed = ZeroShotHead::build(&l.clip, &l.tok, &classes, "a photo of a {}.")?.text_features;
    let peft = match cfg.peft {
        PeftKind::Prompt => {
            let learner = PromptLearner::new(&l.clip, &l.tok, &classes, cfg.n_ctx, cfg.class_specific)?;
            Peft::Prompt(match &cfg.ctx_init {
                Some(words) => learner.with_word_init(&l.clip, &l.tok, words)?,
                None => learner,
            })
        }
        PeftKind::Lora => {
            let text_lora = if cfg.lora_encoder == LoraEncoder::Vision {
                None
            } else {
                let prompts: Vec<String> = classes.iter().map(|c| format!("a photo of a {c}.")).collect();
                let toks = l.tok.encode_batch(&prompts)?;
                let ids: Vec<Vec<u32>> = toks.iter().map(|t| t.ids.clone()).collect();
                Some(TextLora {
                    prompts: PromptBatch {
                        embeddings: l.clip.text.embed_tokens(&ids)?,
                        eot: toks.iter().map(|t| t.eot).collect(),
                    },
                })
            };
            Peft::Lora {
                spec: LoraSpec {
                    rank: cfg.lora_rank,
                    alpha: 2.0 * cfg.lora_rank as f64,
                    ..LoraSpec::default()
                },
                vision: cfg.lora_encoder != LoraEncoder::Text,
                text_lora,
                text: fixed,
            }
        }
        PeftKind::Adapter => Peft::Adapter { text: fixed },
    };
    let encode = |split, idx: &[usize], views: usize| {
        let Some(ck) = &l.ck else {
            return random_features(split, idx, views, l.clip.config.embed_dim, l.clip.device());
        };
        // Augmented views of the training images (an augmenting transform with --views);
        // otherwise the deterministic pipeline, whose train and test outputs are the same.
        let augment = split == SplitKind::Train && !l.transform.is_deterministic(Mode::Train);
        let req = EncodeRequest {
            split,
            indices: Some(idx.to_vec()),
            transform: l.transform,
            mode: if augment { Mode::Train } else { Mode::Test },
            views: views.max(1),
            seed: cfg.data.seed,
            batch_size: 64,
        };
        progress.report(Event::Encoding {
            split,
            images: idx.len(),
        });
        let r = cached_split_features(&cfg.cache_dir, &ck.file, &l.clip, &l.ds, &req).map(|(t, _)| t);
        progress.report(Event::Encoded);
        r
    };
    Federation::new(
        &l.clip,
        peft,
        Arc::clone(&l.ds),
        l.partition.clone(),
        l.transform,
        zs.text_features,
        cfg.train.clone(),
        encode,
    )
}

/// Stand-in frozen features of a random model: a N(0, 1) vector per image and view,
/// seeded by split, view and index (so a subset sees the same rows as the whole),
/// view-major.
fn random_features(
    split: SplitKind,
    idx: &[usize],
    views: usize,
    dim: usize,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let salt = if split == SplitKind::Train { 0 } else { 1 << 40 };
    let rows = (0..views.max(1) as u64)
        .flat_map(|v| idx.iter().map(move |&i| salt + (v << 48) + i as u64))
        .map(|key| crate::clip::random::normal(&[1, dim], key, 1.0, dev))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}

/// The algorithm a loaded configuration names, checked against its PEFT kind.
pub fn algorithm(cfg: &RunConfig, fed: &Federation) -> Result<Box<dyn Algorithm>> {
    registry::build(&cfg.algorithm, &cfg.baselines, fed.peft().kind())
        .with_context(|| format!("--algorithm {} with --peft {:?}", cfg.algorithm, cfg.peft).to_lowercase())
}

/// What a summary says it is of.
pub fn identity(l: &Loaded, algo: &dyn Algorithm) -> RunIdentity {
    RunIdentity {
        algorithm: algo.name(),
        peft: format!("{:?}", l.cfg.peft).to_lowercase(),
        seed: l.cfg.train.seed,
        split: l.partition.fingerprint(),
        pm_protocol: algo.pm_rule().describe(),
    }
}

//! `fedpurel run`: train and evaluate FedPuReL (or a baseline, `--algorithm`) on a
//! federated long-tailed split, leaving a
//! run directory (config.toml, metrics.jsonl, summary.json/.md, checkpoints/). Re-running
//! the same command on the same `--out` resumes after the last completed round.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::data_args::DataArgs;
use super::run_config::{resolve, RunConfig};
use crate::clip::text::PromptBatch;
use crate::clip::tokenizer::ClipTokenizer;
use crate::clip::zeroshot::ZeroShotHead;
use crate::clip::{Checkpoint, Clip, LoadOptions};
use crate::data::dataset::SplitKind;
use crate::data::features::{cached_split_features, EncodeRequest};
use crate::data::transforms::{Mode, Transform, TransformKind};
use crate::data::{Dataset, Partition};
use crate::fed::algorithm::{registry, Algorithm};
use crate::fed::local::AlignLoss;
use crate::fed::train::Federation;
use crate::peft::lora::LoraSpec;
use crate::peft::model::{Peft, TextLora};
use crate::peft::prompt::PromptLearner;
use crate::report::run_dir::{summarize, summary_markdown, ModelSummary, RunDir, RunIdentity, Summary};
use candle_core::Tensor;

/// Which parameter-efficient fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeftKind {
    /// CoOp context vectors (n_ctx = 4, shared).
    Prompt,
    /// LoRA on the vision encoder's q, k, v (rank 8, α 16, scale α/√r, dropout 0.25).
    Lora,
    /// The gated image-feature adapter.
    Adapter,
}

/// Which encoders carry LoRA adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LoraEncoder {
    /// The image tower (the reference's choice).
    #[default]
    Vision,
    /// The text tower (image features stay frozen and cached).
    Text,
    /// Both towers.
    Both,
}

/// Arguments of `fedpurel run`. With `--preset` or `--config`, only the flags typed on the
/// command line override the base; the defaults shown here apply otherwise.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Start from a named preset (e.g. cifar100-lt-prompt, places-lt-lora-reference-code).
    #[arg(long)]
    pub preset: Option<String>,
    /// Start from a configuration file (e.g. a run directory's config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Federated algorithm: zeroshot, fedpurel, fedpurel-kl, fedpurel-nopurify,
    /// fedpurel-fusion, promptfl, promptfl+la, promptfl+la-posthoc, promptfl+fedgrab,
    /// promptfolio, promptfolio+fedgrab.
    #[arg(long, default_value = "fedpurel")]
    pub algorithm: String,
    /// Dataset, long-tail cut and client split (as `fedpurel partition`).
    #[command(flatten)]
    pub data: DataArgs,
    /// CLIP checkpoint directory, or `random:vit-b16` (also vit-b32, vit-l14) for random
    /// weights at a published size with random frozen image features (benchmarks).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// PEFT kind.
    #[arg(long, value_enum, default_value = "prompt")]
    pub peft: PeftKind,
    /// Communication rounds.
    #[arg(long, default_value_t = 100)]
    pub rounds: usize,
    /// Fraction of clients sampled per round after round 0.
    #[arg(long, default_value_t = 0.4)]
    pub frac: f64,
    /// Local batch size.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Learning rate of both stages.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// λ of stage 2 (weight of the personal CE; the paper's 0.9, the code's 0.99).
    #[arg(long, default_value_t = 0.9)]
    pub lambda: f64,
    /// Purification strength (0 disables the projection).
    #[arg(long, default_value_t = 1.0)]
    pub lambda_proj: f64,
    /// Stage-1 alignment loss.
    #[arg(long, value_enum, default_value = "tkl")]
    pub align: AlignLoss,
    /// Carry the stage-1 momentum across clients and rounds, as the reference code does.
    #[arg(long)]
    pub carry_momentum: bool,
    /// Prompt context vectors.
    #[arg(long, default_value_t = 4)]
    pub n_ctx: usize,
    /// Initialize the prompt context from words, e.g. "a photo of a" (as many tokens as
    /// --n-ctx).
    #[arg(long)]
    pub ctx_init: Option<String>,
    /// One prompt context per class (CoOp's class-specific context).
    #[arg(long)]
    pub class_specific: bool,
    /// LoRA rank (α = 2·rank).
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// Encoders with LoRA adapters.
    #[arg(long, value_enum, default_value = "vision")]
    pub lora_encoder: LoraEncoder,
    /// Image pipeline at the model's input size (default: the dataset's: cifar for
    /// CIFAR-100 and synthetic, native for world, clip else).
    #[arg(long, value_enum)]
    pub transform: Option<TransformKind>,
    /// With an augmenting train transform (clip): encode this many augmented views of each
    /// training image once, cached, and let each step take one per sample; 0 augments and
    /// encodes live (the reference's protocol). No effect with a deterministic transform
    /// or with LoRA on the image tower.
    #[arg(long, default_value_t = 0)]
    pub views: usize,
    /// Zero-shot prompt template.
    #[arg(long, default_value = "a photo of a {}.")]
    pub template: String,
    /// Run directory.
    #[arg(long, default_value = "runs/latest")]
    pub out: PathBuf,
    /// Image-feature cache directory.
    #[arg(long, default_value = "runs/feature-cache")]
    pub cache_dir: PathBuf,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Test images per evaluation batch.
    #[arg(long, default_value_t = 256)]
    pub eval_batch: usize,
    /// Logit-adjustment strength τ (promptfl+la, promptfl+la-posthoc).
    #[arg(long, default_value_t = 1.0)]
    pub la_tau: f64,
    /// PromptFolio's weight θ of the local prompt (promptfolio*, fedpurel-fusion).
    #[arg(long, default_value_t = 0.4)]
    pub folio_theta: f64,
    /// Weight of the alignment loss added to CE (fedpurel-nopurify).
    #[arg(long, default_value_t = 1.0)]
    pub align_weight: f64,
}

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
    let (ck, clip, tok) = match cfg.model.to_str().and_then(|m| m.strip_prefix("random:")) {
        Some(arch) => {
            // CLIP's real vocabulary, shipped with the test fixtures.
            let tok_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/hf");
            let tok = ClipTokenizer::from_dir(&tok_dir).with_context(|| {
                format!("a random model takes CLIP's tokenizer from {}", tok_dir.display())
            })?;
            (None, crate::clip::random::clip(arch, 1, &device)?, tok)
        }
        None => {
            let ck = Checkpoint::open(&cfg.model)?;
            let clip = Clip::from_checkpoint(
                &ck,
                &LoadOptions {
                    device,
                    ..LoadOptions::default()
                },
            )?;
            (Some(ck), clip, ClipTokenizer::from_dir(&cfg.model)?)
        }
    };
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

/// The federation of a loaded configuration: PEFT, zero-shot teacher, frozen features.
pub fn federation(l: &Loaded) -> Result<Federation<'_>> {
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
        let spinner = ProgressBar::new_spinner().with_message(format!(
            "encoding {} {split} images (cached after the first run)",
            idx.len()
        ));
        spinner.enable_steady_tick(std::time::Duration::from_millis(200));
        let r = cached_split_features(&cfg.cache_dir, &ck.file, &l.clip, &l.ds, &req).map(|(t, _)| t);
        spinner.finish_and_clear();
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
    registry(&cfg.algorithm, &cfg.baselines, fed.peft())
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

/// Runs `fedpurel run`; `matches` tells which flags were typed (for preset overrides).
pub fn run(args: RunArgs, matches: Option<&clap::ArgMatches>) -> Result<()> {
    let cfg = resolve(&args, matches)?;
    let out = cfg.out.clone();
    let (summary, zeroshot_pm) = execute(cfg, true)?;
    println!("{}", summary_markdown(&summary, &zeroshot_pm));
    println!("run directory: {}", out.display());
    Ok(())
}

/// Trains and evaluates a resolved configuration in its run directory, resuming after
/// the last completed round; returns the summary and the zero-shot PM line.
pub fn execute(cfg: RunConfig, progress: bool) -> Result<(Summary, ModelSummary)> {
    let dir = RunDir::new(&cfg.out);
    let _lock = dir.lock()?;
    dir.check_config(&cfg)?;
    let loaded = load(cfg)?;
    let cfg = &loaded.cfg;
    let fed = federation(&loaded)?;
    let algo = algorithm(cfg, &fed)?;
    // Only a configuration that loads is recorded, so a corrected command is not
    // refused as "another run" because of a failed attempt.
    dir.write_config(cfg, true)?;
    let zeroshot = fed.evaluate_zero_shot()?;
    crate::faults::point("setup-done");
    let fresh = fed.initial_state()?;
    let mut state = match dir.load_state(loaded.clip.device())? {
        Some(s) => {
            s.global.check_compatible(&fresh.global).map_err(|e| {
                e.context(format!(
                    "{}: the checkpoint does not fit this model and data",
                    cfg.out.display()
                ))
            })?;
            if s.private.len() != fresh.private.len() {
                anyhow::bail!(
                    "{}: the checkpoint has {} clients, the split {}",
                    cfg.out.display(),
                    s.private.len(),
                    fresh.private.len()
                );
            }
            if progress {
                eprintln!("resuming {} after round {}", cfg.out.display(), s.rounds_done);
            }
            s
        }
        None => fresh,
    };
    let mut records = dir.read_records(state.rounds_done)?;
    if records.len() != state.rounds_done {
        anyhow::bail!(
            "{}: metrics.jsonl has {} rounds, the checkpoint {}",
            cfg.out.display(),
            records.len(),
            state.rounds_done
        );
    }
    let bar = if progress {
        ProgressBar::new(cfg.train.rounds as u64)
    } else {
        ProgressBar::hidden()
    }
    .with_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} rounds  {msg}")
            .context("progress template")?,
    );
    bar.set_prefix(algo.name());
    bar.set_position(state.rounds_done as u64);
    while state.rounds_done < cfg.train.rounds {
        let t = state.rounds_done;
        let rec = fed.run_round(&mut state, algo.as_ref(), &|phase| {
            bar.set_message(format!("round {t}: {phase}"))
        })?;
        bar.set_message(format!(
            "GM {:.2} PM {:.2}",
            rec.gm.accuracy.all, rec.pm.accuracy.all
        ));
        records.push(rec);
        dir.write_records(&records)?;
        crate::faults::point("metrics-written");
        dir.save_state(&state)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    crate::faults::point("training-done");
    let summary = dir.write_summary(&identity(&loaded, algo.as_ref()), &records, &zeroshot)?;
    Ok((summary, summarize(&[&zeroshot.1])))
}

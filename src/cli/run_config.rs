//! The resolved configuration of `fedpurel run`: a preset or a TOML file as the base,
//! command-line flags on top (only those typed on the command line override). The result
//! is written to the run directory as `config.toml`, which `--config` reads back, so a
//! run directory says exactly how to reproduce itself.
//!
//! Presets (`--preset`), the paper's settings — IF 100, 20 clients, 40 % sampled, 100
//! rounds, Dirichlet α = 1, seed 1, λ = 0.9, fresh optimizer state per client:
//! `{cifar100-lt, imagenet-lt, places-lt}-{prompt, lora, adapter}`; each with a
//! `-reference-code` variant reproducing the authors' script where it differs from the
//! paper (λ = 0.99, stage-1 momentum carried across clients, soft distillation instead
//! of TKL for the adapter).
//!
//! `demo` and `demo-quick` are the synthetic world's federated task (`--dataset world`,
//! prompt tuning, the demo CLIP in `assets/demo-clip` unless `--model` says otherwise):
//! the paper's protocol (IF 100, Dirichlet α = 1, 40 % sampled, λ = 0.9, the paper's
//! optimizer) at a size a 2-core CPU runs in minutes — `demo`: 20 clients, 300 training
//! images per class before the cut (3 931 after), 50 test images per class, 25 rounds;
//! `demo-quick`: 10 clients, 200 per class (2 614 after), 20 test images per class,
//! 6 rounds.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::{Deserialize, Serialize};

use super::data_args::DataArgs;
use super::run::{LoraEncoder, PeftKind, RunArgs};
use crate::data::source::DatasetName;
use crate::data::transforms::TransformKind;
use crate::data::world::Domain;
use crate::fed::algorithm::{names as algorithm_names, AlgorithmSettings};
use crate::fed::local::AlignLoss;
use crate::fed::sgd::SgdConfig;
use crate::fed::train::TrainSettings;

/// Everything a run depends on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The federated algorithm (see `fedpurel run --help`).
    pub algorithm: String,
    /// Dataset, long-tail cut and split.
    pub data: DataArgs,
    /// CLIP checkpoint directory.
    pub model: PathBuf,
    /// PEFT kind.
    pub peft: PeftKind,
    /// Prompt context vectors.
    pub n_ctx: usize,
    /// Initialize the prompt context from these words (CoOp's CTX_INIT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx_init: Option<String>,
    /// One context per class (CoOp's CSC) instead of a shared one.
    #[serde(default)]
    pub class_specific: bool,
    /// LoRA rank (α = 2·rank).
    pub lora_rank: usize,
    /// Encoders with LoRA adapters.
    #[serde(default)]
    pub lora_encoder: LoraEncoder,
    /// Image pipeline (None: the dataset's default).
    pub transform: Option<TransformKind>,
    /// Zero-shot template.
    pub template: String,
    /// Optimization and federation settings.
    pub train: TrainSettings,
    /// Hyper-parameters of the baselines and ablations.
    #[serde(default)]
    pub baselines: AlgorithmSettings,
    /// Run directory.
    pub out: PathBuf,
    /// Feature-cache directory.
    pub cache_dir: PathBuf,
    /// Device.
    pub device: String,
}

/// Default model directory of the demo presets (the demo CLIP, pretrained on the world).
pub const DEMO_MODEL: &str = "assets/demo-clip";

/// Names accepted by `--preset`.
pub fn preset_names() -> Vec<String> {
    let mut out = vec!["demo".to_string(), "demo-quick".to_string()];
    for d in ["cifar100-lt", "imagenet-lt", "places-lt"] {
        for p in ["prompt", "lora", "adapter"] {
            out.push(format!("{d}-{p}"));
            out.push(format!("{d}-{p}-reference-code"));
        }
    }
    out
}

fn paper_train(seed: u64) -> TrainSettings {
    TrainSettings {
        rounds: 100,
        frac: 0.4,
        batch_size: 32,
        stage1: SgdConfig {
            lr: 1e-3,
            momentum: 0.9,
            weight_decay: 5e-4,
        },
        carry_momentum: false,
        stage2: SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            weight_decay: 0.0,
        },
        lambda: 0.9,
        lambda_proj: 1.0,
        align: AlignLoss::Tkl,
        seed,
        eval_batch: 256,
        views: 0,
    }
}

/// The demo presets: the world's downstream task at full (`quick` false) or reduced size.
/// `model` empty means [`DEMO_MODEL`].
pub fn demo_preset(quick: bool, model: &Path, out: &Path, cache: &Path) -> RunConfig {
    let (clients, train_per_class, test_per_class, rounds) = if quick {
        (10, 200, 20, 6)
    } else {
        (20, 300, 50, 25)
    };
    let mut train = paper_train(1);
    train.rounds = rounds;
    let model = if model.as_os_str().is_empty() {
        PathBuf::from(DEMO_MODEL)
    } else {
        model.to_path_buf()
    };
    RunConfig {
        algorithm: "fedpurel".into(),
        data: DataArgs {
            dataset: DatasetName::World,
            imb_factor: Some(100.0),
            clients,
            world_train_per_class: train_per_class,
            world_test_per_class: test_per_class,
            ..base_data(DatasetName::World)
        },
        model,
        train,
        out: out.to_path_buf(),
        cache_dir: cache.to_path_buf(),
        ..base_config(PeftKind::Prompt)
    }
}

/// Data flags at their defaults for `dataset`.
fn base_data(dataset: DatasetName) -> DataArgs {
    DataArgs {
        dataset,
        root: None,
        imb_factor: None,
        clients: 20,
        alpha: 1.0,
        seed: 1,
        split: None,
        client_test: None,
        split_file: None,
        test_fraction: 0.5,
        no_image_check: false,
        synthetic_classes: 100,
        synthetic_train_per_class: 500,
        synthetic_test_per_class: 100,
        world_train_per_class: 500,
        world_test_per_class: 50,
        world_domain: Domain::Downstream,
        world_seed: 0,
    }
}

/// The paper's settings for `peft` on CIFAR-100-LT (data and paths to be filled in).
fn base_config(peft: PeftKind) -> RunConfig {
    RunConfig {
        algorithm: "fedpurel".into(),
        data: DataArgs {
            imb_factor: Some(100.0),
            ..base_data(DatasetName::Cifar100)
        },
        model: PathBuf::new(),
        peft,
        n_ctx: 4,
        ctx_init: None,
        class_specific: false,
        lora_rank: 8,
        lora_encoder: LoraEncoder::Vision,
        transform: None,
        template: "a photo of a {}.".into(),
        train: paper_train(1),
        baselines: AlgorithmSettings::default(),
        out: PathBuf::new(),
        cache_dir: PathBuf::new(),
        device: "cpu".into(),
    }
}

/// The preset called `name`, with the default paths of `args` (model, out, cache).
pub fn preset(name: &str, model: &Path, out: &Path, cache: &Path) -> Result<RunConfig> {
    match name {
        "demo" => return Ok(demo_preset(false, model, out, cache)),
        "demo-quick" => return Ok(demo_preset(true, model, out, cache)),
        _ => {}
    }
    let (base, reference) = match name.strip_suffix("-reference-code") {
        Some(b) => (b, true),
        None => (name, false),
    };
    let (dataset, peft) = base.rsplit_once('-').ok_or_else(|| {
        anyhow!(
            "unknown preset `{name}`; valid presets: {}",
            preset_names().join(", ")
        )
    })?;
    let peft = match peft {
        "prompt" => PeftKind::Prompt,
        "lora" => PeftKind::Lora,
        "adapter" => PeftKind::Adapter,
        _ => bail!(
            "unknown preset `{name}`; valid presets: {}",
            preset_names().join(", ")
        ),
    };
    let (dataset, imb) = match dataset {
        "cifar100-lt" => (DatasetName::Cifar100, Some(100.0)),
        "imagenet-lt" => (DatasetName::ImagenetLt, None),
        "places-lt" => (DatasetName::PlacesLt, None),
        _ => bail!(
            "unknown preset `{name}`; valid presets: {}",
            preset_names().join(", ")
        ),
    };
    let mut train = paper_train(1);
    if reference {
        train.lambda = 0.99;
        train.carry_momentum = true;
        if peft == PeftKind::Adapter {
            train.align = AlignLoss::SoftDistillation;
        }
    }
    Ok(RunConfig {
        data: DataArgs {
            imb_factor: imb,
            ..base_data(dataset)
        },
        model: model.to_path_buf(),
        train,
        out: out.to_path_buf(),
        cache_dir: cache.to_path_buf(),
        ..base_config(peft)
    })
}

/// Reads a configuration file (e.g. a run directory's `config.toml`).
pub fn read_config(path: &Path) -> Result<RunConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse_config(&text, path)
}

/// Parses and validates the text of a configuration file; `path` names it in errors.
pub fn parse_config(text: &str, path: &Path) -> Result<RunConfig> {
    let c: RunConfig = toml::from_str(text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    validate(&c).with_context(|| format!("{}", path.display()))?;
    Ok(c)
}

fn from_args(a: &RunArgs) -> RunConfig {
    let mut train = paper_train(a.data.seed);
    train.rounds = a.rounds;
    train.frac = a.frac;
    train.batch_size = a.batch_size;
    train.stage1.lr = a.lr;
    train.stage2.lr = a.lr;
    train.lambda = a.lambda;
    train.lambda_proj = a.lambda_proj;
    train.align = a.align;
    train.carry_momentum = a.carry_momentum;
    train.eval_batch = a.eval_batch;
    train.views = a.views;
    RunConfig {
        algorithm: a.algorithm.clone(),
        data: a.data.clone(),
        model: a.model.clone().unwrap_or_default(),
        peft: a.peft,
        n_ctx: a.n_ctx,
        ctx_init: a.ctx_init.clone(),
        class_specific: a.class_specific,
        lora_rank: a.lora_rank,
        lora_encoder: a.lora_encoder,
        transform: a.transform,
        template: a.template.clone(),
        train,
        baselines: AlgorithmSettings {
            la_tau: a.la_tau,
            folio_theta: a.folio_theta,
            align_weight: a.align_weight,
            ..AlgorithmSettings::default()
        },
        out: a.out.clone(),
        cache_dir: a.cache_dir.clone(),
        device: a.device.clone(),
    }
}

/// The configuration of a `run` invocation: base (preset, file, or the flags' defaults),
/// then every flag given on the command line.
pub fn resolve(a: &RunArgs, m: Option<&ArgMatches>) -> Result<RunConfig> {
    let flags = from_args(a);
    let mut c = match (&a.preset, &a.config) {
        (Some(_), Some(_)) => bail!("--preset and --config both set: choose one base"),
        (Some(p), None) => preset(p, &flags.model, &flags.out, &flags.cache_dir)?,
        (None, Some(f)) => read_config(f)?,
        (None, None) => return finish(flags),
    };
    let given = |id: &str| m.is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine));
    macro_rules! take {
        ($($id:literal => $dst:expr, $src:expr;)*) => {
            $(if given($id) { $dst = $src; })*
        };
    }
    take! {
        "dataset" => c.data.dataset, flags.data.dataset;
        "root" => c.data.root, flags.data.root.clone();
        "imb_factor" => c.data.imb_factor, flags.data.imb_factor;
        "clients" => c.data.clients, flags.data.clients;
        "alpha" => c.data.alpha, flags.data.alpha;
        "seed" => c.data.seed, flags.data.seed;
        "split" => c.data.split, flags.data.split;
        "client_test" => c.data.client_test, flags.data.client_test;
        "split_file" => c.data.split_file, flags.data.split_file.clone();
        "test_fraction" => c.data.test_fraction, flags.data.test_fraction;
        "no_image_check" => c.data.no_image_check, flags.data.no_image_check;
        "synthetic_classes" => c.data.synthetic_classes, flags.data.synthetic_classes;
        "synthetic_train_per_class" => c.data.synthetic_train_per_class, flags.data.synthetic_train_per_class;
        "synthetic_test_per_class" => c.data.synthetic_test_per_class, flags.data.synthetic_test_per_class;
        "world_train_per_class" => c.data.world_train_per_class, flags.data.world_train_per_class;
        "world_test_per_class" => c.data.world_test_per_class, flags.data.world_test_per_class;
        "world_domain" => c.data.world_domain, flags.data.world_domain;
        "world_seed" => c.data.world_seed, flags.data.world_seed;
        "model" => c.model, flags.model.clone();
        "algorithm" => c.algorithm, flags.algorithm.clone();
        "peft" => c.peft, flags.peft;
        "n_ctx" => c.n_ctx, flags.n_ctx;
        "ctx_init" => c.ctx_init, flags.ctx_init.clone();
        "class_specific" => c.class_specific, flags.class_specific;
        "lora_rank" => c.lora_rank, flags.lora_rank;
        "lora_encoder" => c.lora_encoder, flags.lora_encoder;
        "transform" => c.transform, flags.transform;
        "template" => c.template, flags.template.clone();
        "rounds" => c.train.rounds, flags.train.rounds;
        "frac" => c.train.frac, flags.train.frac;
        "batch_size" => c.train.batch_size, flags.train.batch_size;
        "lambda" => c.train.lambda, flags.train.lambda;
        "lambda_proj" => c.train.lambda_proj, flags.train.lambda_proj;
        "align" => c.train.align, flags.train.align;
        "carry_momentum" => c.train.carry_momentum, flags.train.carry_momentum;
        "eval_batch" => c.train.eval_batch, flags.train.eval_batch;
        "views" => c.train.views, flags.train.views;
        "la_tau" => c.baselines.la_tau, flags.baselines.la_tau;
        "folio_theta" => c.baselines.folio_theta, flags.baselines.folio_theta;
        "align_weight" => c.baselines.align_weight, flags.baselines.align_weight;
        "out" => c.out, flags.out.clone();
        "cache_dir" => c.cache_dir, flags.cache_dir.clone();
        "device" => c.device, flags.device.clone();
    }
    if given("lr") {
        c.train.stage1.lr = a.lr;
        c.train.stage2.lr = a.lr;
    }
    c.train.seed = c.data.seed;
    finish(c)
}

fn finish(c: RunConfig) -> Result<RunConfig> {
    if c.model.as_os_str().is_empty() {
        bail!("no model: pass --model DIR (a CLIP checkpoint directory)");
    }
    if !algorithm_names().contains(&c.algorithm.as_str()) && c.algorithm != "fedgrab" {
        bail!(
            "unknown algorithm `{}`; available: {}",
            c.algorithm,
            algorithm_names().join(", ")
        );
    }
    validate(&c)?;
    Ok(c)
}

/// Refuses settings outside their meaningful range, naming the setting (as its flag and
/// its `config.toml` key) and the range expected.
pub fn validate(c: &RunConfig) -> Result<()> {
    let t = &c.train;
    let unit = |v: f64| (0.0..=1.0).contains(&v);
    let checks: [(bool, &str, String, &str); 13] = [
        (
            t.rounds >= 1,
            "--rounds (train.rounds)",
            t.rounds.to_string(),
            "at least 1",
        ),
        (
            t.frac > 0.0 && t.frac <= 1.0,
            "--frac (train.frac)",
            t.frac.to_string(),
            "in (0, 1]",
        ),
        (
            t.batch_size >= 1,
            "--batch-size (train.batch_size)",
            t.batch_size.to_string(),
            "at least 1",
        ),
        (
            t.eval_batch >= 1,
            "--eval-batch (train.eval_batch)",
            t.eval_batch.to_string(),
            "at least 1",
        ),
        (
            t.stage1.lr > 0.0 && t.stage1.lr.is_finite() && t.stage2.lr > 0.0 && t.stage2.lr.is_finite(),
            "--lr (train.stage1.lr, train.stage2.lr)",
            format!("{} / {}", t.stage1.lr, t.stage2.lr),
            "a finite number > 0",
        ),
        (
            (0.0..1.0).contains(&t.stage1.momentum) && (0.0..1.0).contains(&t.stage2.momentum),
            "momentum (train.stage1.momentum, train.stage2.momentum)",
            format!("{} / {}", t.stage1.momentum, t.stage2.momentum),
            "in [0, 1)",
        ),
        (
            t.stage1.weight_decay >= 0.0 && t.stage2.weight_decay >= 0.0,
            "weight decay (train.stage1.weight_decay, train.stage2.weight_decay)",
            format!("{} / {}", t.stage1.weight_decay, t.stage2.weight_decay),
            "≥ 0",
        ),
        (
            unit(t.lambda),
            "--lambda (train.lambda)",
            t.lambda.to_string(),
            "in [0, 1]",
        ),
        (
            t.lambda_proj >= 0.0 && t.lambda_proj.is_finite(),
            "--lambda-proj (train.lambda_proj)",
            t.lambda_proj.to_string(),
            "a finite number ≥ 0",
        ),
        (c.n_ctx >= 1, "--n-ctx (n_ctx)", c.n_ctx.to_string(), "at least 1"),
        (
            c.lora_rank >= 1,
            "--lora-rank (lora_rank)",
            c.lora_rank.to_string(),
            "at least 1",
        ),
        (
            unit(c.baselines.folio_theta),
            "--folio-theta (baselines.folio_theta)",
            c.baselines.folio_theta.to_string(),
            "in [0, 1]",
        ),
        (
            c.baselines.la_tau.is_finite()
                && c.baselines.align_weight >= 0.0
                && c.baselines.align_weight.is_finite(),
            "--la-tau / --align-weight (baselines.la_tau, baselines.align_weight)",
            format!("{} / {}", c.baselines.la_tau, c.baselines.align_weight),
            "finite, and the weight ≥ 0",
        ),
    ];
    for (ok, what, value, expected) in checks {
        if !ok {
            bail!("{what} is {value}; expected {expected}");
        }
    }
    if !c.template.contains("{}") {
        bail!(
            "--template (template) `{}` has no `{{}}` placeholder for the class name",
            c.template
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_cover_the_paper_grid_and_unknown_names_list_them() {
        for name in preset_names().into_iter().filter(|n| !n.starts_with("demo")) {
            let c = preset(&name, Path::new("m"), Path::new("o"), Path::new("c")).unwrap();
            assert_eq!(c.data.clients, 20);
            assert_eq!(c.train.rounds, 100);
            let reference = name.ends_with("reference-code");
            assert_eq!(c.train.lambda, if reference { 0.99 } else { 0.9 });
            assert_eq!(c.train.carry_momentum, reference);
        }
        let e = preset("cifar10-prompt", Path::new("m"), Path::new("o"), Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cifar100-lt-prompt") && e.contains("unknown preset"),
            "{e}"
        );
    }

    #[test]
    fn demo_presets_are_the_world_task_with_the_demo_model_by_default() {
        for (name, clients, rounds) in [("demo", 20, 25), ("demo-quick", 10, 6)] {
            let c = preset(name, Path::new(""), Path::new("o"), Path::new("c")).unwrap();
            assert_eq!(c.data.dataset, DatasetName::World);
            assert_eq!(c.data.imb_factor, Some(100.0));
            assert_eq!(c.data.alpha, 1.0);
            assert_eq!((c.data.clients, c.train.rounds), (clients, rounds));
            assert_eq!(c.model, Path::new(DEMO_MODEL));
            assert_eq!(c.peft, PeftKind::Prompt);
            assert_eq!(c.train.lambda, 0.9);
            let m = preset(name, Path::new("m"), Path::new("o"), Path::new("c")).unwrap();
            assert_eq!(m.model, Path::new("m"));
        }
    }

    #[test]
    fn config_files_round_trip_and_reject_unknown_keys() {
        let c = preset("cifar100-lt-lora", Path::new("m"), Path::new("o"), Path::new("c")).unwrap();
        let text = toml::to_string_pretty(&c).unwrap();
        let back: RunConfig = toml::from_str(&text).unwrap();
        assert_eq!(toml::to_string_pretty(&back).unwrap(), text);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, text.replace("lora_rank = 8", "lora_rnak = 8")).unwrap();
        let e = format!("{:#}", read_config(&p).unwrap_err());
        assert!(
            e.contains("lora_rnak") && e.contains("lora_rank") && e.contains("bad.toml"),
            "{e}"
        );
    }
}

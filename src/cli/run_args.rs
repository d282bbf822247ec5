//! The flags of `fedpurel run` (also `config` and `compare`) and how they resolve into a
//! [`RunConfig`]: a preset or a TOML file as the base, command-line flags on top (only
//! those typed on the command line override).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};

use crate::data::transforms::TransformKind;
use crate::fed::algorithm::AlgorithmSettings;
use crate::fed::local::AlignLoss;
use crate::fed::registry;
use crate::setup::config::{check_complete, read_config, LoraEncoder, PeftKind, RunConfig};
use crate::setup::data::DataArgs;
use crate::setup::presets::{demo_lr, paper_train, preset};

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
    /// Federated algorithm (the list: --help).
    #[arg(long, default_value = "fedpurel", long_help = registry::help())]
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
    /// Record, for algorithms that do not purify (PromptFL, its variants), the angle
    /// between each stage-1 step's gradient and the TKL alignment gradient, computed but
    /// not applied (one more backward pass per step; the run's numbers are unchanged).
    #[arg(long)]
    pub probe_alignment: bool,
    /// Memory (MiB) for cached image-tower stems with LoRA on the vision tower (the
    /// frozen patch embedding of each test and training image, computed once); what does
    /// not fit runs live. Speed and memory only: the numbers are the same.
    #[arg(long, default_value_t = crate::fed::federation::DEFAULT_STEM_CACHE_MIB)]
    pub stem_cache_mib: usize,
    /// Train a round's clients, and the rounds, one after another. By default, on banked
    /// features (prompt, adapter) the clients of a round train at once on the cores when
    /// nothing carries from one to the next, and when something does (`--carry-momentum`)
    /// FedPuReL's next round trains beside this round's personalization and evaluation;
    /// this flag saves that memory. The numbers are the same.
    #[arg(long)]
    pub one_client_at_a_time: bool,
    /// The algorithms' own settings (one flag per registered setting).
    #[command(flatten)]
    pub baselines: AlgorithmFlags,
}

/// The flags of every setting in the algorithm registry (`--la-tau`, `--folio-theta`,
/// …), generated from [`registry::settings`]: a new algorithm's setting gets its flag,
/// help and default from its own file.
#[derive(Debug, Clone, Default)]
pub struct AlgorithmFlags(pub AlgorithmSettings);

impl clap::FromArgMatches for AlgorithmFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = AlgorithmFlags::default();
        flags.update_from_arg_matches(m)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for s in registry::settings() {
            if let Some(values) = m.get_many::<f64>(s.key) {
                self.0.set(s.key, values.copied().collect()).map_err(|e| {
                    clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
                })?;
            }
        }
        Ok(())
    }
}

impl Args for AlgorithmFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        registry::settings().into_iter().fold(cmd, |cmd, s| {
            let default: Vec<String> = s.default.iter().map(f64::to_string).collect();
            let help = format!(
                "{} [default: {}; read by {}]",
                s.help,
                default.join(" "),
                registry::readers(s).join(", ")
            );
            cmd.arg(
                clap::Arg::new(s.key)
                    .long(s.flag)
                    .value_parser(clap::value_parser!(f64))
                    .num_args(s.default.len())
                    .value_name("NUMBER")
                    .allow_negative_numbers(true)
                    .help(help),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The configuration of the flags alone (their defaults where not typed).
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
    train.probe_alignment = a.probe_alignment;
    train.stem_cache_mib = a.stem_cache_mib;
    train.one_client_at_a_time = a.one_client_at_a_time;
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
        baselines: a.baselines.0.clone(),
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
        (None, None) => {
            check_complete(&flags)?;
            return Ok(flags);
        }
    };
    let given = |id: &str| m.is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine));
    if a.preset.as_deref().is_some_and(|p| p.starts_with("demo")) && given("peft") {
        // The demo's learning rate belongs to its PEFT kind (an explicit --lr still wins).
        c.train.stage1.lr = demo_lr(flags.peft);
        c.train.stage2.lr = demo_lr(flags.peft);
    }
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
        "probe_alignment" => c.train.probe_alignment, flags.train.probe_alignment;
        "stem_cache_mib" => c.train.stem_cache_mib, flags.train.stem_cache_mib;
        "one_client_at_a_time" => c.train.one_client_at_a_time, flags.train.one_client_at_a_time;
        "out" => c.out, flags.out.clone();
        "cache_dir" => c.cache_dir, flags.cache_dir.clone();
        "device" => c.device, flags.device.clone();
    }
    for s in registry::settings() {
        if let (true, Some(v)) = (given(s.key), flags.baselines.get(s.key)) {
            c.baselines.set(s.key, v.to_vec())?;
        }
    }
    if given("lr") {
        c.train.stage1.lr = a.lr;
        c.train.stage2.lr = a.lr;
    }
    c.train.seed = c.data.seed;
    check_complete(&c)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cli::{Cli, Command};

    fn resolved(args: &[&str]) -> RunConfig {
        let m = Cli::command().try_get_matches_from(args).unwrap();
        let Command::Run(a) = Cli::from_arg_matches(&m).unwrap().command else {
            panic!("not a run")
        };
        resolve(&a, m.subcommand_matches("run")).unwrap()
    }

    #[test]
    fn the_demo_preset_takes_the_learning_rate_of_the_peft_kind_asked_for() {
        use crate::setup::presets::DEMO_REGIME;
        for (peft, lr) in DEMO_REGIME {
            let name = format!("{peft:?}").to_lowercase();
            let c = resolved(&["fedpurel", "run", "--preset", "demo", "--peft", &name]);
            assert_eq!((c.peft, c.train.stage1.lr, c.train.stage2.lr), (peft, lr, lr));
        }
        // An explicit --lr wins.
        let c = resolved(&[
            "fedpurel", "run", "--preset", "demo", "--peft", "lora", "--lr", "0.02",
        ]);
        assert_eq!(c.train.stage1.lr, 0.02);
    }
}

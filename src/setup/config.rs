//! The resolved configuration of a run (`config.toml` in every run directory): what it
//! holds, how it is read back, and the ranges every setting must lie in. The CLI's
//! `fedpurel run` builds one from presets and flags (`cli::run_args`); `--config`, the
//! Python bridge and `fedpurel eval` read it back.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::data::DataArgs;
use crate::data::transforms::TransformKind;
use crate::fed::algorithm::AlgorithmSettings;
use crate::fed::federation::TrainSettings;
use crate::fed::registry;
pub use crate::peft::kind::{LoraEncoder, PeftKind};

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

/// Checks a configuration built from presets and flags: a model is named, the algorithm
/// exists, and every setting is in range.
pub fn check_complete(c: &RunConfig) -> Result<()> {
    if c.model.as_os_str().is_empty() {
        bail!("no model: pass --model DIR (a CLIP checkpoint directory)");
    }
    registry::find(&c.algorithm)?;
    validate(c)
}

/// Refuses settings outside their meaningful range, naming the setting (as its flag and
/// its `config.toml` key) and the range expected.
pub fn validate(c: &RunConfig) -> Result<()> {
    let t = &c.train;
    let unit = |v: f64| (0.0..=1.0).contains(&v);
    let checks: [(bool, &str, String, &str); 11] = [
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
    ];
    for (ok, what, value, expected) in checks {
        if !ok {
            bail!("{what} is {value}; expected {expected}");
        }
    }
    c.baselines.validate()?;
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
    use crate::setup::presets::preset;

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

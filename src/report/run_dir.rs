//! The run directory: `config.toml` (the resolved configuration), `metrics.jsonl` (one
//! record per round), `summary.json` + `summary.md` (final tables), and `checkpoints/`
//! (the global parameters after every round, each client's latest private parameters, the
//! carried momentum and the number of completed rounds — enough to resume exactly). Every file is written
//! atomically, the state last, so an interrupted run resumes from its last full round.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::atomic;
use crate::fed::train::{Evaluation, FedState, RoundRecord};
use crate::peft::params::ParamSet;

/// Paths of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The folder.
    pub root: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    rounds_done: usize,
    clients: usize,
    trained_clients: Vec<usize>,
    has_momentum: bool,
    /// Clients with algorithm state (absent in runs of earlier versions).
    #[serde(default)]
    extra_clients: Vec<usize>,
    /// Whether the algorithm keeps server state.
    #[serde(default)]
    has_server_extra: bool,
}

/// Last-10-round means and the best round of one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Mean All accuracy (%) over the last ≤ 10 rounds.
    pub all: f64,
    /// Mean Many accuracy.
    pub many: Option<f64>,
    /// Mean Medium accuracy.
    pub medium: Option<f64>,
    /// Mean Few accuracy.
    pub few: Option<f64>,
    /// Mean worst-class accuracy (our balancedness).
    pub balancedness: f64,
    /// Mean TKL to the zero-shot model.
    pub tkl: f64,
    /// Best All accuracy over all rounds.
    pub best_all: f64,
}

/// What a summary is of: the cell of a comparison it belongs to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunIdentity {
    /// Algorithm name.
    pub algorithm: String,
    /// PEFT kind.
    pub peft: String,
    /// Run seed.
    pub seed: u64,
    /// Fingerprint of the dataset, long-tail cut and client split (equal fingerprints:
    /// the same data seen by the same clients).
    pub split: String,
    /// How PM is formed for this algorithm.
    pub pm_protocol: String,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// What was run (absent in summaries of earlier versions).
    #[serde(default)]
    pub run: RunIdentity,
    /// Rounds completed.
    pub rounds_completed: usize,
    /// Global model.
    pub gm: ModelSummary,
    /// Personalized models.
    pub pm: ModelSummary,
    /// Zero-shot CLIP on the same test sets.
    pub zeroshot: ModelSummary,
    /// How the numbers are defined.
    pub definitions: String,
}

const DEFINITIONS: &str = "Accuracies in %. all/many/medium/few/balancedness/tkl are means over the last 10 rounds (or all rounds if fewer). GM: micro accuracy on the global test set; Many/Medium/Few: mean per-class accuracy of the group's classes (classes with zero correct predictions included). PM: unweighted mean over clients of per-client accuracy on their own test sets; per group over clients holding test samples of the group. Balancedness: worst per-class accuracy (PM: pooled over clients). TKL: mean temperature-aligned KL(zero-shot || model) over test samples.";

fn mean_opt(xs: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = xs.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Summarizes a model over rounds (evaluations in round order).
pub fn summarize(evals: &[&Evaluation]) -> ModelSummary {
    let tail = &evals[evals.len().saturating_sub(10)..];
    let m =
        |f: &dyn Fn(&Evaluation) -> f64| tail.iter().map(|e| f(e)).sum::<f64>() / tail.len().max(1) as f64;
    ModelSummary {
        all: m(&|e| e.accuracy.all),
        many: mean_opt(tail.iter().map(|e| e.accuracy.many)),
        medium: mean_opt(tail.iter().map(|e| e.accuracy.medium)),
        few: mean_opt(tail.iter().map(|e| e.accuracy.few)),
        balancedness: m(&|e| e.balancedness.worst_class),
        tkl: m(&|e| e.tkl),
        best_all: evals
            .iter()
            .map(|e| e.accuracy.all)
            .fold(f64::NEG_INFINITY, f64::max),
    }
}

impl RunDir {
    /// A run directory at `root` (created on first write).
    pub fn new(root: &Path) -> Self {
        RunDir {
            root: root.to_path_buf(),
        }
    }

    fn ckpt(&self, name: &str) -> PathBuf {
        self.root.join("checkpoints").join(name)
    }

    /// Writes `config.toml`. When resuming, an existing one must match in everything but
    /// the number of rounds (a run may be extended); another run's directory is refused.
    pub fn write_config(&self, config: &impl Serialize, resume: bool) -> Result<()> {
        let text = toml::to_string_pretty(config).context("cannot serialize the configuration")?;
        let path = self.root.join("config.toml");
        if resume && path.is_file() {
            let old =
                std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            let strip = |t: &str| -> Result<toml::Value> {
                let mut v: toml::Value =
                    toml::from_str(t).with_context(|| format!("{}: not TOML", path.display()))?;
                if let Some(train) = v.get_mut("train").and_then(toml::Value::as_table_mut) {
                    train.remove("rounds");
                }
                Ok(v)
            };
            if strip(&old)? != strip(&text)? {
                bail!(
                    "{}: this run directory holds a run with other settings; use another --out or delete it",
                    path.display()
                );
            }
        }
        atomic::write(&path, text.as_bytes())
    }

    /// Saves the state after a round: parameters first, `state.json` last.
    pub fn save_state(&self, state: &FedState) -> Result<()> {
        state.global.save(&self.ckpt("global.safetensors"))?;
        if state.rounds_done > 0 {
            state.global.save(&self.round_global(state.rounds_done - 1))?;
        }
        let mut trained = Vec::new();
        for (k, p) in state.private.iter().enumerate() {
            if let Some(p) = p {
                p.save(&self.ckpt(&format!("client{k}.safetensors")))?;
                trained.push(k);
            }
        }
        if let Some(m) = &state.momentum {
            m.save(&self.ckpt("momentum.safetensors"))?;
        }
        let mut extra = Vec::new();
        for (k, p) in state.client_extra.iter().enumerate() {
            if let Some(p) = p {
                p.save(&self.ckpt(&format!("client{k}-extra.safetensors")))?;
                extra.push(k);
            }
        }
        if let Some(x) = &state.server_extra {
            x.save(&self.ckpt("server-extra.safetensors"))?;
        }
        let sf = StateFile {
            rounds_done: state.rounds_done,
            clients: state.private.len(),
            trained_clients: trained,
            has_momentum: state.momentum.is_some(),
            extra_clients: extra,
            has_server_extra: state.server_extra.is_some(),
        };
        atomic::write(
            &self.ckpt("state.json"),
            serde_json::to_string_pretty(&sf)?.as_bytes(),
        )
    }

    /// The global parameters after round `round` (kept for every round).
    pub fn round_global(&self, round: usize) -> PathBuf {
        self.ckpt(&format!("rounds/global-{round:04}.safetensors"))
    }

    /// Loads a saved state, if the directory has one.
    pub fn load_state(&self, device: &Device) -> Result<Option<FedState>> {
        let path = self.ckpt("state.json");
        if !path.is_file() {
            return Ok(None);
        }
        let sf: StateFile = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .map_err(|e| anyhow!("{}: not a run state: {e}", path.display()))?;
        let mut private = vec![None; sf.clients];
        for &k in &sf.trained_clients {
            if k >= sf.clients {
                bail!("{}: client {k} out of range", path.display());
            }
            private[k] = Some(ParamSet::load(
                &self.ckpt(&format!("client{k}.safetensors")),
                device,
            )?);
        }
        let momentum = if sf.has_momentum {
            Some(ParamSet::load(&self.ckpt("momentum.safetensors"), device)?)
        } else {
            None
        };
        let mut client_extra = vec![None; sf.clients];
        for &k in &sf.extra_clients {
            if k >= sf.clients {
                bail!("{}: client {k} out of range", path.display());
            }
            client_extra[k] = Some(ParamSet::load(
                &self.ckpt(&format!("client{k}-extra.safetensors")),
                device,
            )?);
        }
        let server_extra = if sf.has_server_extra {
            Some(ParamSet::load(&self.ckpt("server-extra.safetensors"), device)?)
        } else {
            None
        };
        Ok(Some(FedState {
            rounds_done: sf.rounds_done,
            global: ParamSet::load(&self.ckpt("global.safetensors"), device)?,
            private,
            momentum,
            server_extra,
            client_extra,
        }))
    }

    /// Records of completed rounds (the first `rounds` lines of `metrics.jsonl`).
    pub fn read_records(&self, rounds: usize) -> Result<Vec<RoundRecord>> {
        let path = self.root.join("metrics.jsonl");
        if !path.is_file() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(&path)?;
        text.lines()
            .take(rounds)
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| anyhow!("{}: line {}: {e}", path.display(), i + 1))
            })
            .collect()
    }

    /// Rewrites `metrics.jsonl` with `records` (atomically).
    pub fn write_records(&self, records: &[RoundRecord]) -> Result<()> {
        let mut text = String::new();
        for r in records {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        atomic::write(&self.root.join("metrics.jsonl"), text.as_bytes())
    }

    /// Writes `summary.json` and `summary.md`.
    pub fn write_summary(
        &self,
        run: &RunIdentity,
        records: &[RoundRecord],
        zeroshot: &(Evaluation, Evaluation),
    ) -> Result<Summary> {
        let gm: Vec<&Evaluation> = records.iter().map(|r| &r.gm).collect();
        let pm: Vec<&Evaluation> = records.iter().map(|r| &r.pm).collect();
        let zs = summarize(&[&zeroshot.0]);
        let zs_pm = summarize(&[&zeroshot.1]);
        let summary = Summary {
            run: run.clone(),
            rounds_completed: records.len(),
            gm: summarize(&gm),
            pm: summarize(&pm),
            zeroshot: zs,
            definitions: DEFINITIONS.to_string(),
        };
        atomic::write(
            &self.root.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        atomic::write(
            &self.root.join("summary.md"),
            summary_markdown(&summary, &zs_pm).as_bytes(),
        )?;
        Ok(summary)
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |x| format!("{x:.2}"))
}

/// The paper-style table.
pub fn summary_markdown(s: &Summary, zeroshot_pm: &ModelSummary) -> String {
    let mut out = format!(
        "# Summary: {} with {} ({} rounds; last-10-round means)\n\n| model | All | Many | Medium | Few | Balancedness | TKL | best All |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
        s.run.algorithm,
        s.run.peft,
        s.rounds_completed
    );
    for (name, m) in [
        ("zero-shot (GM)", &s.zeroshot),
        ("zero-shot (PM test sets)", zeroshot_pm),
        ("GM", &s.gm),
        ("PM", &s.pm),
    ] {
        out.push_str(&format!(
            "| {name} | {:.2} | {} | {} | {} | {:.2} | {:.4} | {:.2} |\n",
            m.all,
            cell(m.many),
            cell(m.medium),
            cell(m.few),
            m.balancedness,
            m.tkl,
            m.best_all
        ));
    }
    out.push_str(&format!(
        "\n{}\n\nPM of {}: {}\n",
        s.definitions, s.run.algorithm, s.run.pm_protocol
    ));
    out
}

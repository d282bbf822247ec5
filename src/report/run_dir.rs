//! The run directory: `config.toml` (the resolved configuration), `metrics.jsonl` (one
//! record per round), `summary.json` + `summary.md` (final tables), `checkpoints/` (the
//! committed training state, [`super::checkpoints`]) and `.lock` (held by the process
//! using the directory). Every file is written atomically.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::atomic;
use super::checkpoints::Checkpoints;
use crate::fed::federation::FedState;
use crate::fed::record::{Evaluation, RoundRecord};
use crate::metrics::worst_decile;

/// Takes an exclusive advisory lock on `file` without waiting: `Ok(false)` when another
/// process holds it. The lock belongs to the open file, so it ends with the process.
#[cfg(unix)]
fn try_lock_exclusive(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock(2) on a descriptor this function borrows for the call's duration.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Without flock(2) the directory is not locked (a second process is not refused).
#[cfg(not(unix))]
fn try_lock_exclusive(_file: &std::fs::File) -> std::io::Result<bool> {
    Ok(true)
}

/// The exclusive hold of a run directory by this process ([`RunDir::lock`]); released
/// when dropped or when the process ends in any way.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// Paths of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The folder.
    pub root: PathBuf,
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
    /// Mean of the worst-decile accuracy, the primary balancedness
    /// ([`crate::metrics::worst_decile`]; absent in summaries of earlier versions).
    #[serde(default)]
    pub worst_decile: Option<f64>,
    /// Mean worst-class accuracy (the balancedness of earlier versions).
    #[serde(alias = "balancedness")]
    pub worst_class: f64,
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

const DEFINITIONS: &str = "Accuracies in %. all/many/medium/few/worst_decile/worst_class/tkl are means over the last 10 rounds (or all rounds if fewer). GM: micro accuracy on the global test set; Many/Medium/Few: mean per-class accuracy of the group's classes (classes with zero correct predictions included). PM: unweighted mean over clients of per-client accuracy on their own test sets; per group over clients holding test samples of the group. Balancedness (worst_decile): the mean accuracy of the worst 10 % of classes; worst_class: the worst per-class accuracy (both PM: per-class accuracy pooled over clients). TKL: mean temperature-aligned KL(zero-shot || model) over test samples.";

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
        worst_decile: mean_opt(tail.iter().map(|e| worst_decile(&e.per_class))),
        worst_class: m(&|e| e.balancedness.worst_class),
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

    /// Refuses a directory holding another run: an existing `config.toml` must match
    /// `config` in everything but the number of rounds (a run may be extended). Writes
    /// nothing.
    /// The recorded file is read through `T` first, so a setting added by a later
    /// version (absent from an older config.toml, present with its default now) does not
    /// make the same run look like another.
    pub fn check_config<T: Serialize + serde::de::DeserializeOwned>(&self, config: &T) -> Result<()> {
        let text = toml::to_string_pretty(config).context("cannot serialize the configuration")?;
        let path = self.root.join("config.toml");
        if path.is_file() {
            let old =
                std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            let old: T = toml::from_str(&old).with_context(|| {
                format!(
                    "{}: not a configuration this version of fedpurel reads",
                    path.display()
                )
            })?;
            let old = toml::to_string_pretty(&old).context("cannot serialize the configuration")?;
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
        Ok(())
    }

    /// Writes `config.toml` after [`check_config`](Self::check_config) when `resume`.
    pub fn write_config<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        config: &T,
        resume: bool,
    ) -> Result<()> {
        if resume {
            self.check_config(config)?;
        }
        let text = toml::to_string_pretty(config).context("cannot serialize the configuration")?;
        atomic::write(&self.root.join("config.toml"), text.as_bytes())
    }

    /// The checkpoint store (`checkpoints/`).
    pub fn checkpoints(&self) -> Checkpoints {
        Checkpoints::new(self.root.join("checkpoints"))
    }

    /// Saves the state after a round (see [`Checkpoints::save`]).
    pub fn save_state(&self, state: &FedState) -> Result<()> {
        self.checkpoints().save(state)
    }

    /// The global parameters after round `round` (kept for every round).
    pub fn round_global(&self, round: usize) -> PathBuf {
        self.checkpoints().round_global(round)
    }

    /// Loads the committed state, if the directory has one (see [`Checkpoints::load`]).
    pub fn load_state(&self, device: &Device) -> Result<Option<FedState>> {
        self.checkpoints().load(device)
    }

    /// Takes the run directory for this process (creating it): a second fedpurel
    /// process on the same directory is refused until this one ends (the lock is the
    /// operating system's, so a killed process releases it). Leftover temporary files of
    /// interrupted writes are removed once the lock is held.
    pub fn lock(&self) -> Result<RunLock> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create the run directory {}", self.root.display()))?;
        let path = self.root.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot create the lock file {}", path.display()))?;
        if !try_lock_exclusive(&file).with_context(|| format!("cannot lock {}", path.display()))? {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "{} is in use by another fedpurel process (pid {}); wait for it to finish or use another --out",
                self.root.display(),
                holder.trim()
            );
        }
        use std::io::{Seek, Write};
        file.set_len(0)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        write!(file, "{}", std::process::id())?;
        self.remove_leftovers();
        Ok(RunLock { _file: file })
    }

    /// Removes the temporary files of interrupted atomic writes (`.NAME.PID.N.tmp`).
    fn remove_leftovers(&self) {
        for dir in [
            self.root.clone(),
            self.root.join("checkpoints"),
            self.root.join("checkpoints/rounds"),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with('.') && n.ends_with(".tmp") && e.path().is_file() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
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
        "# Summary: {} with {} ({} rounds; last-10-round means)\n\n| model | All | Many | Medium | Few | Balancedness | worst class | TKL | best All |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
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
            "| {name} | {:.2} | {} | {} | {} | {} | {:.2} | {:.4} | {:.2} |\n",
            m.all,
            cell(m.many),
            cell(m.medium),
            cell(m.few),
            cell(m.worst_decile),
            m.worst_class,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Train {
        rounds: usize,
        lr: f64,
        #[serde(default)]
        views: usize,
    }

    #[derive(Serialize, Deserialize)]
    struct Config {
        train: Train,
    }

    fn config(rounds: usize, lr: f64) -> Config {
        Config {
            train: Train { rounds, lr, views: 0 },
        }
    }

    #[test]
    fn a_run_may_be_extended_and_read_by_a_later_version_but_not_changed() {
        let d = tempfile::tempdir().unwrap();
        let dir = RunDir::new(d.path());
        // Written by an earlier version, before `views` existed.
        std::fs::write(d.path().join("config.toml"), "[train]\nrounds = 2\nlr = 0.001\n").unwrap();
        dir.check_config(&config(2, 0.001)).unwrap();
        dir.check_config(&config(5, 0.001)).unwrap();
        let e = format!("{:#}", dir.check_config(&config(2, 0.01)).unwrap_err());
        assert!(e.contains("other settings"), "{e}");
        let _lock = dir.lock().unwrap();
        let e = format!("{:#}", dir.lock().unwrap_err());
        assert!(e.contains("in use by another fedpurel process"), "{e}");
    }
}

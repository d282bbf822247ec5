//! Running the demo CLIP's recipe ([`super::recipe`]): a small CLIP pretrained from a seed on
//! the world's pretraining domain ([`WorldPairs`]), evaluated zero-shot on both domains, and written as a
//! self-describing Hugging Face model directory — `config.json`, `model.safetensors`,
//! the world's tokenizer files, `MODEL_CARD.md`, `pretrain.json` (settings and results)
//! and `training-log.jsonl`.
//!
//! [`WorldPretrainSettings::default`] is the recipe of the shipped `assets/demo-clip`,
//! so `fedpurel pretrain --out DIR` with no other flag reproduces it. The directory
//! appears whole or not at all: everything is built in a hidden sibling folder, checked
//! by loading it back, then renamed into place (an existing directory is replaced only
//! when asked). Same settings → the same weights, bit for bit, on the same machine with
//! the same thread count (the loop draws no randomness beyond the seeded streams; the
//! matmul kernels may differ between CPUs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::model_card;
use super::recipe::{EvalRecord, PretrainReport, WorldPretrainSettings};
use super::trainer::{BatchSource, StepStats, Trainer};
use super::world::{zero_shot_accuracy, WorldPairs, WorldTestSet};
use crate::clip::config::SpecialTokens;
use crate::clip::init::init_weights;
use crate::clip::tokenizer::ClipTokenizer;
use crate::clip::weights::SaveOptions;
use crate::clip::{Clip, LoadOptions};
use crate::data::world::{vocab, Domain, IMAGE_SIZE};
use crate::report::atomic;

/// What happened, for a progress display.
#[derive(Debug)]
pub enum Event<'a> {
    /// A step finished.
    Step(&'a StepStats),
    /// A zero-shot check finished.
    Eval(&'a EvalRecord),
    /// A phase without steps started (rendering the test sets, the final evaluation,
    /// writing).
    Phase(&'a str),
}

/// One line of `training-log.jsonl`: a window of steps or a zero-shot check.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum LogLine<'a> {
    Train {
        step: usize,
        steps: usize,
        lr: f64,
        loss: f64,
        image_to_text_accuracy: f64,
        text_to_image_accuracy: f64,
        scale: f64,
        grad_norm: f64,
        seconds: f64,
    },
    Eval(&'a EvalRecord),
}

/// Running mean of the steps since the last log line.
#[derive(Default)]
struct Window {
    steps: Vec<StepStats>,
}

impl Window {
    fn line(&mut self) -> Option<LogLine<'static>> {
        let last = *self.steps.last()?;
        let n = self.steps.len() as f64;
        let mean = |f: &dyn Fn(&StepStats) -> f64| self.steps.iter().map(f).sum::<f64>() / n;
        let line = LogLine::Train {
            step: last.step,
            steps: self.steps.len(),
            lr: last.lr,
            loss: mean(&|s| s.loss.loss),
            image_to_text_accuracy: mean(&|s| s.loss.image_to_text_accuracy),
            text_to_image_accuracy: mean(&|s| s.loss.text_to_image_accuracy),
            scale: last.loss.scale,
            grad_norm: mean(&|s| s.grad_norm),
            seconds: self.steps.iter().map(|s| s.seconds).sum(),
        };
        self.steps.clear();
        Some(line)
    }
}

/// The hidden sibling folder a run builds `out` in.
fn staging_dir(out: &Path, what: &str) -> Result<PathBuf> {
    let name = out
        .file_name()
        .with_context(|| format!("--out {}: not a directory name", out.display()))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    let staged = format!(".{}.{what}-{}", name.to_string_lossy(), std::process::id());
    Ok(parent.map_or_else(|| PathBuf::from(&staged), |p| p.join(&staged)))
}

fn evaluate(
    clip: &Clip,
    tokenizer: &ClipTokenizer,
    step: usize,
    sets: &(WorldTestSet, WorldTestSet),
    template: &str,
) -> Result<EvalRecord> {
    Ok(EvalRecord {
        step,
        pretrain: zero_shot_accuracy(clip, tokenizer, &sets.0, template)?,
        downstream: zero_shot_accuracy(clip, tokenizer, &sets.1, template)?,
    })
}

fn test_sets(s: &WorldPretrainSettings, per_class: usize) -> Result<(WorldTestSet, WorldTestSet)> {
    Ok((
        WorldTestSet::new(s.world_seed, Domain::Pretrain, per_class, IMAGE_SIZE)?,
        WorldTestSet::new(s.world_seed, Domain::Downstream, per_class, IMAGE_SIZE)?,
    ))
}

/// Pretrains the demo CLIP with `settings` and writes its directory at `out` (replacing
/// an existing one only with `replace`), reporting progress to `on_event`.
pub fn pretrain_world(
    settings: &WorldPretrainSettings,
    out: &Path,
    replace: bool,
    on_event: &mut dyn FnMut(Event),
) -> Result<PretrainReport> {
    settings.validate()?;
    if out.exists() && !replace {
        bail!(
            "{} already exists; pass --force to replace it (the new directory is swapped in \
             only once complete)",
            out.display()
        );
    }
    let staging = staging_dir(out, "partial")?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let result = build(settings, out, &staging, on_event);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let report = result?;
    swap_into_place(&staging, out)?;
    Ok(report)
}

/// Renames the finished `staging` folder to `out`, moving an existing `out` aside first
/// and deleting it after (at no moment is a partial directory at `out`).
fn swap_into_place(staging: &Path, out: &Path) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let old = staging_dir(out, "old")?;
    let had_old = out.exists();
    if had_old {
        std::fs::rename(out, &old)
            .with_context(|| format!("cannot move {} aside to {}", out.display(), old.display()))?;
    }
    std::fs::rename(staging, out)
        .with_context(|| format!("cannot rename {} to {}", staging.display(), out.display()))?;
    if had_old {
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        atomic::sync_dir(parent);
    }
    Ok(())
}

fn build(
    settings: &WorldPretrainSettings,
    out: &Path,
    staging: &Path,
    on_event: &mut dyn FnMut(Event),
) -> Result<PretrainReport> {
    let vocab_size = vocab::write_tokenizer_files(staging)?;
    let tokenizer = ClipTokenizer::from_dir(staging)?;
    let config = settings.architecture.config(vocab_size)?;
    let mut source = WorldPairs::new(
        settings.seed,
        settings.world_seed,
        settings.batch,
        IMAGE_SIZE,
        config.text.context_length,
        ClipTokenizer::from_dir(staging)?,
    )?;
    source.multi_positive = settings.multi_positive;
    on_event(Event::Phase("rendering the zero-shot check sets"));
    let checks = test_sets(settings, settings.eval_per_class)?;
    let mut trainer = Trainer::new(init_weights(&config, settings.seed)?, settings.trainer_config())?;
    let parameters = trainer.weights().numel();

    let log_path = staging.join("training-log.jsonl");
    let mut log = std::io::BufWriter::new(
        std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?,
    );
    let mut write_line = |line: &LogLine| -> Result<()> {
        writeln!(log, "{}", serde_json::to_string(line)?)
            .with_context(|| format!("cannot write {}", log_path.display()))
    };
    let mut window = Window::default();
    let mut history = Vec::new();
    let mut last_window: Vec<StepStats> = Vec::new();
    let (cpu0, t0) = (crate::bench::mem::cpu_seconds(), Instant::now());
    for step in 0..settings.steps {
        let batch = source.next_batch(step)?;
        let stats = trainer.step(&batch)?;
        on_event(Event::Step(&stats));
        window.steps.push(stats);
        last_window.push(stats);
        if last_window.len() > settings.log_every.max(1) {
            last_window.remove(0);
        }
        let done = step + 1;
        if settings.log_every > 0 && (done % settings.log_every == 0 || done == settings.steps) {
            if let Some(line) = window.line() {
                write_line(&line)?;
            }
        }
        if settings.eval_every > 0 && done % settings.eval_every == 0 && done < settings.steps {
            let clip = trainer.weights().to_clip(&LoadOptions::default())?;
            let record = evaluate(&clip, &tokenizer, done, &checks, &settings.template)?;
            write_line(&LogLine::Eval(&record))?;
            on_event(Event::Eval(&record));
            history.push(record);
        }
    }
    let train_seconds = t0.elapsed().as_secs_f64();
    let train_cpu_seconds = match (cpu0, crate::bench::mem::cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let weights = trainer.into_weights();
    on_event(Event::Phase("writing the model"));
    weights.save_hf(
        staging,
        &SaveOptions {
            tokenizer: None,
            special_tokens: SpecialTokens {
                bos: Some(tokenizer.sot_id()),
                eos: Some(tokenizer.eot_id()),
                pad: None,
            },
        },
    )?;
    on_event(Event::Phase("final zero-shot evaluation of the written model"));
    let written = Clip::load(staging, &LoadOptions::default()).with_context(|| {
        format!(
            "the model just written to {} does not load back",
            staging.display()
        )
    })?;
    let tokenizer = ClipTokenizer::from_dir(staging)?;
    let finals = test_sets(settings, settings.final_eval_per_class)?;
    let zero_shot = evaluate(&written, &tokenizer, settings.steps, &finals, &settings.template)?;
    write_line(&LogLine::Eval(&zero_shot))?;
    on_event(Event::Eval(&zero_shot));
    log.flush()
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    drop(log);

    let n = last_window.len().max(1) as f64;
    let mut report = PretrainReport {
        settings: settings.clone(),
        command: settings.command_line(out),
        parameters,
        pairs_seen: settings.steps * settings.batch,
        train_seconds,
        train_cpu_seconds,
        threads: rayon::current_num_threads(),
        final_loss: last_window.iter().map(|s| s.loss.loss).sum::<f64>() / n,
        final_in_batch_accuracy: last_window
            .iter()
            .map(|s| s.loss.image_to_text_accuracy)
            .sum::<f64>()
            / n,
        zero_shot,
        history,
        files: Vec::new(),
    };
    report.files = file_sizes(staging, &["pretrain.json", model_card::FILE])?;
    atomic::write(
        &staging.join("pretrain.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    atomic::write(
        &staging.join(model_card::FILE),
        model_card::render(&report, &config).as_bytes(),
    )?;
    Ok(report)
}

/// Sizes of the files in `dir`, sorted by name, leaving out `skip`.
fn file_sizes(dir: &Path, skip: &[&str]) -> Result<Vec<(String, u64)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !skip.contains(&name.as_str()) && entry.file_type()?.is_file() {
            files.push((name, entry.metadata()?.len()));
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretrain::recipe::Architecture;

    /// A pretraining run of a few seconds: a tiny CLIP on the world, written, loaded back.
    fn tiny() -> WorldPretrainSettings {
        WorldPretrainSettings {
            architecture: Architecture {
                patch_size: 8,
                vision_width: 32,
                vision_layers: 1,
                text_width: 32,
                text_layers: 1,
                embed_dim: 32,
                head_width: 16,
            },
            steps: 60,
            batch: 60,
            lr: 3e-3,
            warmup_steps: 5,
            eval_every: 30,
            eval_per_class: 2,
            final_eval_per_class: 5,
            log_every: 10,
            ..WorldPretrainSettings::default()
        }
    }

    #[test]
    fn a_short_run_learns_above_chance_and_is_reproducible() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("clip");
        let mut events = 0;
        let report = pretrain_world(&tiny(), &out, false, &mut |_| events += 1).unwrap();
        assert!(events > 60);
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.json",
            "merges.txt",
            "MODEL_CARD.md",
            "pretrain.json",
            "training-log.jsonl",
        ] {
            assert!(out.join(f).is_file(), "{f} missing");
        }
        // Nothing left beside it.
        let siblings: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(siblings.len(), 1);
        let clip = Clip::load(&out, &LoadOptions::default()).unwrap();
        assert_eq!(
            clip.config,
            tiny()
                .architecture
                .config(vocab::Vocabulary::build().len())
                .unwrap()
        );
        // Chance is 1/60 ≈ 1.7 %: the pretraining domain is learned well above it.
        let z = &report.zero_shot;
        println!(
            "tiny pretrain: zero-shot {:.1} % pretrain, {:.1} % downstream, loss {:.3}",
            z.pretrain.accuracy, z.downstream.accuracy, report.final_loss
        );
        assert!(z.pretrain.accuracy > 5.0, "{:?}", z.pretrain);
        assert_eq!(z.pretrain.images, 300);
        assert_eq!(report.history.len(), 1);
        let log = std::fs::read_to_string(out.join("training-log.jsonl")).unwrap();
        assert_eq!(
            log.lines().filter(|l| l.contains("\"kind\":\"train\"")).count(),
            6
        );
        assert_eq!(log.lines().filter(|l| l.contains("\"kind\":\"eval\"")).count(), 2);
        let card = std::fs::read_to_string(out.join("MODEL_CARD.md")).unwrap();
        let command = tiny().command_line(&out);
        assert_eq!(report.command, command);
        assert!(card.contains(command.trim_start_matches("fedpurel ")), "{card}");
        assert!(!card.contains("These are the defaults"), "{card}");
        // Same settings, same bytes; an existing directory is refused without --force.
        let e = pretrain_world(&tiny(), &out, false, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        let again = tmp.path().join("again");
        pretrain_world(&tiny(), &again, false, &mut |_| {}).unwrap();
        for f in ["model.safetensors", "config.json", "tokenizer.json"] {
            assert!(
                std::fs::read(out.join(f)).unwrap() == std::fs::read(again.join(f)).unwrap(),
                "{f} differs between two runs of the same settings"
            );
        }
        // --force swaps a new directory in; another seed gives other weights.
        let other = WorldPretrainSettings { seed: 2, ..tiny() };
        pretrain_world(&other, &again, true, &mut |_| {}).unwrap();
        assert!(
            std::fs::read(out.join("model.safetensors")).unwrap()
                != std::fs::read(again.join("model.safetensors")).unwrap()
        );
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
    }

    #[test]
    fn bad_settings_are_named_before_any_work() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("x");
        let cases: [(WorldPretrainSettings, &str); 5] = [
            (WorldPretrainSettings { steps: 0, ..tiny() }, "--steps"),
            (WorldPretrainSettings { batch: 1, ..tiny() }, "--batch 1"),
            (
                WorldPretrainSettings {
                    architecture: Architecture {
                        patch_size: 5,
                        ..tiny().architecture
                    },
                    ..tiny()
                },
                "--patch-size 5",
            ),
            (
                WorldPretrainSettings {
                    architecture: Architecture {
                        text_width: 40,
                        ..tiny().architecture
                    },
                    ..tiny()
                },
                "--text-width 40",
            ),
            (
                WorldPretrainSettings {
                    template: "no slot".into(),
                    ..tiny()
                },
                "--template",
            ),
        ];
        for (s, want) in cases {
            let e = format!("{:#}", pretrain_world(&s, &out, false, &mut |_| {}).unwrap_err());
            assert!(e.contains(want), "{want}: {e}");
            assert!(!out.exists());
        }
    }
}

//! The FedPuReL round loop (SPEC §1, §4, §5, §7): per round, the sampled clients run
//! stage 1 from the current global parameters, the server averages them weighted by
//! client size, the same clients run stage 2 against the fresh global model, and both
//! models are evaluated: GM on the global test set, PM on every client's own test set.
//!
//! Randomness is keyed, never carried: client sampling draws from the `"client-sampling"`
//! stream of round t, batch orders from `"batches"` of (round, client, stage) (both through
//! a [`Schedule`], which a replay of a recorded run can replace), LoRA dropout
//! from `"dropout"` of (round, client, stage, step), initial parameters from `"init"`. A
//! run resumed after round t therefore continues with exactly the numbers it would have
//! produced uninterrupted; the only state is the parameters and the momentum buffer.
//!
//! Frozen image features are encoded once (the image-feature cache) whenever the
//! transform is deterministic; LoRA trains the image tower and always sees pixels.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use super::local::{stage1_step, stage2_step, AlignLoss, Stage1Settings, StepStats};
use super::sgd::{Sgd, SgdConfig};
use crate::clip::model::l2_normalize;
use crate::clip::Clip;
use crate::data::dataset::{Dataset, SplitKind};
use crate::data::loader::{BatchLoader, LoaderConfig};
use crate::data::transforms::{Mode, Transform};
use crate::data::Partition;
use crate::metrics::{
    balancedness, group_accuracy, personalized_accuracy, Balancedness, Confusion, GroupAccuracy,
};
use crate::objective::tkl::tkl;
use crate::peft::model::{Inputs, Peft};
use crate::peft::params::ParamSet;
use crate::rng;

/// Everything that shapes training once data and model are fixed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Communication rounds R.
    pub rounds: usize,
    /// Fraction of clients sampled in rounds ≥ 1 (round 0 trains all).
    pub frac: f64,
    /// Local batch size B.
    pub batch_size: usize,
    /// Stage-1 optimizer (SGD, momentum, weight decay).
    pub stage1: SgdConfig,
    /// Carry the stage-1 momentum buffer across clients and rounds (the reference code).
    pub carry_momentum: bool,
    /// Stage-2 optimizer (plain SGD in the reference).
    pub stage2: SgdConfig,
    /// λ of the stage-2 loss (weight of the personal CE).
    pub lambda: f64,
    /// Projection strength of the purification (0 = none).
    pub lambda_proj: f64,
    /// Stage-1 alignment loss.
    pub align: AlignLoss,
    /// Run seed.
    pub seed: u64,
    /// Test images per evaluation batch.
    pub eval_batch: usize,
}

/// Accuracy, balancedness and TKL of one model on one evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    /// All / Many / Medium / Few accuracy (%).
    pub accuracy: GroupAccuracy,
    /// Worst-class accuracy, per-class std, Few/Many.
    pub balancedness: Balancedness,
    /// Mean temperature-aligned KL to the zero-shot model over test samples.
    pub tkl: f64,
    /// Per-class accuracy (%), null for classes without test samples.
    pub per_class: Vec<Option<f64>>,
    /// Micro accuracy over all evaluated samples (%); for PM, the client accuracies
    /// weighted by test-set size (the unweighted client mean is `accuracy.all`).
    pub weighted_all: f64,
}

/// Mean statistics of one stage over a round.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageStats {
    /// Local steps taken.
    pub steps: usize,
    /// Mean task (stage 2: total) loss.
    pub loss: f64,
    /// Mean alignment loss (stage 1).
    pub align_loss: f64,
    /// Fraction of parameter tensors whose gradient was purified.
    pub projected_fraction: f64,
    /// Training accuracy of the trained branch (%).
    pub train_accuracy: f64,
    /// Seconds.
    pub seconds: f64,
}

/// One round's record (a line of `metrics.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round index.
    pub round: usize,
    /// Clients trained this round, in training order.
    pub clients: Vec<usize>,
    /// Stage 1.
    pub stage1: StageStats,
    /// Stage 2.
    pub stage2: StageStats,
    /// Global model on the global test set.
    pub gm: Evaluation,
    /// Personalized models on their clients' test sets.
    pub pm: Evaluation,
    /// Seconds spent evaluating.
    pub eval_seconds: f64,
}

/// The learnable state; with the settings it determines the rest of the run.
#[derive(Debug, Clone)]
pub struct FedState {
    /// Rounds completed.
    pub rounds_done: usize,
    /// φ_g.
    pub global: ParamSet,
    /// φ_k per client (None until the client first trains stage 2).
    pub private: Vec<Option<ParamSet>>,
    /// Stage-1 momentum carried across clients (reference-code mode).
    pub momentum: Option<ParamSet>,
}

/// Which clients train in a round and how each client's epoch is batched. The default
/// [`KeyedSchedule`] draws both from keyed random streams; a replay of a recorded run
/// (see [`super::replay`]) supplies them from files.
pub trait Schedule {
    /// Clients of round `round`, in training order.
    fn clients(&self, round: usize) -> Result<Vec<usize>>;
    /// Batches (lists of train indices) of `client`'s epoch in `stage` (1 or 2).
    fn batches(&self, round: usize, client: usize, stage: u8, indices: &[usize]) -> Result<Vec<Vec<usize>>>;
}

/// Round 0: all clients; later rounds max(⌊frac·K⌋, 1) without replacement from the
/// `"client-sampling"` stream of the round. Each epoch a fresh permutation from the
/// `"batches"` stream of (round, client, stage), ⌊n/B⌋ full batches (one partial batch when
/// n < B) — the reference loader's `drop_last = n ≥ B`.
#[derive(Debug, Clone)]
pub struct KeyedSchedule {
    /// Run seed.
    pub seed: u64,
    /// Participation fraction.
    pub frac: f64,
    /// Clients K.
    pub clients: usize,
    /// Batch size B.
    pub batch_size: usize,
}

impl Schedule for KeyedSchedule {
    fn clients(&self, t: usize) -> Result<Vec<usize>> {
        let k = self.clients;
        let mut all: Vec<usize> = (0..k).collect();
        if t == 0 {
            return Ok(all);
        }
        let m = ((self.frac * k as f64).floor() as usize).clamp(1, k);
        rng::shuffle(
            &mut rng::substream(self.seed, "client-sampling", &[t as u64]),
            &mut all,
        );
        all.truncate(m);
        Ok(all)
    }

    fn batches(&self, t: usize, client: usize, stage: u8, indices: &[usize]) -> Result<Vec<Vec<usize>>> {
        let mut order = indices.to_vec();
        rng::shuffle(
            &mut rng::substream(self.seed, "batches", &[t as u64, client as u64, stage as u64]),
            &mut order,
        );
        Ok(batches_of(&order, self.batch_size))
    }
}

/// Cuts an epoch order into batches as the reference loader does: ⌊n/B⌋ full batches, or
/// one partial batch when n < B.
pub fn batches_of(order: &[usize], b: usize) -> Vec<Vec<usize>> {
    if order.len() < b {
        return if order.is_empty() {
            Vec::new()
        } else {
            vec![order.to_vec()]
        };
    }
    order.chunks_exact(b).map(<[usize]>::to_vec).collect()
}

/// Frozen-feature banks for the splits (None where features must be computed live).
struct FeatureBank {
    /// Train features, one row per index in `train_rows`.
    train: Option<Tensor>,
    /// Row of each original train index in `train` (usize::MAX where absent).
    train_row: Vec<usize>,
    /// Test features for the whole test split.
    test: Tensor,
}

/// A federation ready to train: model, PEFT, data, split, frozen features.
pub struct Federation<'a> {
    clip: &'a Clip,
    peft: Peft,
    dataset: Arc<Dataset>,
    partition: Partition,
    transform: Transform,
    zs_text: Tensor,
    bank: FeatureBank,
    settings: TrainSettings,
    private_init: ParamSet,
    schedule: Box<dyn Schedule + 'a>,
}

impl<'a> Federation<'a> {
    /// Prepares a run. `zero_shot_text` are the normalized class text features of the
    /// dataset's template; `encode` turns (split, indices) into frozen features (the
    /// caller decides about caching).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        clip: &'a Clip,
        peft: Peft,
        dataset: Arc<Dataset>,
        partition: Partition,
        transform: Transform,
        zero_shot_text: Tensor,
        settings: TrainSettings,
        mut encode: impl FnMut(SplitKind, &[usize]) -> Result<Tensor>,
    ) -> Result<Self> {
        if settings.batch_size == 0 || settings.rounds == 0 {
            bail!("batch size and rounds must be at least 1");
        }
        if !(settings.frac > 0.0 && settings.frac <= 1.0) {
            bail!("--frac must be in (0, 1], got {}", settings.frac);
        }
        let n_train = dataset.train.len();
        let deterministic = transform.is_deterministic(Mode::Train);
        let (train, train_row) = if deterministic {
            let rows = partition.lt_train.clone();
            let feats = encode(SplitKind::Train, &rows)?;
            let mut map = vec![usize::MAX; n_train];
            for (r, &i) in rows.iter().enumerate() {
                map[i] = r;
            }
            (Some(feats), map)
        } else {
            (None, Vec::new())
        };
        let all_test: Vec<usize> = (0..dataset.test.len()).collect();
        let test = encode(SplitKind::Test, &all_test)?;
        let private_init = peft.init(clip, rng::stream(settings.seed, "init-private").next_u64_seed())?;
        let schedule = Box::new(KeyedSchedule {
            seed: settings.seed,
            frac: settings.frac,
            clients: partition.clients.len(),
            batch_size: settings.batch_size,
        });
        Ok(Federation {
            clip,
            peft,
            dataset,
            partition,
            transform,
            zs_text: zero_shot_text,
            bank: FeatureBank {
                train,
                train_row,
                test,
            },
            settings,
            private_init,
            schedule,
        })
    }

    /// Replaces the client and batch schedule (e.g. to replay a recorded run).
    pub fn set_schedule(&mut self, schedule: Box<dyn Schedule + 'a>) {
        self.schedule = schedule;
    }

    /// Replaces the shared initial private parameters (e.g. a recorded run's).
    pub fn set_private_init(&mut self, init: ParamSet) -> Result<()> {
        init.check_compatible(&self.private_init)?;
        self.private_init = init;
        Ok(())
    }

    /// The initial state: φ_g from the `"init-global"` stream, no private parameters.
    pub fn initial_state(&self) -> Result<FedState> {
        let global = self.peft.init(
            self.clip,
            rng::stream(self.settings.seed, "init-global").next_u64_seed(),
        )?;
        Ok(FedState {
            rounds_done: 0,
            global,
            private: vec![None; self.partition.clients.len()],
            momentum: None,
        })
    }

    /// Number of clients K.
    pub fn clients(&self) -> usize {
        self.partition.clients.len()
    }

    /// The settings.
    pub fn settings(&self) -> &TrainSettings {
        &self.settings
    }

    /// Model inputs and frozen features of training samples `idx`.
    fn train_inputs(&self, idx: &[usize], path: &[u64]) -> Result<(Inputs, Tensor)> {
        let labels_dev = self.clip.device();
        let cached = self.bank.train.as_ref().map(|f| -> Result<Tensor> {
            let rows: Vec<u32> = idx.iter().map(|&i| self.bank.train_row[i] as u32).collect();
            Ok(f.index_select(&Tensor::from_vec(rows, idx.len(), labels_dev)?, 0)?)
        });
        let cached = cached.transpose()?;
        if !self.peft.needs_pixels() {
            if let Some(f) = cached {
                return Ok((Inputs::Features(f.clone()), f));
            }
        }
        let pixels = self.pixels(SplitKind::Train, idx, Mode::Train, path)?;
        let frozen = match cached {
            Some(f) => f,
            None => self.clip.encode_images(&pixels)?.to_dtype(DType::F32)?,
        };
        if self.peft.needs_pixels() {
            Ok((Inputs::Pixels(pixels), frozen))
        } else {
            Ok((Inputs::Features(frozen.clone()), frozen))
        }
    }

    fn pixels(&self, split: SplitKind, idx: &[usize], mode: Mode, path: &[u64]) -> Result<Tensor> {
        let loader = BatchLoader::new(
            Arc::clone(&self.dataset),
            LoaderConfig {
                split,
                indices: idx.to_vec(),
                batch_size: idx.len().max(1),
                drop_last: false,
                transform: self.transform,
                mode,
                seed: self.settings.seed,
                path: path.to_vec(),
                prefetch: 1,
            },
        );
        let r = self.transform.resolution as usize;
        let mut out = Vec::new();
        for b in loader {
            let b = b?;
            out.push(Tensor::from_vec(
                b.data,
                (b.labels.len(), 3, r, r),
                self.clip.device(),
            )?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    fn labels(&self, split: SplitKind, idx: &[usize]) -> Vec<u32> {
        let l = &self.dataset.split(split).labels;
        idx.iter().map(|&i| l[i]).collect()
    }

    fn zero_shot_logits(&self, frozen: &Tensor) -> Result<Tensor> {
        Ok((l2_normalize(frozen)?.matmul(&self.zs_text.t()?)? * self.clip.logit_scale_exp())?)
    }

    /// Runs round `t = state.rounds_done` and returns its record; `phase` is told each
    /// phase as it starts (for progress display).
    pub fn run_round(&self, state: &mut FedState, phase: &dyn Fn(&str)) -> Result<RoundRecord> {
        let t = state.rounds_done;
        let s = &self.settings;
        let clients = self.schedule.clients(t)?;
        if let Some(&bad) = clients.iter().find(|&&k| k >= self.clients()) {
            bail!(
                "round {t}: client {bad} does not exist ({} clients)",
                self.clients()
            );
        }
        // Stage 1.
        phase(&format!("stage 1 ({} clients)", clients.len()));
        let t1 = Instant::now();
        let mut acc1 = Accum::default();
        let mut locals = Vec::with_capacity(clients.len());
        let mut weights = Vec::with_capacity(clients.len());
        let stage1 = Stage1Settings {
            align: s.align,
            lambda_proj: s.lambda_proj,
        };
        for &k in &clients {
            let mut params = state.global.clone();
            let mut opt = Sgd::new(s.stage1);
            if s.carry_momentum {
                opt.momentum = state.momentum.take();
            }
            let idx = &self.partition.clients[k].train;
            for (step, batch) in self.schedule.batches(t, k, 1, idx)?.iter().enumerate() {
                let path = [t as u64, k as u64, 1, step as u64];
                let (inputs, frozen) = self.train_inputs(batch, &path)?;
                let z = self.zero_shot_logits(&frozen)?;
                let y = self.labels(SplitKind::Train, batch);
                let dropout = self.dropout_seed(&path);
                let st = stage1_step(
                    self.clip,
                    &self.peft,
                    &mut params,
                    &mut opt,
                    &inputs,
                    &y,
                    &z,
                    &stage1,
                    dropout,
                )
                .with_context(|| format!("stage 1, round {t}, client {k}, step {step}"))?;
                acc1.add(&st, y.len());
            }
            if s.carry_momentum {
                state.momentum = opt.momentum.take();
            }
            locals.push(params);
            weights.push(idx.len() as f64);
        }
        if weights.iter().sum::<f64>() > 0.0 {
            let refs: Vec<&ParamSet> = locals.iter().collect();
            state.global = ParamSet::weighted_average(&refs, &weights)?;
        }
        let stage1_stats = acc1.finish(t1.elapsed().as_secs_f64());
        // Stage 2.
        phase("stage 2");
        let t2 = Instant::now();
        let mut acc2 = Accum::default();
        let global_text = self.peft.text_features(self.clip, &state.global)?;
        // SPEC §5: the adapter's private branch learns only through the fused logits.
        let lambda = if matches!(self.peft, Peft::Adapter { .. }) {
            0.0
        } else {
            s.lambda
        };
        for &k in &clients {
            let mut private = state.private[k]
                .clone()
                .unwrap_or_else(|| self.private_init.clone());
            let mut opt = Sgd::new(s.stage2);
            let idx = &self.partition.clients[k].train;
            for (step, batch) in self.schedule.batches(t, k, 2, idx)?.iter().enumerate() {
                let path = [t as u64, k as u64, 2, step as u64];
                let (inputs, _) = self.train_inputs(batch, &path)?;
                let y = self.labels(SplitKind::Train, batch);
                let l_g = self
                    .peft
                    .logits_with_text(self.clip, &state.global, &inputs, &global_text)?;
                let dropout = self.dropout_seed(&path);
                let st = stage2_step(
                    self.clip,
                    &self.peft,
                    &mut private,
                    &mut opt,
                    &inputs,
                    &y,
                    &l_g,
                    lambda,
                    dropout,
                )
                .with_context(|| format!("stage 2, round {t}, client {k}, step {step}"))?;
                acc2.add(&st, y.len());
            }
            state.private[k] = Some(private);
        }
        let stage2_stats = acc2.finish(t2.elapsed().as_secs_f64());
        // Evaluation.
        phase("GM and PM evaluation");
        let te = Instant::now();
        let (gm, pm) = self.evaluate(state)?;
        state.rounds_done = t + 1;
        Ok(RoundRecord {
            round: t,
            clients,
            stage1: stage1_stats,
            stage2: stage2_stats,
            gm,
            pm,
            eval_seconds: te.elapsed().as_secs_f64(),
        })
    }

    fn dropout_seed(&self, path: &[u64]) -> Option<u64> {
        self.peft
            .needs_pixels()
            .then(|| rng::substream(self.settings.seed, "dropout", path).next_u64_seed())
    }

    /// Logits `[n, C]` of test samples `idx` under `params` with text features `text`.
    fn test_logits(&self, params: &ParamSet, text: &Tensor, idx: &[usize]) -> Result<Tensor> {
        let mut out = Vec::new();
        for chunk in idx.chunks(self.settings.eval_batch.max(1)) {
            let inputs = if self.peft.needs_pixels() {
                Inputs::Pixels(self.pixels(SplitKind::Test, chunk, Mode::Test, &[])?)
            } else {
                Inputs::Features(self.test_rows(chunk)?)
            };
            out.push(self.peft.logits_with_text(self.clip, params, &inputs, text)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    fn test_rows(&self, idx: &[usize]) -> Result<Tensor> {
        let rows: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        Ok(self
            .bank
            .test
            .index_select(&Tensor::from_vec(rows, idx.len(), self.clip.device())?, 0)?)
    }

    /// Zero-shot evaluation (GM = PM) on the same test sets.
    pub fn evaluate_zero_shot(&self) -> Result<(Evaluation, Evaluation)> {
        let all: Vec<usize> = (0..self.dataset.test.len()).collect();
        let logits = |idx: &[usize]| self.zero_shot_logits(&self.test_rows(idx)?);
        self.evaluate_with(&all, &logits, &|_, idx| logits(idx))
    }

    /// GM and PM evaluation of a state.
    pub fn evaluate(&self, state: &FedState) -> Result<(Evaluation, Evaluation)> {
        let text_g = self.peft.text_features(self.clip, &state.global)?;
        let all: Vec<usize> = (0..self.dataset.test.len()).collect();
        let gm = |idx: &[usize]| self.test_logits(&state.global, &text_g, idx);
        let privates: Vec<ParamSet> = state
            .private
            .iter()
            .map(|p| p.clone().unwrap_or_else(|| self.private_init.clone()))
            .collect();
        let texts: Vec<Tensor> = privates
            .iter()
            .map(|p| self.peft.text_features(self.clip, p))
            .collect::<Result<_>>()?;
        let pm = |k: usize, idx: &[usize]| -> Result<Tensor> {
            Ok((self.test_logits(&state.global, &text_g, idx)?
                + self.test_logits(&privates[k], &texts[k], idx)?)?)
        };
        self.evaluate_with(&all, &gm, &pm)
    }

    /// Evaluates `gm` on `all` and `pm` on every client's test set, in client order.
    fn evaluate_with(
        &self,
        all: &[usize],
        gm: &dyn Fn(&[usize]) -> Result<Tensor>,
        pm: &dyn Fn(usize, &[usize]) -> Result<Tensor>,
    ) -> Result<(Evaluation, Evaluation)> {
        let c = self.dataset.num_classes();
        let groups = &self.partition.groups;
        let (gm_conf, gm_tkl) = self.score(all, &gm(all)?)?;
        let gm_eval = Evaluation {
            accuracy: group_accuracy(&gm_conf, groups),
            balancedness: balancedness(&gm_conf, groups),
            tkl: gm_tkl,
            per_class: gm_conf.per_class(),
            weighted_all: gm_conf.micro(),
        };
        let mut confs = Vec::with_capacity(self.clients());
        let mut pooled = Confusion::new(c);
        let (mut tkl_sum, mut n) = (0.0, 0usize);
        for (k, client) in self.partition.clients.iter().enumerate() {
            let idx = &client.test;
            if idx.is_empty() {
                confs.push(Confusion::new(c));
                continue;
            }
            let (conf, t) = self.score(idx, &pm(k, idx)?)?;
            tkl_sum += t * idx.len() as f64;
            n += idx.len();
            pooled.merge(&conf);
            confs.push(conf);
        }
        let pm_eval = Evaluation {
            accuracy: personalized_accuracy(&confs, groups),
            balancedness: balancedness(&pooled, groups),
            tkl: tkl_sum / n.max(1) as f64,
            per_class: pooled.per_class(),
            weighted_all: pooled.micro(),
        };
        Ok((gm_eval, pm_eval))
    }

    /// Confusion counts and mean TKL to the zero-shot model of `logits` on test `idx`.
    fn score(&self, idx: &[usize], logits: &Tensor) -> Result<(Confusion, f64)> {
        let mut conf = Confusion::new(self.dataset.num_classes());
        let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
        conf.add(&pred, &self.labels(SplitKind::Test, idx));
        let mut sum = 0.0;
        for (s, chunk) in idx.chunks(self.settings.eval_batch.max(1)).enumerate() {
            let start = s * self.settings.eval_batch.max(1);
            let l = logits.i(start..start + chunk.len())?;
            let z = self.zero_shot_logits(&self.test_rows(chunk)?)?;
            let k: Vec<f32> = tkl(&l, &z)?.kl_per_sample.to_vec1()?;
            sum += k.iter().map(|&v| v as f64).sum::<f64>();
        }
        Ok((conf, sum / idx.len().max(1) as f64))
    }
}

/// Running means of step statistics.
#[derive(Default)]
struct Accum {
    steps: usize,
    loss: f64,
    align: f64,
    projected: usize,
    tensors: usize,
    correct: usize,
    seen: usize,
}

impl Accum {
    fn add(&mut self, s: &StepStats, batch: usize) {
        self.steps += 1;
        self.loss += s.task_loss as f64;
        self.align += s.align_loss as f64;
        self.projected += s.projected;
        self.tensors += s.tensors;
        self.correct += s.correct;
        self.seen += batch;
    }

    fn finish(&self, seconds: f64) -> StageStats {
        let n = self.steps.max(1) as f64;
        StageStats {
            steps: self.steps,
            loss: self.loss / n,
            align_loss: self.align / n,
            projected_fraction: self.projected as f64 / self.tensors.max(1) as f64,
            train_accuracy: 100.0 * self.correct as f64 / self.seen.max(1) as f64,
            seconds,
        }
    }
}

/// A `u64` seed drawn from a stream.
trait SeedDraw {
    fn next_u64_seed(&mut self) -> u64;
}

impl SeedDraw for rng::StreamRng {
    fn next_u64_seed(&mut self) -> u64 {
        rand::RngCore::next_u64(self)
    }
}

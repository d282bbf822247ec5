//! A federation ready to train (docs/method.md §1, §7): the frozen CLIP, the PEFT kind, the dataset
//! and its client split, the frozen image features, the settings — and what every
//! algorithm's training and evaluation draw on: a client's epoch batch by batch, test
//! logits, scoring against the zero-shot model. The round loop that drives an algorithm
//! over it is [`super::train`]; nothing here knows an algorithm.
//!
//! Randomness is keyed, never carried: client sampling draws from the `"client-sampling"`
//! stream of round t, batch orders from `"batches"` of (round, client, stage) (both through
//! a [`Schedule`], which a replay of a recorded run can replace), LoRA dropout
//! from `"dropout"` of (round, client, stage, step), initial parameters from `"init"`. A
//! run resumed after round t therefore continues with exactly the numbers it would have
//! produced uninterrupted; the only state is the parameters and the momentum buffer.
//!
//! Frozen image features are encoded once (the image-feature cache) whenever the
//! transform is deterministic, or, with an augmenting transform and `views` V ≥ 1, as V
//! augmented views per training image of which each step takes one per sample (the
//! `"view"` stream of (round, client, stage, step)); LoRA on the image tower trains it and
//! always sees live pixels.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, IndexOp, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::local::{AlignLoss, StepStats};
use super::private_logits::PrivateLogits;
use super::record::{Accum, ClientScore, Evaluation};
use super::sgd::SgdConfig;
use super::stems::{StemBank, StemSources};
use crate::clip::model::l2_normalize;
use crate::clip::Clip;
use crate::data::dataset::{Dataset, SplitKind};
use crate::data::loader::{BatchLoader, LoaderConfig};
use crate::data::transforms::{Mode, Transform};
use crate::data::Partition;
use crate::metrics::{balancedness, group_accuracy, personalized_accuracy, Confusion};
use crate::objective::tkl::{kl_loss, tkl_per_sample};
use crate::peft::model::{Inputs, Peft};
use crate::peft::params::ParamSet;
use crate::pools::share;
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
    /// With a random (augmenting) train transform and a frozen image tower: how many
    /// augmented views of every training image to encode once and cache; each step then
    /// takes one of them per sample (drawn from the `"view"` stream of the step). 0 (the
    /// default) augments and encodes live, as the reference does. Ignored when the train
    /// transform is deterministic (its one view is always cached) or the image tower is
    /// trained (vision LoRA sees live pixels).
    #[serde(default)]
    pub views: usize,
    /// Compute, in stage-1 steps that apply one loss's gradient, the TKL alignment
    /// gradient too (not applied) and record the angle between them
    /// ([`super::local::AngleStats`]); FedPuReL's purified steps always record it.
    #[serde(default)]
    pub probe_alignment: bool,
    /// Memory (MiB) for cached image-tower stems when LoRA trains the vision tower
    /// ([`super::stems`]): the test split, then the training rows, each cached whole or
    /// not at all. Changes speed and memory, never a number, so it is not part of a run's
    /// recorded configuration.
    #[serde(default = "default_stem_cache_mib", skip_serializing)]
    pub stem_cache_mib: usize,
    /// Train a round's clients one after another even where they could run at once
    /// ([`super::at_once`]), and the rounds too ([`super::overlap`]): less memory, no
    /// other difference. Changes no number, so it
    /// is not part of a run's recorded configuration.
    #[serde(default, skip_serializing)]
    pub one_client_at_a_time: bool,
}

/// [`TrainSettings::stem_cache_mib`]'s default: the tiny and demo CLIPs' whole
/// CIFAR-sized data fits; ViT-B/16's (591 KiB per image) does not, and runs live.
pub const DEFAULT_STEM_CACHE_MIB: usize = 2048;

fn default_stem_cache_mib() -> usize {
    DEFAULT_STEM_CACHE_MIB
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
    /// The algorithm's server-side state (e.g. a class-prior estimate), if any.
    pub server_extra: Option<ParamSet>,
    /// The algorithm's per-client state (e.g. per-class controllers), if any.
    pub client_extra: Vec<Option<ParamSet>>,
}

impl FedState {
    /// The state before round 0: `global` as the global parameters, `clients` clients
    /// without private parameters or algorithm state, no momentum.
    pub fn fresh(global: ParamSet, clients: usize) -> Self {
        FedState {
            rounds_done: 0,
            global,
            private: vec![None; clients],
            momentum: None,
            server_extra: None,
            client_extra: vec![None; clients],
        }
    }
}

/// One training batch as an algorithm's local step sees it.
pub struct Batch {
    /// Step index within the epoch.
    pub step: usize,
    /// Stage (1: the global model's training, 2: personalization).
    pub stage: u8,
    /// Cached features or pixels.
    pub inputs: Inputs,
    /// The frozen zero-shot model's logits on the batch.
    pub zero_shot: Tensor,
    /// Labels.
    pub labels: Vec<u32>,
    /// LoRA dropout seed of this step (None without dropout).
    pub dropout: Option<u64>,
}

/// Which clients train in a round and how each client's epoch is batched. The default
/// [`KeyedSchedule`] draws both from keyed random streams; a replay of a recorded run
/// (see [`super::replay`]) supplies them from files.
pub trait Schedule: Send + Sync {
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
    /// Train features, `views` blocks of one row per index in `train_rows` (view-major).
    train: Option<Tensor>,
    /// Views per training image in `train` (1: the deterministic transform's only view).
    views: usize,
    /// Row of each original train index in `train` (usize::MAX where absent).
    train_row: Vec<usize>,
    /// Test features for the whole test split.
    test: Tensor,
}

/// Per-client data that differs between the phases of a round, as in the authors' code on
/// its list-file datasets: its three trainers each draw their own (unseeded) Dirichlet split
/// of the same images, so a client's stage 1 trains on one split, its stage 2 and PM test
/// on another, and FedAvg weighs it by a third's size (recorded by the reference harness,
/// read by [`super::replay::read_phase_splits`]). Without it one split serves every phase.
#[derive(Debug, Clone)]
pub struct PhaseSplits {
    /// Per client, the training rows of its personalization (stage-2) epoch.
    pub stage2_train: Vec<Vec<usize>>,
    /// Per client, its weight in the server's average.
    pub fedavg_weight: Vec<f64>,
}

/// A federation ready to train: model, PEFT, data, split, frozen features.
pub struct Federation<'a> {
    pub(super) clip: &'a Clip,
    pub(super) peft: Peft,
    pub(super) dataset: Arc<Dataset>,
    pub(super) partition: Partition,
    transform: Transform,
    zs_text: Tensor,
    bank: FeatureBank,
    stems: StemBank,
    settings: TrainSettings,
    pub(super) private_init: ParamSet,
    pub(super) schedule: Box<dyn Schedule + 'a>,
    phase_splits: Option<PhaseSplits>,
    /// Each client's last private-branch test logits (LoRA on the image tower).
    pub(super) private_logits: PrivateLogits,
    /// Each client's last private-branch text features (every PM evaluation needs every
    /// client's; only the round's sampled clients changed theirs).
    pub(super) private_texts: PrivateLogits,
}

impl<'a> Federation<'a> {
    /// Prepares a run. `zero_shot_text` are the normalized class text features of the
    /// dataset's template; `encode` turns (split, indices, views) into frozen features,
    /// `[views · N, E]` view-major (views > 1 only for an augmenting train transform; the
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
        mut encode: impl FnMut(SplitKind, &[usize], usize) -> Result<Tensor>,
    ) -> Result<Self> {
        if settings.batch_size == 0 || settings.rounds == 0 {
            bail!("batch size and rounds must be at least 1");
        }
        if !(settings.frac > 0.0 && settings.frac <= 1.0) {
            bail!("--frac must be in (0, 1], got {}", settings.frac);
        }
        let n_train = dataset.train.len();
        let deterministic = transform.is_deterministic(Mode::Train);
        let views = if deterministic { 1 } else { settings.views };
        let (train, train_row) = if deterministic || (views > 0 && !peft.needs_pixels()) {
            let rows = partition.lt_train.clone();
            let feats = encode(SplitKind::Train, &rows, views)?;
            let mut map = vec![usize::MAX; n_train];
            for (r, &i) in rows.iter().enumerate() {
                map[i] = r;
            }
            (Some(feats), map)
        } else {
            (None, Vec::new())
        };
        let all_test: Vec<usize> = (0..dataset.test.len()).collect();
        let test = encode(SplitKind::Test, &all_test, 1)?;
        let private_init = peft.init(clip, rng::stream(settings.seed, "init-private").next_u64_seed())?;
        let schedule = Box::new(KeyedSchedule {
            seed: settings.seed,
            frac: settings.frac,
            clients: partition.clients.len(),
            batch_size: settings.batch_size,
        });
        let clients = partition.clients.len();
        let mut fed = Federation {
            clip,
            peft,
            dataset,
            partition,
            transform,
            zs_text: zero_shot_text,
            bank: FeatureBank {
                train,
                views: views.max(1),
                train_row,
                test,
            },
            settings,
            private_init,
            schedule,
            stems: StemBank::default(),
            phase_splits: None,
            private_logits: PrivateLogits::new(clients),
            private_texts: PrivateLogits::new(clients),
        };
        if fed.peft.needs_pixels() {
            let sources = StemSources {
                n_test: fed.dataset.test.len(),
                train_rows: fed
                    .train_stems_cacheable()
                    .then_some(fed.partition.lt_train.as_slice()),
                budget_mib: fed.settings.stem_cache_mib,
                batch: fed.settings.eval_batch,
            };
            let pixels = |split, idx: &[usize], mode| fed.pixels(split, idx, mode, &[]);
            fed.stems = StemBank::build(fed.clip, sources, pixels)?;
        }
        Ok(fed)
    }

    /// Whether the training rows' image-tower stems may be cached: the train transform
    /// is deterministic (one view per image, whose frozen features are banked).
    fn train_stems_cacheable(&self) -> bool {
        self.bank.train.is_some() && self.transform.is_deterministic(Mode::Train)
    }

    /// Replaces the client and batch schedule (e.g. to replay a recorded run).
    pub fn set_schedule(&mut self, schedule: Box<dyn Schedule + 'a>) {
        self.schedule = schedule;
    }

    /// Gives stage 2 and the server's average their own per-client data (a replay of the
    /// authors' code on a list-file dataset, see [`PhaseSplits`]); the stage-2 rows must
    /// be long-tailed training rows of the partition.
    pub fn set_phase_splits(&mut self, splits: PhaseSplits) -> Result<()> {
        let k = self.clients();
        if splits.stage2_train.len() != k || splits.fedavg_weight.len() != k {
            bail!(
                "phase splits for {} / {} clients, the partition has {k}",
                splits.stage2_train.len(),
                splits.fedavg_weight.len()
            );
        }
        let lt: std::collections::HashSet<usize> = self.partition.lt_train.iter().copied().collect();
        if let Some(bad) = splits.stage2_train.iter().flatten().find(|i| !lt.contains(i)) {
            bail!("stage-2 row {bad} is not in the long-tailed training subset");
        }
        self.phase_splits = Some(splits);
        Ok(())
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
        Ok(FedState::fresh(global, self.partition.clients.len()))
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
    pub(super) fn train_inputs(&self, idx: &[usize], path: &[u64]) -> Result<(Inputs, Tensor)> {
        // Rows of `idx` in the feature bank (one drawn view each); with one view, also
        // their rows in the stem bank, which follows the bank's row order.
        let rows = self.bank.train.as_ref().map(|_| -> Result<Tensor> {
            let n = self.partition.lt_train.len();
            let mut pick = (self.bank.views > 1).then(|| rng::substream(self.settings.seed, "view", path));
            let rows: Vec<u32> = idx
                .iter()
                .map(|&i| {
                    let v = pick.as_mut().map_or(0, |r| r.random_range(0..self.bank.views));
                    (v * n + self.bank.train_row[i]) as u32
                })
                .collect();
            Ok(Tensor::from_vec(rows, idx.len(), self.clip.device())?)
        });
        let rows = rows.transpose()?;
        let cached = match (&self.bank.train, &rows) {
            (Some(f), Some(r)) => Some(f.index_select(r, 0)?),
            _ => None,
        };
        if !self.peft.needs_pixels() {
            if let Some(f) = cached {
                return Ok((Inputs::Features(f.clone()), f));
            }
        }
        if let (Some(stems), Some(frozen), Some(rows)) = (&self.stems.train, &cached, &rows) {
            return Ok((Inputs::Stems(stems.index_select(rows, 0)?), frozen.clone()));
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

    pub(super) fn pixels(&self, split: SplitKind, idx: &[usize], mode: Mode, path: &[u64]) -> Result<Tensor> {
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

    pub(super) fn labels(&self, split: SplitKind, idx: &[usize]) -> Vec<u32> {
        let l = &self.dataset.split(split).labels;
        idx.iter().map(|&i| l[i]).collect()
    }

    pub(super) fn zero_shot_logits(&self, frozen: &Tensor) -> Result<Tensor> {
        Ok((l2_normalize(frozen)?.matmul(&self.zs_text.t()?)? * self.clip.logit_scale_exp())?)
    }

    /// Client `k`'s FedAvg weight n_k: its training-set size.
    pub fn client_weight(&self, k: usize) -> f64 {
        match &self.phase_splits {
            Some(p) => p.fedavg_weight[k],
            None => self.partition.clients[k].train.len() as f64,
        }
    }

    /// Client `k`'s training and test sizes.
    pub fn client_sizes(&self, k: usize) -> (usize, usize) {
        let c = &self.partition.clients[k];
        (c.train.len(), c.test.len())
    }

    /// Client `k`'s epoch of round `t` in `stage` (1: local training, 2: personalization),
    /// batch by batch through `step`; the batch order and LoRA dropout come from the
    /// keyed streams of (round, client, stage[, step]).
    pub fn client_epoch(
        &self,
        t: usize,
        k: usize,
        stage: u8,
        mut step: impl FnMut(&Batch) -> Result<StepStats> + Send,
    ) -> Result<Accum> {
        let mut acc = Accum::default();
        let idx = match (&self.phase_splits, stage) {
            (Some(p), 2) => &p.stage2_train[k],
            _ => &self.partition.clients[k].train,
        };
        for (i, batch) in self.schedule.batches(t, k, stage, idx)?.iter().enumerate() {
            let path = [t as u64, k as u64, stage as u64, i as u64];
            let (inputs, frozen) = self.train_inputs(batch, &path)?;
            let b = Batch {
                step: i,
                stage,
                zero_shot: self.zero_shot_logits(&frozen)?,
                inputs,
                labels: self.labels(SplitKind::Train, batch),
                dropout: self.dropout_seed(&path),
            };
            // On every core once an overlapped round's other half is done (`pools::widen`).
            let st = crate::pools::widen::step(|| step(&b)).with_context(|| {
                let what = if stage == 1 {
                    "local training"
                } else {
                    "personalization"
                };
                format!("{what}, round {t}, client {k}, step {i}")
            })?;
            acc.add(&st, b.labels.len());
            crate::faults::point(if stage == 1 {
                "local-step"
            } else {
                "personalization-step"
            });
        }
        Ok(acc)
    }

    /// The model.
    pub fn clip(&self) -> &Clip {
        self.clip
    }

    /// The PEFT kind.
    pub fn peft(&self) -> &Peft {
        &self.peft
    }

    /// The private parameters a client starts from (the `"init-private"` stream).
    pub fn private_init(&self) -> &ParamSet {
        &self.private_init
    }

    /// Long-tailed training count per class (the global class prior).
    pub fn class_counts(&self) -> &[usize] {
        &self.partition.class_counts
    }

    /// Client `k`'s training count per class.
    pub fn client_class_counts(&self, k: usize) -> Vec<usize> {
        let mut n = vec![0; self.dataset.num_classes()];
        for y in self.labels(SplitKind::Train, &self.partition.clients[k].train) {
            n[y as usize] += 1;
        }
        n
    }

    pub(super) fn dropout_seed(&self, path: &[u64]) -> Option<u64> {
        self.peft
            .needs_pixels()
            .then(|| rng::substream(self.settings.seed, "dropout", path).next_u64_seed())
    }

    /// Logits `[n, C]` of test samples `idx` under `params` with text features `text`.
    pub(super) fn test_logits(&self, params: &ParamSet, text: &Tensor, idx: &[usize]) -> Result<Tensor> {
        let mut out = Vec::new();
        for chunk in idx.chunks(self.settings.eval_batch.max(1)) {
            let inputs = self.test_inputs(chunk)?;
            out.push(self.peft.logits_with_text(self.clip, params, &inputs, text)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    /// What the PEFT model reads of test images `chunk`: cached stems, pixels, or cached
    /// features.
    fn test_inputs(&self, chunk: &[usize]) -> Result<Inputs> {
        Ok(if let Some(stems) = &self.stems.test {
            Inputs::Stems(stems.index_select(&self.index_tensor(chunk)?, 0)?)
        } else if self.peft.needs_pixels() {
            Inputs::Pixels(self.pixels(SplitKind::Test, chunk, Mode::Test, &[])?)
        } else {
            Inputs::Features(self.test_rows(chunk)?)
        })
    }

    /// The image tower's class rows `[len, D]` of test images `idx` under LoRA `params`
    /// ([`Peft::class_rows`]), computed in the chunks [`test_logits`](Self::test_logits)
    /// uses.
    pub(super) fn test_class_rows(&self, params: &ParamSet, idx: &[usize]) -> Result<Tensor> {
        let mut out = Vec::new();
        for chunk in idx.chunks(self.settings.eval_batch.max(1)) {
            out.push(
                self.peft
                    .class_rows(self.clip, params, &self.test_inputs(chunk)?)?,
            );
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    /// [`test_logits`](Self::test_logits) from class rows `[len, D]` of the test images
    /// it would be asked for, in the same chunks: the same bits when the rows are
    /// batch-invariant ([`Peft::reuses_class_rows`]).
    pub(super) fn logits_from_class_rows(&self, rows: &Tensor, text: &Tensor) -> Result<Tensor> {
        let (n, batch) = (rows.dim(0)?, self.settings.eval_batch.max(1));
        let mut out = Vec::new();
        for start in (0..n).step_by(batch) {
            let chunk = rows.narrow(0, start, batch.min(n - start))?.contiguous()?;
            out.push(self.peft.logits_from_class_rows(self.clip, &chunk, text)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    pub(super) fn test_rows(&self, idx: &[usize]) -> Result<Tensor> {
        Ok(self.bank.test.index_select(&self.index_tensor(idx)?, 0)?)
    }

    /// `idx` as a `u32` index tensor on the model's device.
    fn index_tensor(&self, idx: &[usize]) -> Result<Tensor> {
        let rows: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        Ok(Tensor::from_vec(rows, idx.len(), self.clip.device())?)
    }

    /// Zero-shot evaluation (GM = PM) on the same test sets.
    pub fn evaluate_zero_shot(&self) -> Result<(Evaluation, Evaluation)> {
        let all: Vec<usize> = (0..self.dataset.test.len()).collect();
        let logits = |idx: &[usize]| self.zero_shot_logits(&self.test_rows(idx)?);
        let (gm, pm, _) = self.evaluate_with(&all, &logits, &|_, idx| logits(idx))?;
        Ok((gm, pm))
    }

    pub(super) fn client_score(&self, idx: &[usize], logits: &Tensor) -> Result<ClientScore> {
        let (conf, tkl, _) = self.score(idx, logits)?;
        let groups = &self.partition.groups;
        Ok(ClientScore {
            accuracy: (conf.samples() > 0).then(|| conf.micro()),
            many: conf.micro_over(&groups.many),
            medium: conf.micro_over(&groups.medium),
            few: conf.micro_over(&groups.few),
            tkl,
            correct: conf.correct.iter().sum::<u64>() as usize,
        })
    }

    /// Evaluates `gm` on the global test set `all`.
    pub(super) fn evaluate_gm(
        &self,
        all: &[usize],
        gm: &(dyn Fn(&[usize]) -> Result<Tensor> + Sync),
    ) -> Result<Evaluation> {
        let groups = &self.partition.groups;
        let (gm_conf, gm_tkl, gm_kl) = self.score(all, &gm(all)?)?;
        Ok(Evaluation {
            accuracy: group_accuracy(&gm_conf, groups),
            balancedness: balancedness(&gm_conf, groups),
            tkl: gm_tkl,
            kl: gm_kl,
            per_class: gm_conf.per_class(),
            weighted_all: gm_conf.micro(),
        })
    }

    /// Evaluates `gm` on `all` and `pm` on every client's test set, in client order.
    pub(super) fn evaluate_with(
        &self,
        all: &[usize],
        gm: &(dyn Fn(&[usize]) -> Result<Tensor> + Sync),
        pm: &(dyn Fn(usize, &[usize]) -> Result<Tensor> + Sync),
    ) -> Result<(Evaluation, Evaluation, [f64; 2])> {
        let tg = Instant::now();
        let c = self.dataset.num_classes();
        let groups = &self.partition.groups;
        let gm_eval = self.evaluate_gm(all, gm)?;
        let gm_seconds = tg.elapsed().as_secs_f64();
        crate::faults::point("evaluation:gm-done");
        let tp = Instant::now();
        let mut confs = Vec::with_capacity(self.clients());
        let mut pooled = Confusion::new(c);
        let (mut tkl_sum, mut kl_sum, mut n) = (0.0, 0.0, 0usize);
        // Clients scored one by one (by a helping thread too, `pools::share`), combined
        // in client order.
        let scores = share::for_each(self.clients(), |k| {
            let idx = &self.partition.clients[k].test;
            if idx.is_empty() {
                return Ok(None);
            }
            Ok(Some(self.score(idx, &pm(k, idx)?)?))
        })?;
        for (client, score) in self.partition.clients.iter().zip(scores) {
            let Some((conf, t, plain)) = score else {
                confs.push(Confusion::new(c));
                continue;
            };
            let len = client.test.len();
            tkl_sum += t * len as f64;
            kl_sum += plain * len as f64;
            n += len;
            pooled.merge(&conf);
            confs.push(conf);
        }
        let pm_eval = Evaluation {
            accuracy: personalized_accuracy(&confs, groups),
            balancedness: balancedness(&pooled, groups),
            tkl: tkl_sum / n.max(1) as f64,
            kl: kl_sum / n.max(1) as f64,
            per_class: pooled.per_class(),
            weighted_all: pooled.micro(),
        };
        Ok((gm_eval, pm_eval, [gm_seconds, tp.elapsed().as_secs_f64()]))
    }

    /// Confusion counts, mean TKL and mean plain KL (τ = 1) to the zero-shot model of
    /// `logits` on test `idx`.
    pub(super) fn score(&self, idx: &[usize], logits: &Tensor) -> Result<(Confusion, f64, f64)> {
        let mut conf = Confusion::new(self.dataset.num_classes());
        let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
        conf.add(&pred, &self.labels(SplitKind::Test, idx));
        let batch = self.settings.eval_batch.max(1);
        let chunks: Vec<&[usize]> = idx.chunks(batch).collect();
        // Chunk by chunk (by a helping thread too, `pools::share`), summed in chunk order.
        let parts = share::for_each(chunks.len(), |s| {
            let chunk = chunks[s];
            let l = logits.i(s * batch..s * batch + chunk.len())?;
            let z = self.zero_shot_logits(&self.test_rows(chunk)?)?;
            let k: Vec<f32> = tkl_per_sample(&l, &z)?.to_vec1()?;
            let tkl = k.iter().map(|&v| v as f64).sum::<f64>();
            Ok((tkl, kl_loss(&l, &z)? as f64 * chunk.len() as f64))
        })?;
        let (mut sum, mut plain) = (0.0, 0.0);
        for (tkl, kl) in parts {
            sum += tkl;
            plain += kl;
        }
        let n = idx.len().max(1) as f64;
        Ok((conf, sum / n, plain / n))
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

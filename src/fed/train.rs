//! The round loop every algorithm shares (docs/method.md §1, §4, §5, §7): per round, the sampled
//! clients train local copies of the global parameters (stage 1), the server
//! averages them weighted by client size and takes the algorithm's server step, the same
//! clients personalize against the fresh global model (stage 2), and both
//! models are evaluated: GM on the global test set, PM on every client's own test set.
//! What each phase does, and how GM and PM logits are formed, is the algorithm's
//! ([`super::algorithm::Algorithm`]); the federation it runs on is
//! [`super::federation::Federation`].

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::algorithm::{Algorithm, ClientCx, GmRule, PmRule};
use super::federation::{FedState, Federation};
use super::record::{Accum, ClientEvaluation, ClientScore, Evaluation, RoundRecord, StageStats};
use crate::peft::params::ParamSet;

/// What the first half of a round ([`Federation::local_round`]) hands the second
/// ([`Federation::finish_round`]).
#[derive(Debug, Clone)]
pub struct LocalRound {
    /// Round index.
    pub round: usize,
    /// Clients trained, in training order.
    pub clients: Vec<usize>,
    /// Stage 1's statistics.
    pub stage1: StageStats,
    /// Seconds of the server step.
    pub aggregate_seconds: f64,
}

impl Federation<'_> {
    /// Runs round `t = state.rounds_done` of `algo` and returns its record; `phase` is
    /// told each phase as it starts (for progress display). Local training of every
    /// sampled client from the round-start global model, the size-weighted average, the
    /// algorithm's server step, personalization of the same clients against the new global
    /// model, then GM and PM evaluation.
    pub fn run_round(
        &self,
        state: &mut FedState,
        algo: &dyn Algorithm,
        phase: &dyn Fn(&str),
    ) -> Result<RoundRecord> {
        let local = self.local_round(state, algo, state.rounds_done, phase)?;
        self.finish_round(state, algo, local, true, phase)
    }

    /// The first half of round `t`: local training of the sampled clients (stage 1), the
    /// clients at once where they are independent (`super::at_once`), the size-weighted
    /// average into `state.global` and the algorithm's server step. Reads and writes the
    /// global model, the carried momentum and the server state; `state.rounds_done` is
    /// left for [`finish_round`](Self::finish_round).
    pub fn local_round(
        &self,
        state: &mut FedState,
        algo: &dyn Algorithm,
        t: usize,
        phase: &dyn Fn(&str),
    ) -> Result<LocalRound> {
        let clients = if algo.trains() {
            self.schedule.clients(t)?
        } else {
            Vec::new()
        };
        if let Some(&bad) = clients.iter().find(|&&k| k >= self.clients()) {
            bail!(
                "round {t}: client {bad} does not exist ({} clients)",
                self.clients()
            );
        }
        phase(&format!("local training ({} clients)", clients.len()));
        let t1 = Instant::now();
        let mut acc1 = Accum::default();
        let mut locals = Vec::with_capacity(clients.len());
        let weights: Vec<f64> = clients.iter().map(|&k| self.client_weight(k)).collect();
        let at_once = self.clients_at_once(&clients, 1);
        let trained = self.for_each_client(state, &clients, at_once, algo, |state, k| {
            self.train_client(state, algo, t, k)
        })?;
        for (params, acc) in trained {
            acc1.merge(&acc);
            locals.push(params);
        }
        let stage1 = acc1.finish(t1.elapsed().as_secs_f64());
        phase("aggregation");
        let ta = Instant::now();
        if weights.iter().sum::<f64>() > 0.0 {
            let refs: Vec<&ParamSet> = locals.iter().collect();
            state.global = ParamSet::weighted_average(&refs, &weights)?;
        }
        algo.after_aggregation(self, t, state)?;
        crate::faults::point("aggregation");
        Ok(LocalRound {
            round: t,
            clients,
            stage1,
            aggregate_seconds: ta.elapsed().as_secs_f64(),
        })
    }

    /// The second half of the round `local` began: personalization of its clients
    /// (stage 2) against the new global model, then GM and PM evaluation; sets
    /// `state.rounds_done` past it and returns the round's record. Reads the global model
    /// and the server state, writes only the clients' own slots. `clients_at_once: false`
    /// personalizes the clients one after another even where they could run at once
    /// (`super::at_once`), e.g. while the next round's local training holds a core.
    pub fn finish_round(
        &self,
        state: &mut FedState,
        algo: &dyn Algorithm,
        local: LocalRound,
        clients_at_once: bool,
        phase: &dyn Fn(&str),
    ) -> Result<RoundRecord> {
        let LocalRound {
            round: t,
            clients,
            stage1,
            aggregate_seconds,
        } = local;
        phase("personalization");
        let t2 = Instant::now();
        let mut acc2 = Accum::default();
        if !clients.is_empty() {
            let global_text = self.personalization_text(state)?;
            let at_once = clients_at_once && self.clients_at_once(&clients, 2);
            let personalized = self.for_each_client(state, &clients, at_once, algo, |state, k| {
                self.personalize_client(state, algo, t, k, &global_text)
            })?;
            for acc in &personalized {
                acc2.merge(acc);
            }
        }
        let stage2 = acc2.finish(t2.elapsed().as_secs_f64());
        phase("GM and PM evaluation");
        let te = Instant::now();
        let (gm, pm, [gm_seconds, pm_seconds]) = self.evaluate_timed(state, algo)?;
        state.rounds_done = t + 1;
        Ok(RoundRecord {
            round: t,
            clients,
            stage1,
            stage2,
            gm,
            pm,
            eval_seconds: te.elapsed().as_secs_f64(),
            aggregate_seconds,
            gm_seconds,
            pm_seconds,
        })
    }

    /// Client `k`'s local training in round `t` (stage 1): its copy of the
    /// round-start global model `state.global` after one epoch of `algo`'s local step, and
    /// the epoch's statistics. The algorithm may update the client's private state.
    pub fn train_client(
        &self,
        state: &mut FedState,
        algo: &dyn Algorithm,
        t: usize,
        k: usize,
    ) -> Result<(ParamSet, Accum)> {
        let cx = self.client(t, k, None);
        let mut params = state.global.clone();
        let acc = algo.train_local(&cx, &mut params, state)?;
        Ok((params, acc))
    }

    /// The freshly aggregated global model's text features, as personalization sees them.
    pub fn personalization_text(&self, state: &FedState) -> Result<Tensor> {
        self.peft.text_features(self.clip, &state.global)
    }

    /// Client `k`'s personalization in round `t` (stage 2) against the new
    /// global model `state.global`, whose text features are `global_text`
    /// ([`personalization_text`](Self::personalization_text)).
    pub fn personalize_client(
        &self,
        state: &mut FedState,
        algo: &dyn Algorithm,
        t: usize,
        k: usize,
        global_text: &Tensor,
    ) -> Result<Accum> {
        algo.personalize(&self.client(t, k, Some(global_text)), state)
    }

    /// What `algo`'s hooks see of client `client` in round `round`.
    fn client<'c>(&'c self, round: usize, client: usize, global_text: Option<&'c Tensor>) -> ClientCx<'c> {
        ClientCx {
            fed: self,
            round,
            client,
            global_text,
        }
    }

    /// GM and PM evaluation of a state under the algorithm's rules.
    pub fn evaluate(&self, state: &FedState, algo: &dyn Algorithm) -> Result<(Evaluation, Evaluation)> {
        self.evaluate_timed(state, algo).map(|(gm, pm, _)| (gm, pm))
    }

    /// [`evaluate`](Self::evaluate), with the seconds of the GM and the PM evaluation.
    pub fn evaluate_timed(
        &self,
        state: &FedState,
        algo: &dyn Algorithm,
    ) -> Result<(Evaluation, Evaluation, [f64; 2])> {
        let all: Vec<usize> = (0..self.dataset.test.len()).collect();
        // The global and private text features count to GM and PM evaluation.
        let tg = Instant::now();
        let heads = Heads::new(self, state, algo)?;
        let gm_text = tg.elapsed().as_secs_f64();
        let gm = |idx: &[usize]| heads.gm(idx);
        if heads.pm_rule == PmRule::SameAsGm {
            let (g, p, [gs, ps]) = self.evaluate_with(&all, &gm, &|_, idx| gm(idx))?;
            return Ok((g, p, [gs + gm_text, ps]));
        }
        let tp = Instant::now();
        let privates: Vec<ParamSet> = (0..self.clients()).map(|k| heads.private(k)).collect();
        let texts: Vec<Tensor> = privates
            .iter()
            .enumerate()
            .map(|(k, p)| {
                self.private_texts
                    .get_or_compute(k, p, &[], || self.peft.text_features(self.clip, p))
            })
            .collect::<Result<_>>()?;
        let pm_text = tp.elapsed().as_secs_f64();
        let pm = |k: usize, idx: &[usize]| heads.pm(k, &privates[k], &texts[k], idx);
        let (g, p, [gs, ps]) = self.evaluate_with(&all, &gm, &pm)?;
        Ok((g, p, [gs + gm_text, ps + pm_text]))
    }

    /// The GM evaluation alone (global test set), as [`evaluate`](Self::evaluate) gives it.
    pub fn evaluate_global(&self, state: &FedState, algo: &dyn Algorithm) -> Result<Evaluation> {
        let all: Vec<usize> = (0..self.dataset.test.len()).collect();
        let heads = Heads::new(self, state, algo)?;
        self.evaluate_gm(&all, &|idx| heads.gm(idx))
    }

    /// Client `k`'s share of the evaluation: the GM and its PM on the client's own test
    /// set, with the same logits as [`evaluate`](Self::evaluate). Averaging
    /// [`ClientScore::accuracy`] of the PM over all clients with test samples gives the
    /// PM `accuracy.all` of [`evaluate`](Self::evaluate), and the group means likewise.
    pub fn evaluate_client(
        &self,
        state: &FedState,
        algo: &dyn Algorithm,
        k: usize,
    ) -> Result<ClientEvaluation> {
        let Some(client) = self.partition.clients.get(k) else {
            bail!("client {k} does not exist ({} clients)", self.clients());
        };
        let idx = &client.test;
        let heads = Heads::new(self, state, algo)?;
        let empty = || ClientScore {
            accuracy: None,
            many: None,
            medium: None,
            few: None,
            tkl: 0.0,
            correct: 0,
        };
        if idx.is_empty() {
            return Ok(ClientEvaluation {
                test_samples: 0,
                gm: empty(),
                pm: empty(),
            });
        }
        let gm = self.client_score(idx, &heads.gm(idx)?)?;
        let pm = if heads.pm_rule == PmRule::SameAsGm {
            gm.clone()
        } else {
            let private = heads.private(k);
            let text = self.peft.text_features(self.clip, &private)?;
            self.client_score(idx, &heads.pm(k, &private, &text, idx)?)?
        };
        Ok(ClientEvaluation {
            test_samples: idx.len(),
            gm,
            pm,
        })
    }
}

/// The test logits of one state under an algorithm: the global branch (zero-shot or the
/// global parameters), the GM the algorithm makes of it, and how a client's private
/// branch joins it (the algorithm's [`PmRule`]).
struct Heads<'h> {
    fed: &'h Federation<'h>,
    state: &'h FedState,
    algo: &'h dyn Algorithm,
    pm_rule: PmRule,
    text_g: Option<Tensor>,
    /// Whether the global branch goes through [`GlobalClassRows`] ([`Peft::reuses_class_rows`](crate::peft::model::Peft::reuses_class_rows)).
    reuse_rows: bool,
    /// The global model's class rows of the test images it last ran on.
    global_rows: Mutex<Option<GlobalClassRows>>,
}

/// The global model's image-tower class rows ([`Peft::reuses_class_rows`](crate::peft::model::Peft::reuses_class_rows)) of some test
/// images: the GM pass leaves every test image's here, and the PMs' global branch
/// (FedPuReL's l_G, PromptFolio's mix) reads them instead of running the LoRA image tower
/// again for every client — the same bits, since the rows do not depend on the batch.
struct GlobalClassRows {
    /// Row of each test image in `rows` (`u32::MAX`: not held).
    position: Vec<u32>,
    /// `[held images, D]`.
    rows: Tensor,
}

impl<'h> Heads<'h> {
    fn new(fed: &'h Federation<'h>, state: &'h FedState, algo: &'h dyn Algorithm) -> Result<Self> {
        let text_g = match algo.gm_rule() {
            GmRule::ZeroShot => None,
            GmRule::Global => Some(fed.peft.text_features(fed.clip, &state.global)?),
        };
        Ok(Heads {
            fed,
            state,
            algo,
            pm_rule: algo.pm_rule(),
            text_g,
            reuse_rows: fed.peft.reuses_class_rows(fed.clip),
            global_rows: Mutex::new(None),
        })
    }

    /// The global branch l_G (before the algorithm's GM adjustment).
    fn global(&self, idx: &[usize]) -> Result<Tensor> {
        match &self.text_g {
            Some(text) if self.reuse_rows => {
                let rows = self.global_class_rows(idx)?;
                self.fed.logits_from_class_rows(&rows, text)
            }
            Some(text) => self.fed.test_logits(&self.state.global, text, idx),
            None => self.fed.zero_shot_logits(&self.fed.test_rows(idx)?),
        }
    }

    /// The global model's class rows `[idx.len(), D]` of test images `idx`: gathered
    /// from those held when they cover `idx`, else computed and then held.
    fn global_class_rows(&self, idx: &[usize]) -> Result<Tensor> {
        let held = self.global_rows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = &*held {
            let found: Option<Vec<u32>> = idx
                .iter()
                .map(|&i| held.position.get(i).copied().filter(|&p| p != u32::MAX))
                .collect();
            if let Some(pos) = found {
                let pos = Tensor::from_vec(pos, idx.len(), held.rows.device())?;
                return Ok(held.rows.index_select(&pos, 0)?);
            }
        }
        drop(held);
        let rows = self.fed.test_class_rows(&self.state.global, idx)?;
        let mut position = vec![u32::MAX; self.fed.dataset.test.len()];
        for (p, &i) in idx.iter().enumerate() {
            if let Some(slot) = position.get_mut(i) {
                *slot = p as u32;
            }
        }
        *self.global_rows.lock().unwrap_or_else(|e| e.into_inner()) = Some(GlobalClassRows {
            position,
            rows: rows.clone(),
        });
        Ok(rows)
    }

    /// The GM's logits.
    fn gm(&self, idx: &[usize]) -> Result<Tensor> {
        self.algo.gm_logits(self.fed, self.global(idx)?)
    }

    /// Client `k`'s private parameters for evaluation.
    fn private(&self, k: usize) -> ParamSet {
        self.pm_rule
            .private_or_start(&self.state.private[k], &self.state.global, &self.fed.private_init)
            .clone()
    }

    /// Client `k`'s PM logits with private parameters `private` (text features `text`).
    /// With LoRA on the image tower, l_P comes from the federation's kept logits when
    /// the client's parameters have not changed since they were computed.
    fn pm(&self, k: usize, private: &ParamSet, text: &Tensor, idx: &[usize]) -> Result<Tensor> {
        let compute = || self.fed.test_logits(private, text, idx);
        let l_p = if self.fed.peft.needs_pixels() {
            self.fed.private_logits.get_or_compute(k, private, idx, compute)?
        } else {
            compute()?
        };
        self.pm_rule.combine(|| self.global(idx), l_p)
    }
}

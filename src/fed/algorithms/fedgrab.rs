//! Fed-GraB (Xiao et al., "FedGraB: Federated Long-tailed Learning with Self-Adjusting
//! Gradient Balancer", NeurIPS 2023; github.com/ZackZikaiXiao/FedGraB read at 7394da6:
//! `util/losses.py` PIDLOSS/PID, `util/wene.py` WENO, `fed_grab.py`), on top of PromptFL
//! (`promptfl+fedgrab`) or PromptFolio (`promptfolio+fedgrab`).
//!
//! **Self-adjusting gradient balancer (SGB)**, per client, state kept across steps and
//! rounds (the code never resets it): per class c the cumulative weighted gradient
//! magnitudes on its logit, P_c from samples of class c and N_c from the others; a PID
//! controller per class drives D_c = P_c − N_c to 0 (incremental form, gains
//! k_p = 10, k_i = 0.01, k_d = 0.1; called once per step before the backward, with the D of
//! the previous step), and its output u_c becomes the weights of the positive and
//! negative gradient parts: w_ic = φ(u_c) if y_i = c else φ(−u_c), with
//! φ(x) = 10 / (1 + 9·e^(−x/2)) (φ(0) = 1, range (0, 10)). The per-step random exclusion
//! of the code is kept: walking the balanced classes from the most to the least frequent
//! (by the prior estimate; class index before one exists, as the code), the j-th
//! selected class is picked with probability 0.1^(j/(T−1)); picked classes get weight 1
//! and are left out of P/N this step (the `"fedgrab-exclusion"` stream of
//! (round, client, step)).
//!
//! **Direct prior analyzer (DPA)**, on the server after averaging: the code's WENO
//! estimator on the lengths n_c of the class vectors of the classifier — z-score, shifted
//! so that the smallest is 0, normalized, running mean over rounds — and the 75 % / 95 %
//! cumulative split into head, middle and tail; the SGB then balances the tail classes
//! only (the code's `pidmask = ["head", "middle"]`).
//!
//! Choices where the code or the paper does not fit CLIP, stated in summaries:
//! 1. The loss. The code balances a sigmoid BCE over all classes; on CLIP's logits
//!    (scale 100, cosines ≈ 0.2–0.35) every σ(z) ≈ 1 and BCE is degenerate, so we apply
//!    the same per-class positive/negative weights to the softmax cross-entropy gradient:
//!    ∂L/∂z_ic = w_ic·(p_ic − y_ic)/B, with P_c, N_c accumulated from those weighted parts.
//! 2. The classifier. CLIP has no learned linear head; the class vectors whose length can
//!    move are the unnormalized text features of the learned prompt (or text LoRA), so
//!    DPA reads those. With a fixed text side (vision LoRA, adapter) there is no
//!    classifier to analyse, and every class is balanced — which is what the released
//!    `fed_grab.py` does anyway (it never calls the DPA and marks every class as tail).
//! 3. The code's simulation bugs (the classifier excluded from the optimizer, FedAvg
//!    weights of the wrong clients) are not reproduced.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::Rng;

use super::promptfl::PromptFl;
use super::promptfolio::{PromptFolio, THETA};
use crate::fed::algorithm::{
    Accum, Algorithm, Batch, ClientCx, Entry, FedState, Federation, GmRule, PmRule, ReplaceableLoss, Setting,
    ALL_PEFTS,
};
use crate::objective::LossGrad;
use crate::peft::params::ParamSet;
use crate::peft::PeftKind;
use crate::rng;

/// The code's PID gains (k_p, k_i, k_d).
pub const DEFAULT_PID: [f64; 3] = [10.0, 0.01, 0.1];

/// The balancer's PID gains (k_p, k_i, k_d).
pub const PID_GAINS: Setting = Setting {
    key: "pid",
    flag: "pid",
    help: "Fed-GraB's PID gains k_p k_i k_d",
    default: &DEFAULT_PID,
    valid: f64::is_finite,
    expected: "finite numbers",
};

/// Fed-GraB on PromptFL and on PromptFolio.
pub const ENTRIES: &[Entry] = &[
    Entry {
        name: "promptfl+fedgrab",
        aliases: &["fedgrab"],
        summary: "PromptFL with Fed-GraB's balancer and prior analyzer",
        pefts: ALL_PEFTS,
        settings: &[&PID_GAINS],
        build: |s| Box::new(FedGrab::on_promptfl(s.vector(&PID_GAINS))),
    },
    Entry {
        name: "promptfolio+fedgrab",
        aliases: &[],
        summary: "PromptFolio with Fed-GraB's balancer and prior analyzer",
        pefts: &[PeftKind::Prompt],
        settings: &[&PID_GAINS, &THETA],
        build: |s| Box::new(FedGrab::on_promptfolio(s.vector(&PID_GAINS), s.scalar(&THETA))),
    },
];

const POS: &str = "fedgrab.pos";
const NEG: &str = "fedgrab.neg";
const PID: &str = "fedgrab.pid";
const PRIOR_SUM: &str = "fedgrab.prior_sum";
const PRIOR_COUNT: &str = "fedgrab.prior_count";

/// φ(x) = 10 / (1 + 9·e^(−x/2)): the map from controller output to gradient weight.
pub fn phi(x: f64) -> f64 {
    10.0 / (1.0 + 9.0 * (-x / 2.0).exp())
}

/// One incremental PID controller per class (set point 0): e_t = −D_t,
/// u_t = u_{t−1} + k_p(e_t − e_{t−1}) + k_i·e_t + k_d(e_t − 2e_{t−1} + e_{t−2}).
#[derive(Debug, Clone, PartialEq)]
pub struct Balancer {
    /// Cumulative positive gradient magnitude per class.
    pub pos: Vec<f64>,
    /// Cumulative negative gradient magnitude per class.
    pub neg: Vec<f64>,
    /// Per class (e_{t−1}, e_{t−2}, u_{t−1}).
    pub pid: Vec<[f64; 3]>,
}

impl Balancer {
    /// A fresh balancer for `c` classes.
    pub fn new(c: usize) -> Self {
        Balancer {
            pos: vec![0.0; c],
            neg: vec![0.0; c],
            pid: vec![[0.0; 3]; c],
        }
    }

    /// Advances every class's controller one step and returns the outputs u_c.
    pub fn control(&mut self, gains: [f64; 3]) -> Vec<f64> {
        let [kp, ki, kd] = gains;
        (0..self.pos.len())
            .map(|c| {
                let e = -(self.pos[c] - self.neg[c]);
                let [e1, e2, u1] = self.pid[c];
                let u = u1 + kp * (e - e1) + ki * e + kd * (e - 2.0 * e1 + e2);
                self.pid[c] = [e, e1, u];
                u
            })
            .collect()
    }

    fn to_params(&self) -> Result<ParamSet> {
        let c = self.pos.len();
        let flat: Vec<f64> = self.pid.iter().flatten().copied().collect();
        Ok(ParamSet::from_pairs([
            (
                POS.to_string(),
                Tensor::from_vec(self.pos.clone(), c, &Device::Cpu)?,
            ),
            (
                NEG.to_string(),
                Tensor::from_vec(self.neg.clone(), c, &Device::Cpu)?,
            ),
            (PID.to_string(), Tensor::from_vec(flat, (c, 3), &Device::Cpu)?),
        ]))
    }

    fn from_params(p: &ParamSet, c: usize) -> Result<Self> {
        let v = |name: &str| -> Result<Vec<f64>> {
            Ok(p.get(name)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
        };
        let (pos, neg, pid) = (v(POS)?, v(NEG)?, v(PID)?);
        if pos.len() != c || neg.len() != c || pid.len() != 3 * c {
            bail!("Fed-GraB state is for {} classes, the data has {c}", pos.len());
        }
        Ok(Balancer {
            pos,
            neg,
            pid: pid.chunks_exact(3).map(|x| [x[0], x[1], x[2]]).collect(),
        })
    }
}

/// The balanced gradient of one step: weights w from the controller outputs `u` for the
/// `balanced` classes that are not `excluded` (1 elsewhere), ∂L/∂z = w·(p − y)/B; the
/// weighted positive and negative parts are added to P and N for the non-excluded
/// balanced classes. Returns the loss (plain CE, as the code logs the unweighted loss).
pub fn balanced_ce(
    logits: &Tensor,
    y: &[u32],
    u: &[f64],
    balanced: &[bool],
    excluded: &[bool],
    state: &mut Balancer,
) -> Result<LossGrad> {
    let (b, c) = logits.dims2()?;
    let p: Vec<Vec<f32>> = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?.to_vec2()?;
    let mut grad = vec![0f32; b * c];
    let mut loss = 0f64;
    let active = |j: usize| balanced[j] && !excluded[j];
    for (i, row) in p.iter().enumerate() {
        let yi = y[i] as usize;
        loss -= f64::from(row[yi].max(f32::MIN_POSITIVE)).ln();
        for j in 0..c {
            let target = if j == yi { 1.0 } else { 0.0 };
            let raw = f64::from(row[j]) - target;
            let w = if active(j) {
                phi(if j == yi { u[j] } else { -u[j] })
            } else {
                1.0
            };
            let g = w * raw / b as f64;
            grad[i * c + j] = g as f32;
            if active(j) {
                if j == yi {
                    state.pos[j] += g.abs();
                } else {
                    state.neg[j] += g.abs();
                }
            }
        }
    }
    Ok(LossGrad {
        loss: (loss / b as f64) as f32,
        grad: Tensor::from_vec(grad, (b, c), logits.device())?,
    })
}

/// The code's random exclusion: walking `order`, the j-th picked class is picked with
/// probability 0.1^(j/(T−1)) (T = classes in `order`; the first is always picked).
pub fn exclusion(order: &[usize], classes: usize, rng: &mut impl Rng) -> Vec<bool> {
    let mut out = vec![false; classes];
    let t = order.len();
    let mut picked = 0usize;
    for &c in order {
        let p = if t <= 1 {
            1.0
        } else {
            0.1f64.powf(picked as f64 / (t - 1) as f64)
        };
        if rng.random::<f64>() < p {
            out[c] = true;
            picked += 1;
        }
    }
    out
}

/// The WENO prior estimate of one call: z-scored lengths (sample std), shifted so the
/// smallest is 0 when any is negative, normalized to sum 1.
pub fn weno_estimate(norms: &[f32]) -> Vec<f64> {
    let n = norms.len() as f64;
    let x: Vec<f64> = norms.iter().map(|&v| f64::from(v)).collect();
    let mean = x.iter().sum::<f64>() / n;
    let std = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    let mut z: Vec<f64> = x
        .iter()
        .map(|v| if std > 0.0 { (v - mean) / std } else { 0.0 })
        .collect();
    let min = z.iter().copied().fold(f64::INFINITY, f64::min);
    if min < 0.0 {
        z.iter_mut().for_each(|v| *v -= min);
    }
    let sum: f64 = z.iter().sum();
    if sum > 0.0 {
        z.iter().map(|v| v / sum).collect()
    } else {
        vec![1.0 / n; norms.len()]
    }
}

/// The code's 75 % / 95 % split of a prior estimate: classes by decreasing estimate, head
/// up to and including the one whose cumulative share crosses 75 %, middle up to 95 %,
/// tail the rest. Returns (order by decreasing estimate, tail mask).
pub fn shot_split(prior: &[f64]) -> (Vec<usize>, Vec<bool>) {
    let mut order: Vec<usize> = (0..prior.len()).collect();
    order.sort_by(|&a, &b| prior[b].total_cmp(&prior[a]).then(a.cmp(&b)));
    let total: f64 = prior.iter().sum();
    let mut tail = vec![false; prior.len()];
    let mut cum = 0.0;
    for &c in &order {
        let before = cum;
        cum += 100.0 * prior[c] / total.max(f64::MIN_POSITIVE);
        if before >= 95.0 {
            tail[c] = true;
        }
    }
    (order, tail)
}

/// Fed-GraB's balancer and prior analyzer on a base method (PromptFL or PromptFolio),
/// which keeps its parameters, optimizers, personalization and GM/PM rules: Fed-GraB
/// replaces its local loss ([`ReplaceableLoss`]) and adds a server step.
pub struct FedGrab {
    base: Box<dyn ReplaceableLoss>,
    gains: [f64; 3],
}

impl FedGrab {
    /// `promptfl+fedgrab`.
    pub fn on_promptfl(gains: [f64; 3]) -> Self {
        FedGrab {
            base: Box::new(PromptFl::plain()),
            gains,
        }
    }

    /// `promptfolio+fedgrab` with PromptFolio's θ.
    pub fn on_promptfolio(gains: [f64; 3], theta: f64) -> Self {
        FedGrab {
            base: Box::new(PromptFolio::new(theta)),
            gains,
        }
    }

    /// Classes the SGB balances and the walk order of the exclusion, from the server's
    /// prior estimate (all classes by index before one exists).
    fn balanced_classes(state: &FedState, c: usize) -> Result<(Vec<usize>, Vec<bool>)> {
        match &state.server_extra {
            Some(s) => {
                let sum: Vec<f64> = s.get(PRIOR_SUM)?.to_dtype(DType::F64)?.to_vec1()?;
                let (order, tail) = shot_split(&sum);
                let order = order.into_iter().filter(|&k| tail[k]).collect();
                Ok((order, tail))
            }
            None => Ok(((0..c).collect(), vec![true; c])),
        }
    }
}

impl Algorithm for FedGrab {
    fn name(&self) -> String {
        format!("{}+fedgrab", self.base.name())
    }

    fn train_local(&self, cx: &ClientCx, params: &mut ParamSet, state: &mut FedState) -> Result<Accum> {
        let fed = cx.fed;
        let k = cx.client;
        let c = fed.class_counts().len();
        let mut bal = match &state.client_extra[k] {
            Some(p) => Balancer::from_params(p, c)?,
            None => Balancer::new(c),
        };
        let (order, balanced) = Self::balanced_classes(state, c)?;
        let seed = fed.settings().seed;
        let mut step_loss = |logits: &Tensor, b: &Batch| -> Result<LossGrad> {
            let u = bal.control(self.gains);
            let mut r = rng::substream(
                seed,
                "fedgrab-exclusion",
                &[cx.round as u64, k as u64, b.step as u64],
            );
            let excluded = exclusion(&order, c, &mut r);
            let l = balanced_ce(logits, &b.labels, &u, &balanced, &excluded, &mut bal)?;
            Ok(LossGrad {
                grad: l.grad.to_dtype(logits.dtype())?,
                ..l
            })
        };
        let acc = self.base.train_local_with(cx, params, state, &mut step_loss)?;
        state.client_extra[k] = Some(bal.to_params()?);
        Ok(acc)
    }

    fn keeps_server_state(&self) -> bool {
        true
    }

    fn after_aggregation(&self, fed: &Federation, _round: usize, state: &mut FedState) -> Result<()> {
        let Some(norms) = fed.peft().learned_text_norms(fed.clip(), &state.global)? else {
            return Ok(());
        };
        let p = weno_estimate(&norms);
        let (mut sum, count) = match &state.server_extra {
            Some(s) => (
                s.get(PRIOR_SUM)?.to_dtype(DType::F64)?.to_vec1::<f64>()?,
                s.get(PRIOR_COUNT)?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0],
            ),
            None => (vec![0.0; p.len()], 0.0),
        };
        // The code's running mean: S += 10000·p each call; the split only needs S.
        sum.iter_mut().zip(&p).for_each(|(s, v)| *s += 10000.0 * v);
        let c = sum.len();
        state.server_extra = Some(ParamSet::from_pairs([
            (PRIOR_SUM.to_string(), Tensor::from_vec(sum, c, &Device::Cpu)?),
            (
                PRIOR_COUNT.to_string(),
                Tensor::from_vec(vec![count + 1.0], 1, &Device::Cpu)?,
            ),
        ]));
        Ok(())
    }

    fn personalize(&self, cx: &ClientCx, state: &mut FedState) -> Result<Accum> {
        self.base.personalize(cx, state)
    }

    fn gm_rule(&self) -> GmRule {
        self.base.gm_rule()
    }

    fn gm_logits(&self, fed: &Federation, logits: Tensor) -> Result<Tensor> {
        self.base.gm_logits(fed, logits)
    }

    fn pm_rule(&self) -> PmRule {
        self.base.pm_rule()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn phi_is_one_at_zero_and_bounded_by_ten() {
        assert!((phi(0.0) - 1.0).abs() < 1e-12);
        assert!(phi(20.0) < 10.0 && phi(100.0) <= 10.0 && phi(100.0) > 9.99);
        assert!(phi(-100.0) > 0.0 && phi(-100.0) < 1e-10);
    }

    /// Hand-checked PID steps: D = (P − N) = −2 then −1 with gains (10, 0.01, 0.1):
    /// e1 = 2 → u1 = 0 + 10·2 + 0.02 + 0.1·2 = 20.22; e2 = 1 → u2 = 20.22 + 10·(−1) +
    /// 0.01 + 0.1·(1 − 4 + 0) = 9.93.
    #[test]
    fn pid_update_by_hand() {
        let mut b = Balancer::new(1);
        b.neg[0] = 2.0;
        let u1 = b.control(DEFAULT_PID)[0];
        assert!((u1 - 20.22).abs() < 1e-12, "{u1}");
        b.neg[0] = 1.0;
        let u2 = b.control(DEFAULT_PID)[0];
        assert!((u2 - 9.93).abs() < 1e-12, "{u2}");
    }

    /// Two classes, one sample of class 0, p = (0.5, 0.5), B = 1: with u = (ln 81·2 → φ = ...)
    /// chosen as u_0 = 0 (w = 1) and u_1 = 2·ln 9 (φ(−u_1) = 10/(1 + 81) for the negative part).
    #[test]
    fn balanced_gradient_and_accumulation_by_hand() {
        let logits = Tensor::new(&[[0f32, 0.0]], &Device::Cpu).unwrap();
        let mut s = Balancer::new(2);
        let u = [0.0, 2.0 * 9f64.ln()];
        let l = balanced_ce(&logits, &[0], &u, &[true, true], &[false, false], &mut s).unwrap();
        let g: Vec<f32> = l.grad.flatten_all().unwrap().to_vec1().unwrap();
        let w1 = 10.0 / 82.0;
        assert!(
            (g[0] + 0.5).abs() < 1e-6 && (f64::from(g[1]) - 0.5 * w1).abs() < 1e-6,
            "{g:?}"
        );
        assert!((l.loss - 2f32.ln()).abs() < 1e-6);
        assert!((s.pos[0] - 0.5).abs() < 1e-7 && (s.neg[1] - 0.5 * w1).abs() < 1e-7);
        assert_eq!((s.neg[0], s.pos[1]), (0.0, 0.0));
        // Excluded classes keep weight 1 and are not accumulated.
        let mut s2 = Balancer::new(2);
        let l2 = balanced_ce(&logits, &[0], &u, &[true, true], &[false, true], &mut s2).unwrap();
        let g2: Vec<f32> = l2.grad.flatten_all().unwrap().to_vec1().unwrap();
        assert!((g2[1] - 0.5).abs() < 1e-6 && s2.neg[1] == 0.0);
    }

    #[test]
    fn state_round_trips_through_a_param_set() {
        let mut b = Balancer::new(3);
        b.pos = vec![0.1, 0.2, 0.3];
        b.control(DEFAULT_PID);
        let back = Balancer::from_params(&b.to_params().unwrap(), 3).unwrap();
        assert_eq!(back, b);
        assert!(Balancer::from_params(&b.to_params().unwrap(), 4).is_err());
    }

    #[test]
    fn exclusion_always_picks_the_first_and_rarely_many() {
        let order: Vec<usize> = (0..10).collect();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut total = 0;
        for _ in 0..200 {
            let e = exclusion(&order, 10, &mut r);
            assert!(e[0]);
            total += e.iter().filter(|&&x| x).count();
        }
        let mean = total as f64 / 200.0;
        assert!(mean > 1.0 && mean < 10.0, "{mean}");
    }

    /// WENO on lengths (1, 2, 3): z = (−1, 0, 1) → shifted (0, 1, 2) → (0, 1/3, 2/3); the
    /// split puts class 1 (cumulative 66.7 → 100 %) in the head's crossing and class 0
    /// (already at 100 % before it) in the tail.
    #[test]
    fn weno_estimate_and_split_by_hand() {
        let p = weno_estimate(&[1.0, 2.0, 3.0]);
        assert!((p[0]).abs() < 1e-12 && (p[1] - 1.0 / 3.0).abs() < 1e-12 && (p[2] - 2.0 / 3.0).abs() < 1e-12);
        let (order, tail) = shot_split(&p);
        assert_eq!(order, vec![2, 1, 0]);
        assert_eq!(tail, vec![true, false, false]);
    }
}

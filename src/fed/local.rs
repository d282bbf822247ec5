//! One local step of each FedPuReL stage on one batch.
//!
//! Stage 1 (docs/method.md §4): f = fine-tuned logits, z = zero-shot logits; L_align (TKL by
//! default) and L_task = CE(f, y) give two logit cotangents that share one backward pass;
//! per parameter tensor the task gradient is purified against the alignment gradient;
//! SGD with momentum and weight decay applies the result.
//!
//! Stage 2 (docs/method.md §5): the frozen global branch's logits l_G plus the private branch's
//! l_P; L = λ·CE(l_P) + (1 − λ)·CE(l_G + l_P); plain SGD on the private parameters.

use anyhow::Result;
use candle_core::Tensor;

use super::sgd::Sgd;
use crate::clip::Clip;
use crate::objective::ce::cross_entropy;
use crate::objective::purify::purify;
use crate::objective::stage2::stage2_loss;
use crate::objective::tkl::{kl, soft_distillation, tkl};
use crate::objective::LossGrad;
use crate::peft::model::{Inputs, Peft};
use crate::peft::params::ParamSet;

/// The alignment loss of stage 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AlignLoss {
    /// Temperature-aligned KL (the paper).
    Tkl,
    /// Plain KL at τ = 1 (ablation).
    Kl,
    /// Soft-label distillation at T = 1 (the reference code's adapter variant).
    SoftDistillation,
}

/// Stage-1 settings.
#[derive(Debug, Clone, Copy)]
pub struct Stage1Settings {
    /// Alignment loss.
    pub align: AlignLoss,
    /// Projection strength λ_proj (0 disables purification: plain task gradient).
    pub lambda_proj: f64,
}

/// Sums over parameter tensors of how the applied (task) gradient a stood to the
/// alignment gradient b: the angle between them and the share of a's norm that
/// purification removed (docs/method.md §4 step 7).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AngleStats {
    /// Tensors whose angle is defined (both gradients nonzero).
    pub tensors: usize,
    /// Sum of their angles, degrees.
    pub angle_sum_deg: f64,
    /// Tensors with an obtuse angle (a conflicts with b).
    pub obtuse: usize,
    /// Σ ‖a‖² over the tensors.
    pub task_norm_sq: f64,
    /// Σ ‖removed component‖² (0 where nothing was projected or applied).
    pub removed_norm_sq: f64,
}

impl AngleStats {
    /// Adds one tensor: the cosine of a and b, ‖a‖, and the norm purification removed.
    pub fn add(&mut self, cosine: f64, task_norm: f64, removed_norm: f64) {
        if cosine.is_finite() {
            self.tensors += 1;
            self.angle_sum_deg += cosine.clamp(-1.0, 1.0).acos().to_degrees();
            self.obtuse += usize::from(cosine < 0.0);
        }
        self.task_norm_sq += task_norm * task_norm;
        self.removed_norm_sq += removed_norm * removed_norm;
    }

    /// Adds another's sums.
    pub fn merge(&mut self, o: &AngleStats) {
        self.tensors += o.tensors;
        self.angle_sum_deg += o.angle_sum_deg;
        self.obtuse += o.obtuse;
        self.task_norm_sq += o.task_norm_sq;
        self.removed_norm_sq += o.removed_norm_sq;
    }
}

/// What one step measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    /// Task (or stage-2) loss.
    pub task_loss: f32,
    /// Alignment loss (stage 1).
    pub align_loss: f32,
    /// Parameter tensors whose gradient was projected.
    pub projected: usize,
    /// Parameter tensors in the set.
    pub tensors: usize,
    /// Correct predictions of the trained branch on this batch.
    pub correct: usize,
    /// The applied gradient against the alignment gradient (None where not computed).
    pub angles: Option<AngleStats>,
}

/// A non-finite loss stops training: the caller adds round, client and step.
fn check_finite(loss: f32, what: &str) -> Result<()> {
    if !loss.is_finite() {
        anyhow::bail!("the {what} loss is {loss} (not finite)");
    }
    Ok(())
}

fn correct(logits: &Tensor, y: &[u32]) -> Result<usize> {
    let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
    Ok(pred.iter().zip(y).filter(|(p, t)| p == t).count())
}

/// One stage-1 step: updates `params` in place.
#[allow(clippy::too_many_arguments)]
pub fn stage1_step(
    clip: &Clip,
    peft: &Peft,
    params: &mut ParamSet,
    opt: &mut Sgd,
    inputs: &Inputs,
    y: &[u32],
    zero_shot_logits: &Tensor,
    settings: &Stage1Settings,
    dropout_seed: Option<u64>,
) -> Result<StepStats> {
    let (f, tape) = peft.forward(clip, params, inputs, dropout_seed)?;
    let align: LossGrad = match settings.align {
        AlignLoss::Tkl => tkl(&f, zero_shot_logits)?.loss,
        AlignLoss::Kl => kl(&f, zero_shot_logits)?,
        AlignLoss::SoftDistillation => soft_distillation(&f, zero_shot_logits)?,
    };
    let task = cross_entropy(&f, y)?;
    check_finite(task.loss, "task")?;
    check_finite(align.loss, "alignment")?;
    let d = Tensor::stack(
        &[align.grad.to_dtype(f.dtype())?, task.grad.to_dtype(f.dtype())?],
        0,
    )?;
    let grads = peft.backward(clip, params, &tape, &d)?;
    let (g_align, g_task) = (&grads[0], &grads[1]);
    let mut projected = 0;
    let mut angles = AngleStats::default();
    let update = g_task.zip_with(g_align, |a, b| {
        // λ_proj = 0 disables the projection; the angle is still recorded.
        let (g, s) = purify(a, b, settings.lambda_proj)?;
        projected += usize::from(s.projected && settings.lambda_proj != 0.0);
        let removed = if s.projected {
            settings.lambda_proj * s.cosine.abs() * s.task_norm
        } else {
            0.0
        };
        angles.add(s.cosine, s.task_norm, removed);
        Ok(if settings.lambda_proj != 0.0 { g } else { a.clone() })
    })?;
    opt.step(params, &update)?;
    Ok(StepStats {
        task_loss: task.loss,
        align_loss: align.loss,
        projected,
        tensors: update.tensors.len(),
        correct: correct(&f, y)?,
        angles: Some(angles),
    })
}

/// One stage-2 step: updates the private `params` in place against frozen global logits.
#[allow(clippy::too_many_arguments)]
pub fn stage2_step(
    clip: &Clip,
    peft: &Peft,
    private: &mut ParamSet,
    opt: &mut Sgd,
    inputs: &Inputs,
    y: &[u32],
    global_logits: &Tensor,
    lambda: f64,
    dropout_seed: Option<u64>,
) -> Result<StepStats> {
    let (lp, tape) = peft.forward(clip, private, inputs, dropout_seed)?;
    let loss = stage2_loss(global_logits, &lp, y, lambda)?;
    check_finite(loss.loss, "stage-2")?;
    let grads = peft.backward(
        clip,
        private,
        &tape,
        &loss.grad.to_dtype(lp.dtype())?.unsqueeze(0)?,
    )?;
    opt.step(private, &grads[0])?;
    let fused = (global_logits + &lp)?;
    Ok(StepStats {
        task_loss: loss.loss,
        tensors: grads[0].tensors.len(),
        correct: correct(&fused, y)?,
        ..StepStats::default()
    })
}

/// One step on a single loss of the logits: `loss` maps f to its value and ∂/∂f, and to
/// the logits the step's training accuracy is scored on (None: f itself). The step of
/// every method whose local objective is one scalar (PromptFL's CE, logit adjustment,
/// Fed-GraB's balanced loss, CE + w·TKL, fusion personalization). With `probe` (the
/// batch's zero-shot logits) the TKL gradient is computed by a backward pass of its own,
/// never applied, and the angle between it and the applied gradient recorded; the
/// update is the same as without.
#[allow(clippy::too_many_arguments)]
pub fn loss_step(
    clip: &Clip,
    peft: &Peft,
    params: &mut ParamSet,
    opt: &mut Sgd,
    inputs: &Inputs,
    y: &[u32],
    loss: impl FnOnce(&Tensor) -> Result<(LossGrad, Option<Tensor>)>,
    probe: Option<&Tensor>,
    dropout_seed: Option<u64>,
) -> Result<StepStats> {
    let (f, tape) = peft.forward(clip, params, inputs, dropout_seed)?;
    let (l, scored) = loss(&f)?;
    check_finite(l.loss, "local")?;
    let grads = peft.backward(clip, params, &tape, &l.grad.to_dtype(f.dtype())?.unsqueeze(0)?)?;
    let angles = match probe {
        Some(z) => {
            let align = tkl(&f, z)?.loss;
            let g_align = peft.backward(
                clip,
                params,
                &tape,
                &align.grad.to_dtype(f.dtype())?.unsqueeze(0)?,
            )?;
            let mut angles = AngleStats::default();
            grads[0].zip_with(&g_align[0], |a, b| {
                let (_, s) = purify(a, b, 0.0)?;
                angles.add(s.cosine, s.task_norm, 0.0);
                Ok(a.clone())
            })?;
            Some(angles)
        }
        None => None,
    };
    opt.step(params, &grads[0])?;
    Ok(StepStats {
        task_loss: l.loss,
        tensors: grads[0].tensors.len(),
        correct: correct(scored.as_ref().unwrap_or(&f), y)?,
        angles,
        ..StepStats::default()
    })
}

/// One step on a loss (CE for PromptFolio) of the mixed logits (1 − θ)·f_a + θ·f_b that
/// trains both parameter sets (of the same PEFT) at once: PromptFolio's local step with its global (a) and local (b) prompt. For
/// prompts the logits are linear in the normalized text features, so mixing logits is
/// exactly mixing the two prompts' features.
#[allow(clippy::too_many_arguments)]
pub fn mix_step(
    clip: &Clip,
    peft: &Peft,
    a: &mut ParamSet,
    opt_a: &mut Sgd,
    b: &mut ParamSet,
    opt_b: &mut Sgd,
    theta: f64,
    inputs: &Inputs,
    y: &[u32],
    loss: impl FnOnce(&Tensor) -> Result<LossGrad>,
    dropout_seed: Option<u64>,
) -> Result<StepStats> {
    let (fa, tape_a) = peft.forward(clip, a, inputs, dropout_seed)?;
    let (fb, tape_b) = peft.forward(clip, b, inputs, dropout_seed.map(|s| s ^ 0xB0B))?;
    let mixed = ((&fa * (1.0 - theta))? + (&fb * theta)?)?;
    let l = loss(&mixed)?;
    check_finite(l.loss, "mixed")?;
    let g = l.grad.to_dtype(fa.dtype())?;
    let gb = peft.backward(clip, b, &tape_b, &(&g * theta)?.unsqueeze(0)?)?;
    let ga = peft.backward(clip, a, &tape_a, &(&g * (1.0 - theta))?.unsqueeze(0)?)?;
    opt_a.step(a, &ga[0])?;
    opt_b.step(b, &gb[0])?;
    Ok(StepStats {
        task_loss: l.loss,
        tensors: gb[0].tensors.len(),
        correct: correct(&mixed, y)?,
        ..StepStats::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::model::tests::fixture_dir;
    use crate::clip::ops::testutil::{dot, rand_tensor};
    use crate::clip::tokenizer::ClipTokenizer;
    use crate::clip::zeroshot::ZeroShotHead;
    use crate::clip::LoadOptions;
    use crate::fed::sgd::SgdConfig;
    use crate::peft::prompt::PromptLearner;

    #[test]
    fn non_finite_losses_stop_the_step_and_leave_parameters_alone() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let tok = ClipTokenizer::from_dir(&fixture_dir("hf")).unwrap();
        let classes: Vec<String> = ["apple", "bear"].iter().map(|s| s.to_string()).collect();
        let peft = Peft::Prompt(PromptLearner::new(&clip, &tok, &classes, 4, false).unwrap());
        let feats = clip
            .encode_images(&rand_tensor(&[2, 3, 224, 224], 1, 1.5))
            .unwrap();
        let z = Tensor::new(&[[f32::NAN, 0.0], [0.0, 1.0]], &candle_core::Device::Cpu).unwrap();
        let p0 = peft.init(&clip, 3).unwrap();
        let mut p = p0.clone();
        let mut opt = Sgd::new(SgdConfig {
            lr: 1e-2,
            momentum: 0.9,
            weight_decay: 0.0,
        });
        let settings = Stage1Settings {
            align: AlignLoss::Tkl,
            lambda_proj: 1.0,
        };
        let err = stage1_step(
            &clip,
            &peft,
            &mut p,
            &mut opt,
            &Inputs::Features(feats),
            &[0, 1],
            &z,
            &settings,
            None,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("not finite"), "{err:#}");
        assert_eq!(
            crate::clip::ops::testutil::max_abs_diff(
                p.get(crate::peft::model::CTX).unwrap(),
                p0.get(crate::peft::model::CTX).unwrap()
            ),
            0.0
        );
    }

    /// With λ_proj = 1 the applied update never opposes the alignment gradient, and with
    /// λ_proj = 0 it is exactly the task gradient.
    #[test]
    fn stage1_applies_the_purified_task_gradient() {
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let tok = ClipTokenizer::from_dir(&fixture_dir("hf")).unwrap();
        let classes: Vec<String> = ["apple", "bear", "tank", "rose"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let peft = Peft::Prompt(PromptLearner::new(&clip, &tok, &classes, 4, false).unwrap());
        let zs = ZeroShotHead::build(&clip, &tok, &classes, "a photo of a {}.").unwrap();
        let feats = clip
            .encode_images(&rand_tensor(&[6, 3, 224, 224], 1, 1.5))
            .unwrap();
        let z = zs.logits(&feats).unwrap();
        let y = [0, 1, 2, 3, 0, 1];
        let inputs = Inputs::Features(feats);
        let p0 = peft.init(&clip, 3).unwrap();
        let sgd = SgdConfig {
            lr: 1e-2,
            momentum: 0.0,
            weight_decay: 0.0,
        };
        let (f, tape) = peft.forward(&clip, &p0, &inputs, None).unwrap();
        let task = cross_entropy(&f, &y).unwrap();
        let align = tkl(&f, &z).unwrap().loss;
        let g = peft
            .backward(
                &clip,
                &p0,
                &tape,
                &Tensor::stack(&[align.grad, task.grad], 0).unwrap(),
            )
            .unwrap();
        for (lambda, expect_projected) in [(0.0, false), (1.0, true)] {
            let mut p = p0.clone();
            let mut opt = Sgd::new(sgd);
            let settings = Stage1Settings {
                align: AlignLoss::Tkl,
                lambda_proj: lambda,
            };
            let stats =
                stage1_step(&clip, &peft, &mut p, &mut opt, &inputs, &y, &z, &settings, None).unwrap();
            let step = p0.zip_with(&p, |a, b| Ok(((a - b)? / sgd.lr)?)).unwrap();
            let applied = step.get(crate::peft::model::CTX).unwrap();
            let g_task = g[1].get(crate::peft::model::CTX).unwrap();
            let g_align = g[0].get(crate::peft::model::CTX).unwrap();
            if lambda == 0.0 {
                let e = crate::clip::ops::testutil::max_abs_diff(applied, g_task);
                assert!(
                    e < 1e-3 * (1.0 + dot(g_task, g_task).sqrt() as f32),
                    "plain step differs by {e}"
                );
            } else {
                // This seed gives conflicting gradients, so the projection is exercised.
                assert!(dot(g_task, g_align) < 0.0);
                assert!(stats.projected == 1 && expect_projected);
                let cos = dot(applied, g_align) / (dot(applied, applied) * dot(g_align, g_align)).sqrt();
                assert!(cos.abs() < 1e-3, "purified update still conflicts: cos {cos}");
            }
        }
    }
}

//! The layers of a CLIP transformer, each with a forward that keeps what its
//! backward needs and an explicit vector-Jacobian product (VJP).
//!
//! Conventions used throughout `clip/`:
//! * activations are row matrices `[M, D]` (M = sequences × positions);
//! * cotangents carry a leading axis for several losses at once: `[K, M, D]`. Every VJP
//!   here maps K output cotangents to K input cotangents in one pass, reusing the saved
//!   activations (broadcast over K), so FedPuReL's two losses cost one backward.
//!
//! Weight gradients are opt-in: a forward run with [`TapeMode::Weights`] keeps the extra
//! activations they need (layer inputs of every matmul), and the backward then also
//! returns the gradient of every weight, **summed over the K cotangents** (pretraining
//! uses K = 1). With [`TapeMode::Inputs`] (the frozen-encoder tape) nothing extra is kept
//! and no weight-gradient matmul runs.

use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::checkpoint::WeightSource;
pub use super::kernels::{
    column_sum, layer_norm_backward, layer_norm_backward_add, layer_norm_param_grads, quick_gelu,
    quick_gelu_backward,
};
pub use super::matmul::matmul;
use super::matmul::{matmul_add, Addends};
use super::prepacked::Prepacked;

/// What a forward keeps for the backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapeMode {
    /// Nothing: inference.
    None,
    /// What input (and LoRA) cotangents need: the frozen-encoder tape.
    Inputs,
    /// Also what the gradients of the weights need (the input of every matmul).
    Weights,
}

impl TapeMode {
    /// The frozen tape when `keep_tape`, else none (the encoders' `keep_tape: bool`).
    pub fn frozen(keep_tape: bool) -> Self {
        if keep_tape {
            TapeMode::Inputs
        } else {
            TapeMode::None
        }
    }

    /// True when a tape is kept at all.
    pub fn keeps_tape(self) -> bool {
        self != TapeMode::None
    }

    /// True when weight gradients were asked for.
    pub fn weights(self) -> bool {
        self == TapeMode::Weights
    }
}

/// Σ over the leading cotangent axis: `[K, M, N] → [M, N]` (a view when K = 1).
pub fn sum_cotangents(dy: &Tensor) -> Result<Tensor> {
    Ok(if dy.dim(0)? == 1 { dy.get(0)? } else { dy.sum(0)? })
}

/// Gradients of a [`Linear`]'s weight `[out, in]` and bias `[out]`.
#[derive(Debug, Clone)]
pub struct LinearGrad {
    /// dW `[out, in]`.
    pub weight: Tensor,
    /// db `[out]` (absent when the layer has no bias).
    pub bias: Option<Tensor>,
}

impl LinearGrad {
    /// Elementwise sum of two gradients of the same layer.
    pub fn add(&self, other: &LinearGrad) -> Result<LinearGrad> {
        Ok(LinearGrad {
            weight: (&self.weight + &other.weight)?,
            bias: match (&self.bias, &other.bias) {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.clone().or_else(|| b.clone()),
            },
        })
    }
}

/// Gradients of a [`LayerNorm`]'s γ and β, `[D]` each.
#[derive(Debug, Clone)]
pub struct LayerNormGrad {
    /// dγ.
    pub weight: Tensor,
    /// dβ.
    pub bias: Tensor,
}

impl LayerNormGrad {
    /// Elementwise sum of two gradients of the same layer.
    pub fn add(&self, other: &LayerNormGrad) -> Result<LayerNormGrad> {
        Ok(LayerNormGrad {
            weight: (&self.weight + &other.weight)?,
            bias: (&self.bias + &other.bias)?,
        })
    }
}

/// An affine map `y = x Wᵀ + b` with `W: [out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Weight `[out, in]`.
    pub weight: Tensor,
    /// Bias `[out]`, if any.
    pub bias: Option<Tensor>,
    /// Faster layouts of a frozen weight ([`Linear::prepare_frozen`]).
    frozen: Option<Frozen>,
}

/// The kept layout of a frozen weight and the weight it was made from.
#[derive(Debug, Clone)]
struct Frozen {
    of: candle_core::TensorId,
    layout: FrozenLayout,
}

/// How a frozen weight is kept.
#[derive(Debug, Clone)]
enum FrozenLayout {
    /// gemm's own panels for both products, multiplied by its kernels directly.
    Prepacked(Arc<Prepacked>),
    /// A row-major copy of `Wᵀ [in, out]` for the forward (CPUs without the kernels
    /// that [`Prepacked`] calls).
    Transposed(Tensor),
}

impl Linear {
    /// `y = x Wᵀ + b` with `W: [out, in]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            frozen: None,
        }
    }

    /// Keeps a layout of a weight that will not change in which its products run
    /// faster, with the same bits. gemm copies the weight operand of every product into
    /// its panels (gathering every row of W for the transposed view of the forward);
    /// at the text encoder's few hundred rows those copies cost as much as a tenth of
    /// the products. Where gemm's AVX-512 kernels run, the weight is laid out once in
    /// their panels for both products ([`Prepacked`]: twice W's memory); elsewhere a
    /// row-major copy of `Wᵀ` makes the forward's copy contiguous (once W's memory).
    /// Either is used only while `weight` is the tensor it was made from: a weight
    /// replaced later (pretraining) falls back to the plain products. Only f32 CPU
    /// weights keep one: the rules are gemm's, and other devices choose their kernels
    /// by other rules.
    pub fn prepare_frozen(&mut self) -> Result<()> {
        self.prepare_frozen_as(true)
    }

    /// [`Linear::prepare_frozen`], with the panels only when `prepack` (false: the
    /// transposed copy, which tests also check on CPUs that have the kernels).
    fn prepare_frozen_as(&mut self, prepack: bool) -> Result<()> {
        if !self.weight.device().is_cpu() || self.weight.dtype() != DType::F32 {
            return Ok(());
        }
        let packed = if prepack {
            Prepacked::new(&self.weight)?
        } else {
            None
        };
        let layout = match packed {
            Some(p) => FrozenLayout::Prepacked(Arc::new(p)),
            None => FrozenLayout::Transposed(self.weight.t()?.contiguous()?),
        };
        self.frozen = Some(Frozen {
            of: self.weight.id(),
            layout,
        });
        Ok(())
    }

    /// The kept layout, while the weight is still the one it was made from.
    fn frozen(&self) -> Option<&FrozenLayout> {
        self.frozen
            .as_ref()
            .filter(|f| f.of == self.weight.id())
            .map(|f| &f.layout)
    }

    /// The right operand of `x Wᵀ` for `rows` input rows: a kept transposed copy where
    /// it gives the view's bits, else the transposed view of W.
    fn weight_t(&self, rows: usize) -> Result<Tensor> {
        if let Some(FrozenLayout::Transposed(copy)) = self.frozen() {
            let (out, inp) = self.weight.dims2()?;
            if super::matmul::layouts_compute_alike(rows, out, inp) {
                return Ok(copy.clone());
            }
        }
        Ok(self.weight.t()?)
    }

    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`) from a checkpoint.
    pub fn load(
        ck: &dyn WeightSource,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let weight = ck.tensor(&format!("{prefix}.weight"), &[out, inp], dtype, dev)?;
        let bias = if bias {
            Some(ck.tensor(&format!("{prefix}.bias"), &[out], dtype, dev)?)
        } else {
            None
        };
        Ok(Linear::new(weight, bias))
    }

    /// `x Wᵀ + b` for rows `x: [M, in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_add(x, None)
    }

    /// `residual + (x Wᵀ + b)` for rows `x: [M, in]` and `residual: [M, out]`: the bits
    /// of `residual + self.forward(x)`, with both additions made in the product's pass
    /// ([`matmul_add`]).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.forward_add(x, Some(residual))
    }

    /// `x Wᵀ` without the bias, for rows `x: [M, in]`.
    pub fn product(&self, x: &Tensor) -> Result<Tensor> {
        self.product_add(x, Addends::default())
    }

    fn forward_add(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let add = Addends {
            bias: self.bias.as_ref(),
            residual,
        };
        self.product_add(x, add)
    }

    fn product_add(&self, x: &Tensor, add: Addends) -> Result<Tensor> {
        if let Some(FrozenLayout::Prepacked(p)) = self.frozen() {
            if let Some(y) = p.forward(x, add)? {
                return Ok(y);
            }
        }
        matmul_add(x, &self.weight_t(x.dim(0)?)?, add)
    }

    /// VJP w.r.t. the input: `dy: [K, M, out] → [K, M, in]` (one matmul for all K).
    pub fn backward_input(&self, dy: &Tensor) -> Result<Tensor> {
        let (k, m, out) = dy.dims3()?;
        let rows = dy.reshape((k * m, out))?;
        let packed = match self.frozen() {
            Some(FrozenLayout::Prepacked(p)) => p.backward(&rows)?,
            _ => None,
        };
        let dx = match packed {
            Some(dx) => dx,
            None => matmul(&rows, &self.weight)?,
        };
        Ok(dx.reshape((k, m, self.weight.dim(1)?))?)
    }

    /// Weight and bias gradients for input rows `x: [M, in]` and output cotangents
    /// `dy: [K, M, out]`, summed over K: dW = (Σ_k dy_k)ᵀ x, db = Σ_rows Σ_k dy_k.
    pub fn weight_grad(&self, x: &Tensor, dy: &Tensor) -> Result<LinearGrad> {
        let g = sum_cotangents(dy)?;
        Ok(LinearGrad {
            weight: matmul(&g.t()?, x)?,
            bias: match self.bias {
                Some(_) => Some(column_sum(&g)?),
                None => None,
            },
        })
    }
}

/// A LayerNorm over the last axis.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale γ `[D]`.
    pub weight: Tensor,
    /// Shift β `[D]`.
    pub bias: Tensor,
    /// Variance epsilon.
    pub eps: f64,
}

/// What [`LayerNorm::backward`] needs: the input (μ and 1/σ are recomputed per row in
/// the backward, which costs less than storing and re-reading x̂).
#[derive(Debug, Clone)]
pub struct LayerNormTape {
    /// The input `[M, D]`.
    pub x: Tensor,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias`.
    pub fn load(
        ck: &dyn WeightSource,
        prefix: &str,
        dim: usize,
        eps: f64,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        Ok(LayerNorm {
            weight: ck.tensor(&format!("{prefix}.weight"), &[dim], dtype, dev)?,
            bias: ck.tensor(&format!("{prefix}.bias"), &[dim], dtype, dev)?,
            eps,
        })
    }

    /// Forward without a tape (fused kernel).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() == DType::F64 {
            // The fused kernel has no f64 version; f64 is only used by gradient checks.
            return Ok(candle_nn::ops::layer_norm_slow(
                x,
                &self.weight,
                &self.bias,
                self.eps as f32,
            )?);
        }
        Ok(candle_nn::ops::layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps as f32,
        )?)
    }

    /// Forward that keeps what the backward needs.
    pub fn forward_taped(&self, x: &Tensor) -> Result<(Tensor, LayerNormTape)> {
        Ok((self.forward(x)?, LayerNormTape { x: x.clone() }))
    }

    /// VJP: `dy: [K, M, D] → dx: [K, M, D]`.
    pub fn backward(&self, tape: &LayerNormTape, dy: &Tensor) -> Result<Tensor> {
        layer_norm_backward(&tape.x, &self.weight, self.eps, dy)
    }

    /// `residual + self.backward(tape, dy)` for a residual shaped as `dy`, added as the
    /// kernel writes each row.
    pub fn backward_residual(&self, tape: &LayerNormTape, dy: &Tensor, residual: &Tensor) -> Result<Tensor> {
        layer_norm_backward_add(&tape.x, &self.weight, self.eps, dy, residual)
    }

    /// γ and β gradients for cotangents `dy: [K, M, D]` of the output, summed over K.
    pub fn param_grad(&self, tape: &LayerNormTape, dy: &Tensor) -> Result<LayerNormGrad> {
        let (weight, bias) = layer_norm_param_grads(&tape.x, self.eps, dy)?;
        Ok(LayerNormGrad { weight, bias })
    }
}

/// A causal mask `[S, P + S]` for S queries at absolute positions P..P+S attending to
/// P + S keys: query i sees keys 0..=P+i.
pub fn causal_mask(past: usize, s: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let t = past + s;
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| (0..t).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(mask, (s, t), dev)?.to_dtype(dtype)?)
}

/// `dy · x` summed over rows for each cotangent: `dy: [K, M, A]`, `x: [M, B]` → `[K, A, B]`.
/// Used for LoRA weight gradients.
pub fn outer_per_cotangent(dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    let k = dy.dim(0)?;
    let parts = (0..k)
        .map(|i| matmul(&dy.get(i)?.t()?, x))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&parts, 0)?)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Finite-difference checking shared by the VJP tests.
    use super::*;

    /// Deterministic pseudo-random tensor with entries in [−scale, scale].
    pub fn rand_tensor(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((state >> 33) as f64) / ((1u64 << 31) as f64);
                ((u * 2.0 - 1.0) as f32) * scale
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// ⟨a, b⟩ over all entries, in f64.
    pub fn dot(a: &Tensor, b: &Tensor) -> f64 {
        let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        (a * b).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    }

    /// Central finite difference of `f(x)·w` along direction `v`, evaluated in f64.
    pub fn fd_directional(
        f: &dyn Fn(&Tensor) -> Tensor,
        x: &Tensor,
        v: &Tensor,
        w: &Tensor,
        eps: f64,
    ) -> f64 {
        let x64 = x.to_dtype(DType::F64).unwrap();
        let v64 = v.to_dtype(DType::F64).unwrap();
        let plus = f(&(&x64 + (&v64 * eps).unwrap()).unwrap());
        let minus = f(&(&x64 - (&v64 * eps).unwrap()).unwrap());
        (dot(&plus, w) - dot(&minus, w)) / (2.0 * eps)
    }

    /// The f32 bit patterns of a tensor's values, for bit-for-bit comparisons.
    pub fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    /// Max |a − b| relative to max |b| (or to 1 when b is smaller).
    pub fn relative_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs_diff(a, b) / max_abs_diff(b, &b.zeros_like().unwrap()).max(1.0)
    }

    /// Max |a − b|.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use candle_core::Var;

    fn ln() -> LayerNorm {
        LayerNorm {
            weight: rand_tensor(&[8], 1, 1.0),
            bias: rand_tensor(&[8], 2, 1.0),
            eps: 1e-5,
        }
    }

    #[test]
    fn layer_norm_taped_matches_fused() {
        let x = rand_tensor(&[5, 8], 3, 2.0);
        let l = ln();
        let (y, _) = l.forward_taped(&x).unwrap();
        assert!(max_abs_diff(&y, &l.forward(&x).unwrap()) < 1e-5);
    }

    #[test]
    fn layer_norm_vjp_matches_autodiff_and_finite_differences() {
        let x = rand_tensor(&[5, 8], 3, 2.0);
        let dy = rand_tensor(&[2, 5, 8], 4, 1.0);
        let l = ln();
        let (_, tape) = l.forward_taped(&x).unwrap();
        let dx = l.backward(&tape, &dy).unwrap();
        // candle autodiff on the unfused primitive formulation
        for k in 0..2 {
            let xv = Var::from_tensor(&x).unwrap();
            let y = candle_nn::ops::layer_norm_slow(xv.as_tensor(), &l.weight, &l.bias, 1e-5).unwrap();
            let loss = (y * dy.get(k).unwrap()).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(xv.as_tensor()).unwrap();
            assert!(max_abs_diff(g, &dx.get(k).unwrap()) < 1e-5);
        }
        // finite differences in f64
        let l64 = LayerNorm {
            weight: l.weight.to_dtype(DType::F64).unwrap(),
            bias: l.bias.to_dtype(DType::F64).unwrap(),
            eps: 1e-5,
        };
        let v = rand_tensor(&[5, 8], 5, 1.0);
        let f = |x: &Tensor| l64.forward_taped(x).unwrap().0;
        let fd = fd_directional(
            &f,
            &x,
            &v,
            &dy.get(1).unwrap().to_dtype(DType::F64).unwrap(),
            1e-6,
        );
        let an = dot(&dx.get(1).unwrap(), &v);
        assert!(
            (fd - an).abs() < 1e-4 * (1.0 + an.abs()),
            "fd {fd} vs analytic {an}"
        );
    }

    #[test]
    fn quick_gelu_vjp_matches_autodiff() {
        let h = rand_tensor(&[4, 6], 7, 3.0);
        let dy = rand_tensor(&[2, 4, 6], 8, 1.0);
        let dh = quick_gelu_backward(&h, &dy).unwrap();
        for k in 0..2 {
            let hv = Var::from_tensor(&h).unwrap();
            // σ written with primitives: autodiff sees every op.
            let t = hv.as_tensor();
            let s = ((t * -1.702).unwrap().exp().unwrap() + 1.0)
                .unwrap()
                .recip()
                .unwrap();
            let y = (t * s).unwrap();
            let loss = (y * dy.get(k).unwrap()).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            assert!(max_abs_diff(g.get(t).unwrap(), &dh.get(k).unwrap()) < 1e-5);
        }
    }

    /// Both kept layouts give the plain products' bits (forward with its bias, the input
    /// VJP for two cotangents) at every row count, including those where they must step
    /// aside; f64 weights keep none; a replaced weight never meets the old layout.
    #[test]
    fn frozen_layouts_give_the_same_bits_and_follow_their_weight() {
        let plain = Linear::new(rand_tensor(&[96, 64], 13, 1.0), Some(rand_tensor(&[96], 14, 1.0)));
        let x = rand_tensor(&[40, 64], 15, 1.0);
        let dy = rand_tensor(&[2, 40, 96], 16, 1.0);
        for prepack in [true, false] {
            let mut lin = plain.clone();
            lin.prepare_frozen_as(prepack).unwrap();
            let kept = lin.frozen().expect("an f32 CPU weight keeps a layout");
            // The panels wherever gemm's AVX-512 kernels run, else the transposed copy.
            let panels_here = prepack && Prepacked::new(&plain.weight).unwrap().is_some();
            assert_eq!(matches!(kept, FrozenLayout::Prepacked(_)), panels_here);
            if !prepack {
                assert!(matches!(kept, FrozenLayout::Transposed(_)));
                assert!(
                    lin.weight_t(40).unwrap().is_contiguous(),
                    "the copy is used at 40 rows"
                );
                assert!(!lin.weight_t(1).unwrap().is_contiguous(), "the view at one row");
            }
            for rows in [1, 2, 3, 40] {
                let (x, dy) = (x.narrow(0, 0, rows).unwrap(), dy.narrow(1, 0, rows).unwrap());
                let what = format!("{rows} rows, prepack {prepack}");
                assert_eq!(
                    bits(&lin.forward(&x).unwrap()),
                    bits(&plain.forward(&x).unwrap()),
                    "{what}"
                );
                assert_eq!(
                    bits(&lin.product(&x).unwrap()),
                    bits(&plain.product(&x).unwrap()),
                    "{what}"
                );
                let (ours, theirs) = (
                    lin.backward_input(&dy).unwrap(),
                    plain.backward_input(&dy).unwrap(),
                );
                assert_eq!(bits(&ours), bits(&theirs), "{what}");
            }
            // A replaced weight (as pretraining does) must not meet the old layout.
            lin.weight = (&lin.weight * 2.0).unwrap();
            assert!(lin.frozen().is_none());
            let doubled = Linear::new(lin.weight.clone(), lin.bias.clone());
            assert_eq!(
                bits(&lin.forward(&x).unwrap()),
                bits(&doubled.forward(&x).unwrap())
            );
            assert_eq!(
                bits(&lin.backward_input(&dy).unwrap()),
                bits(&doubled.backward_input(&dy).unwrap())
            );
        }
        // Only f32 weights keep one (the rules are about gemm's f32 kernels).
        let mut wide = Linear::new(plain.weight.to_dtype(DType::F64).unwrap(), None);
        wide.prepare_frozen().unwrap();
        assert!(wide.frozen().is_none());
    }

    #[test]
    fn linear_vjp_is_transpose() {
        let lin = Linear::new(rand_tensor(&[3, 4], 9, 1.0), Some(rand_tensor(&[3], 10, 1.0)));
        let x = rand_tensor(&[5, 4], 11, 1.0);
        let dy = rand_tensor(&[2, 5, 3], 12, 1.0);
        let dx = lin.backward_input(&dy).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        // The forward through candle's own ops, whose autodiff is the reference
        // (`Linear::forward`'s matmul has no autodiff).
        let y = xv
            .as_tensor()
            .matmul(&lin.weight.t().unwrap())
            .unwrap()
            .broadcast_add(lin.bias.as_ref().unwrap())
            .unwrap();
        assert_eq!(max_abs_diff(&y, &lin.forward(&x).unwrap()), 0.0);
        let loss = (y * dy.get(1).unwrap()).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        assert!(max_abs_diff(g.get(xv.as_tensor()).unwrap(), &dx.get(1).unwrap()) < 1e-5);
    }

    #[test]
    fn causal_mask_with_past() {
        let m = causal_mask(2, 3, DType::F32, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0][2], 0.0);
        assert!(m[0][3].is_infinite());
        assert_eq!(m[2][4], 0.0);
    }
}

//! The reference's gated image-feature adapter (FedCLIP-style, `purelGPAdapter.py`):
//! g = softmax(W2 · tanh(W1 v + b1) + b2) over the feature dimension, v' = g ⊙ v, with v
//! the frozen image feature. Explicit forward/backward; gradients per cotangent.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor, D};

use super::params::ParamSet;
use crate::clip::random::uniform;

/// Parameter names of the adapter.
pub const NAMES: [&str; 4] = [
    "adapter.fc1.weight",
    "adapter.fc1.bias",
    "adapter.fc2.weight",
    "adapter.fc2.bias",
];

/// Fresh adapter parameters for feature width `e`, initialized as PyTorch's `nn.Linear`
/// (weights and biases uniform in ±1/√e), from `seed`.
pub fn init(e: usize, seed: u64, device: &Device) -> Result<ParamSet> {
    let bound = 1.0 / (e as f32).sqrt();
    let shapes: [&[usize]; 4] = [&[e, e], &[e], &[e, e], &[e]];
    let pairs = NAMES
        .iter()
        .zip(shapes)
        .enumerate()
        .map(|(i, (n, s))| {
            Ok((
                n.to_string(),
                uniform(s, seed.wrapping_add(i as u64), bound, device)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ParamSet::from_pairs(pairs))
}

/// What the backward needs.
pub struct AdapterTape {
    v: Tensor,
    hidden: Tensor,
    gate: Tensor,
}

/// v' = softmax(W2 tanh(W1 v + b1) + b2) ⊙ v for features `v: [B, E]`.
pub fn forward(p: &ParamSet, v: &Tensor) -> Result<(Tensor, AdapterTape)> {
    let lin = |x: &Tensor, w: &str, b: &str| -> Result<Tensor> {
        Ok(x.matmul(&p.get(w)?.t()?)?.broadcast_add(p.get(b)?)?)
    };
    let hidden = lin(v, NAMES[0], NAMES[1])?.tanh()?;
    let gate = candle_nn::ops::softmax_last_dim(&lin(&hidden, NAMES[2], NAMES[3])?)?;
    let out = (&gate * v)?;
    Ok((
        out,
        AdapterTape {
            v: v.clone(),
            hidden,
            gate,
        },
    ))
}

/// Gradients of the four parameters for each of the K cotangents `d_out: [K, B, E]`.
pub fn backward(p: &ParamSet, tape: &AdapterTape, d_out: &Tensor) -> Result<Vec<ParamSet>> {
    let (k, b, e) = d_out.dims3()?;
    if tape.v.dims() != [b, e] {
        bail!(
            "adapter backward: cotangent {:?} for features {:?}",
            d_out.dims(),
            tape.v.dims()
        );
    }
    let w2 = p.get(NAMES[2])?;
    let mut out = Vec::with_capacity(k);
    for i in 0..k {
        let d = d_out.get(i)?;
        let d_gate = (&d * &tape.v)?;
        let dot = (&d_gate * &tape.gate)?.sum_keepdim(D::Minus1)?;
        let d_logit = (&tape.gate * d_gate.broadcast_sub(&dot)?)?;
        let d_w2 = d_logit.t()?.matmul(&tape.hidden)?;
        let d_b2 = d_logit.sum(0)?;
        let d_hidden = d_logit.matmul(w2)?;
        let d_pre = (d_hidden * tape.hidden.sqr()?.affine(-1.0, 1.0)?)?;
        let d_w1 = d_pre.t()?.matmul(&tape.v)?;
        let d_b1 = d_pre.sum(0)?;
        out.push(ParamSet::from_pairs(
            NAMES.iter().map(|n| n.to_string()).zip([d_w1, d_b1, d_w2, d_b2]),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ops::testutil::{dot, fd_directional, rand_tensor};
    use candle_core::DType;

    #[test]
    fn gradients_match_finite_differences() {
        let e = 6;
        let p = init(e, 3, &Device::Cpu).unwrap();
        let v = rand_tensor(&[4, e], 1, 1.0);
        let d = rand_tensor(&[2, 4, e], 2, 1.0);
        let (_, tape) = forward(&p, &v).unwrap();
        let g = backward(&p, &tape, &d).unwrap();
        let v64 = v.to_dtype(DType::F64).unwrap();
        let w = d.get(1).unwrap().to_dtype(DType::F64).unwrap();
        for name in NAMES {
            let base = p.get(name).unwrap();
            let dir = rand_tensor(base.dims(), 9, 1.0);
            let f = |t: &Tensor| {
                let q = p
                    .map(|n, x| {
                        Ok(if n == name {
                            t.clone()
                        } else {
                            x.to_dtype(DType::F64)?
                        })
                    })
                    .unwrap();
                forward(&q, &v64).unwrap().0
            };
            let fd = fd_directional(&f, base, &dir, &w, 1e-6);
            let an = dot(g[1].get(name).unwrap(), &dir);
            assert!((fd - an).abs() < 1e-4 * (1.0 + an.abs()), "{name}: {fd} vs {an}");
        }
    }
}

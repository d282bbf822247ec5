//! LoRA on the fused q/k/v rows without the tensors in between, on the CPU in f32.
//!
//! The composition in [`super::block`] adds LoRA to the q/k/v projection as
//! `(x Wᵀ + b) + cat(s · up_q, s · up_k, s · up_v)` and, in the backward, adds each
//! adapter's input cotangent `mask ⊙ (d_down A)` to the projection's one after another.
//! Each of those steps is a pass over `[M, D]`-sized tensors, and at ViT-B/16 size they
//! cost more than the adapters' matrix products. Here the same arithmetic runs as one pass
//! per direction, every value rounded exactly as the composition rounds it (candle's
//! `affine` computes `v · s + 0`, which this code repeats), so the results are the same bits
//! (tests below).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::attention::F32View;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// One adapter's up projection `[M, D]` and scale, on the q, k or v slice.
pub struct Up {
    /// `down · Bᵀ`, before the scale.
    pub up: Tensor,
    /// The adapter's output scale.
    pub scale: f64,
}

/// `(mm + bias) + (s · up)` per slice of the fused rows `mm: [M, 3D]` (the projection
/// without its bias), with `+ 0` where a slice has no adapter — the bits of
/// `(x Wᵀ + b) + cat(deltas)` with zero deltas for absent adapters.
pub fn qkv_with_lora(mm: &Tensor, bias: Option<&Tensor>, ups: [Option<Up>; 3]) -> Result<Tensor> {
    let (m, width3) = mm.dims2()?;
    let d = width3 / 3;
    let mm_view = F32View::of(mm)?;
    let bias_view = bias.map(F32View::of).transpose()?;
    let up_views: Vec<Option<(F32View, f32)>> = ups
        .iter()
        .map(|u| {
            u.as_ref()
                .map(|u| -> Result<_> {
                    if u.up.dims() != [m, d] {
                        bail!("LoRA up projection {:?}, expected [{m}, {d}]", u.up.dims());
                    }
                    Ok((F32View::of(&u.up)?, u.scale as f32))
                })
                .transpose()
        })
        .collect::<Result<_>>()?;
    let (mm, bias) = (mm_view.data(), bias_view.as_ref().map(|b| b.data()));
    if bias.is_some_and(|b| b.len() != width3) {
        bail!(
            "q/k/v bias has {} values, expected {width3}",
            bias.map_or(0, <[f32]>::len)
        );
    }
    let mut out: Vec<f32> = vec![0.0; m * width3];
    out.par_chunks_mut(ROWS_PER_TASK * width3)
        .enumerate()
        .for_each(|(task, block)| {
            for (j, row) in block.chunks_mut(width3).enumerate() {
                let r = task * ROWS_PER_TASK + j;
                let src = &mm[r * width3..(r + 1) * width3];
                for (slice, up) in up_views.iter().enumerate() {
                    let cols = slice * d..(slice + 1) * d;
                    let (o, x) = (&mut row[cols.clone()], &src[cols.clone()]);
                    let b = bias.map(|b| &b[cols]);
                    match up {
                        Some((u, s)) => {
                            let u = &u.data()[r * d..(r + 1) * d];
                            for c in 0..d {
                                let lin = b.map_or(x[c], |b| x[c] + b[c]);
                                o[c] = lin + (u[c] * s + 0.0);
                            }
                        }
                        None => {
                            for c in 0..d {
                                o[c] = b.map_or(x[c], |b| x[c] + b[c]) + 0.0;
                            }
                        }
                    }
                }
            }
        });
    Ok(Tensor::from_vec(out, (m, width3), &Device::Cpu)?)
}

/// One adapter's input cotangent `[K·M, D]` (`d_down A`) and its dropout mask `[M, D]`.
pub struct InputPart {
    /// `d_down · A`, before the mask.
    pub dx: Tensor,
    /// The forward's dropout mask, if any.
    pub mask: Option<Tensor>,
}

/// `da + Σ mask ⊙ dx` over the parts in order, `da: [K, M, D]`, each sum rounded as the
/// composition's `da + dx.broadcast_mul(mask)` one part after another.
pub fn add_input_parts(da: &Tensor, parts: &[InputPart]) -> Result<Tensor> {
    let (k, m, d) = da.dims3()?;
    let da_view = F32View::of(da)?;
    let views = parts
        .iter()
        .map(|p| -> Result<_> {
            if p.dx.dims() != [k * m, d] || p.mask.as_ref().is_some_and(|mk| mk.dims() != [m, d]) {
                bail!(
                    "LoRA input cotangent {:?} (mask {:?}), expected [{}, {d}] ([{m}, {d}])",
                    p.dx.dims(),
                    p.mask.as_ref().map(|mk| mk.dims().to_vec()),
                    k * m
                );
            }
            Ok((F32View::of(&p.dx)?, p.mask.as_ref().map(F32View::of).transpose()?))
        })
        .collect::<Result<Vec<_>>>()?;
    let da = da_view.data();
    let mut out: Vec<f32> = vec![0.0; k * m * d];
    out.par_chunks_mut(ROWS_PER_TASK * d)
        .enumerate()
        .for_each(|(task, block)| {
            for (j, row) in block.chunks_mut(d).enumerate() {
                let r = task * ROWS_PER_TASK + j;
                row.copy_from_slice(&da[r * d..(r + 1) * d]);
                for (dx, mask) in &views {
                    let dx = &dx.data()[r * d..(r + 1) * d];
                    match mask {
                        Some(mk) => {
                            let mk = &mk.data()[(r % m) * d..(r % m + 1) * d];
                            for c in 0..d {
                                row[c] += dx[c] * mk[c];
                            }
                        }
                        None => {
                            for c in 0..d {
                                row[c] += dx[c];
                            }
                        }
                    }
                }
            }
        });
    Ok(Tensor::from_vec(out, (k, m, d), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::matmul::matmul;
    use crate::clip::ops::testutil::{bits, rand_tensor};

    /// A tensor whose cells include ±0 (where the composition's `+ 0` matters), from
    /// random values.
    fn with_zeros(shape: &[usize], seed: u64) -> Tensor {
        let t = rand_tensor(shape, seed, 1.0);
        let v: Vec<f32> = t
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, x)| match i % 7 {
                0 => 0.0,
                1 => -0.0,
                _ => x,
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn one_pass_qkv_gives_the_compositions_bits() {
        let (m, d) = (70, 24);
        let mm = with_zeros(&[m, 3 * d], 1);
        let bias = with_zeros(&[3 * d], 2);
        let ups = [with_zeros(&[m, d], 3), with_zeros(&[m, d], 4)];
        let scale = 16.0 / 8f64.sqrt();
        for with_bias in [true, false] {
            let b = with_bias.then_some(&bias);
            // q and v adapted, k not.
            let fused = qkv_with_lora(
                &mm,
                b,
                [
                    Some(Up {
                        up: ups[0].clone(),
                        scale,
                    }),
                    None,
                    Some(Up {
                        up: ups[1].clone(),
                        scale,
                    }),
                ],
            )
            .unwrap();
            let lin = match b {
                Some(b) => mm.broadcast_add(b).unwrap(),
                None => mm.clone(),
            };
            let deltas = [
                (&ups[0] * scale).unwrap(),
                Tensor::zeros((m, d), candle_core::DType::F32, &Device::Cpu).unwrap(),
                (&ups[1] * scale).unwrap(),
            ];
            let composed = (lin + Tensor::cat(&deltas, 1).unwrap()).unwrap();
            assert_eq!(bits(&fused), bits(&composed), "bias {with_bias}");
        }
    }

    #[test]
    fn one_pass_input_cotangents_give_the_compositions_bits() {
        let (k, m, d) = (2, 70, 24);
        let da = with_zeros(&[k, m, d], 5);
        let dx = [with_zeros(&[k * m, d], 6), with_zeros(&[k * m, d], 7)];
        let mask = rand_tensor(&[m, d], 8, 1.0)
            .ge(0.0)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .affine(4.0 / 3.0, 0.0)
            .unwrap();
        let fused = add_input_parts(
            &da,
            &[
                InputPart {
                    dx: dx[0].clone(),
                    mask: Some(mask.clone()),
                },
                InputPart {
                    dx: dx[1].clone(),
                    mask: None,
                },
            ],
        )
        .unwrap();
        let first = dx[0]
            .reshape((k, m, d))
            .unwrap()
            .broadcast_mul(&mask.unsqueeze(0).unwrap())
            .unwrap();
        let composed = ((&da + first).unwrap() + dx[1].reshape((k, m, d)).unwrap()).unwrap();
        assert_eq!(bits(&fused), bits(&composed));
    }

    /// The backward reads each adapter's slice of the q/k/v cotangents in place: the
    /// products of those views have the bits of the products of contiguous copies.
    #[test]
    fn products_of_column_slices_equal_those_of_copies() {
        let (k, m, d, r) = (2, 197, 96, 8);
        let rows = rand_tensor(&[k * m, 3 * d], 9, 1.0);
        let b = rand_tensor(&[d, r], 10, 1.0);
        let down = rand_tensor(&[m, r], 11, 1.0);
        for i in 0..3 {
            let view = rows.narrow(1, i * d, d).unwrap();
            let copy = view.contiguous().unwrap();
            assert_eq!(
                bits(&matmul(&view, &b).unwrap()),
                bits(&matmul(&copy, &b).unwrap())
            );
            for c in 0..k {
                let v = view.narrow(0, c * m, m).unwrap();
                let cp = copy.narrow(0, c * m, m).unwrap().contiguous().unwrap();
                assert_eq!(
                    bits(&matmul(&v.t().unwrap(), &down).unwrap()),
                    bits(&matmul(&cp.t().unwrap(), &down).unwrap())
                );
            }
        }
    }
}

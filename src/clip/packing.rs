//! Sequences of different lengths stored row after row without padding ("packed"), and
//! the map between that layout and the padded one `[N·S, W]` (every sequence padded to
//! the longest, S) that the attention kernels take.
//!
//! Everything in a residual block except attention works row by row, so a batch of
//! prompts whose suffixes have different lengths can run those parts on the packed rows
//! only — CIFAR-100's class suffixes are 3 to 5 positions, so 319 rows instead of 500 —
//! while attention sees each sequence padded with zero rows, which its causal mask keeps
//! out of every real row (the kernel with a past reads packed rows itself; the others are
//! padded and packed around, [`padded`] and [`packed`]). [`crate::clip::text`] decides
//! when that gives the padded path's very numbers.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::attention::{self, F32View};

/// The layout of N packed sequences of lengths `lens` (each 1..=S, S the longest).
#[derive(Debug, Clone)]
pub struct Packing {
    lens: Vec<usize>,
    /// First packed row of each sequence.
    starts: Vec<usize>,
    padded_len: usize,
    /// For each packed row, its row in the padded layout.
    to_padded: Vec<u32>,
    /// For each padded row, its packed row, or the packed row count (a zero row
    /// appended by [`pad`](Self::pad)) for padding.
    from_packed: Vec<u32>,
}

impl Packing {
    /// The packing of sequences of `lens` positions, padded to the longest.
    pub fn new(lens: &[usize]) -> Result<Self> {
        if lens.is_empty() {
            bail!("packing: no sequences");
        }
        if let Some(i) = lens.iter().position(|&l| l == 0) {
            bail!("packing: sequence {i} has no positions");
        }
        let padded_len = *lens.iter().max().expect("non-empty");
        let rows: usize = lens.iter().sum();
        let mut starts = Vec::with_capacity(lens.len());
        let mut to_padded = Vec::with_capacity(rows);
        let mut from_packed = vec![rows as u32; lens.len() * padded_len];
        for (seq, &len) in lens.iter().enumerate() {
            starts.push(to_padded.len());
            for pos in 0..len {
                let padded_row = seq * padded_len + pos;
                from_packed[padded_row] = to_padded.len() as u32;
                to_padded.push(padded_row as u32);
            }
        }
        Ok(Packing {
            lens: lens.to_vec(),
            starts,
            padded_len,
            to_padded,
            from_packed,
        })
    }

    /// Number of sequences N.
    pub fn sequences(&self) -> usize {
        self.lens.len()
    }

    /// Packed rows (the sum of the lengths).
    pub fn rows(&self) -> usize {
        self.to_padded.len()
    }

    /// Positions per sequence in the padded layout (the longest length).
    pub fn padded_len(&self) -> usize {
        self.padded_len
    }

    /// True when no sequence is shorter than the longest (packing saves nothing).
    pub fn is_dense(&self) -> bool {
        self.rows() == self.sequences() * self.padded_len
    }

    /// The packed row of position `pos` of sequence `seq`; none past its length.
    pub fn row(&self, seq: usize, pos: usize) -> Option<usize> {
        match self.lens.get(seq) {
            Some(&len) if pos < len => Some(self.starts[seq] + pos),
            _ => None,
        }
    }

    /// Rows of the padded layout → packed rows: `[.., N·S, W]` → `[.., R, W]` (the
    /// second-to-last dimension holds the rows).
    pub fn pack(&self, padded: &Tensor) -> Result<Tensor> {
        let dim = self.row_dim(padded, self.sequences() * self.padded_len, "padded")?;
        let padded = padded.contiguous()?;
        if let Some(out) = copy_rows(&padded, &self.to_padded, self.padded_len * self.sequences())? {
            return Ok(out);
        }
        let index = Tensor::from_slice(&self.to_padded, self.to_padded.len(), padded.device())?;
        Ok(padded.index_select(&index, dim)?)
    }

    /// Packed rows → the padded layout with zero rows at the padding: `[.., R, W]` →
    /// `[.., N·S, W]`.
    pub fn pad(&self, packed: &Tensor) -> Result<Tensor> {
        let dim = self.row_dim(packed, self.rows(), "packed")?;
        let packed = &packed.contiguous()?;
        if let Some(out) = copy_rows(packed, &self.from_packed, self.rows())? {
            return Ok(out);
        }
        let mut zero_shape = packed.dims().to_vec();
        zero_shape[dim] = 1;
        let zero = Tensor::zeros(zero_shape, packed.dtype(), packed.device())?;
        let with_zero = Tensor::cat(&[packed, &zero], dim)?;
        let index = Tensor::from_slice(&self.from_packed, self.from_packed.len(), packed.device())?;
        Ok(with_zero.index_select(&index, dim)?)
    }

    fn row_dim(&self, t: &Tensor, rows: usize, what: &str) -> Result<usize> {
        let rank = t.rank();
        if rank < 2 || t.dims()[rank - 2] != rows {
            bail!(
                "packing: {what} tensor {:?} should hold {rows} rows in its second-to-last dimension",
                t.dims()
            );
        }
        Ok(rank - 2)
    }
}

/// `t` in the padded layout: [`Packing::pad`] with a packing, `t` itself without.
pub fn padded(packing: Option<&Packing>, t: &Tensor) -> Result<Tensor> {
    match packing {
        Some(p) => p.pad(t),
        None => Ok(t.clone()),
    }
}

/// `t` in the packed layout: [`Packing::pack`] with a packing, `t` itself without.
pub fn packed(packing: Option<&Packing>, t: &Tensor) -> Result<Tensor> {
    match packing {
        Some(p) => p.pack(t),
        None => Ok(t.clone()),
    }
}

/// Row copies of a contiguous f32 tensor on the CPU: output row `r` of each leading
/// slice is input row `map[r]` of `src_rows`, or zeros where `map[r]` is `src_rows`
/// (none for other devices and dtypes: the caller falls back to `index_select`).
fn copy_rows(src: &Tensor, map: &[u32], src_rows: usize) -> Result<Option<Tensor>> {
    if !attention::applies(&[src]) {
        return Ok(None);
    }
    let dims = src.dims();
    let width = dims[dims.len() - 1];
    let lead: usize = dims[..dims.len() - 2].iter().product();
    let view = F32View::of(src)?;
    let data = view.data();
    let mut out = vec![0f32; lead * map.len() * width];
    for (b, out_block) in out.chunks_mut(map.len() * width.max(1)).enumerate().take(lead) {
        let block = &data[b * src_rows * width..(b + 1) * src_rows * width];
        for (dst, &from) in out_block.chunks_mut(width.max(1)).zip(map) {
            let from = from as usize;
            if from < src_rows {
                dst.copy_from_slice(&block[from * width..(from + 1) * width]);
            }
        }
    }
    let mut shape = dims.to_vec();
    shape[dims.len() - 2] = map.len();
    Ok(Some(Tensor::from_vec(out, shape, src.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ops::testutil::{bits, rand_tensor};
    use candle_core::Device;

    #[test]
    fn pack_and_pad_move_rows_between_the_layouts() {
        let p = Packing::new(&[2, 3, 1]).unwrap();
        assert_eq!((p.sequences(), p.rows(), p.padded_len()), (3, 6, 3));
        assert!(!p.is_dense());
        assert_eq!(p.row(1, 2), Some(4));
        assert_eq!(p.row(2, 0), Some(5));
        assert!(p.row(2, 1).is_none() && p.row(3, 0).is_none());
        let padded = Tensor::arange(0f32, 18.0, &Device::Cpu)
            .unwrap()
            .reshape((9, 2))
            .unwrap();
        let packed = p.pack(&padded).unwrap();
        // Rows 0, 1 (sequence 0), 3, 4, 5 (sequence 1), 6 (sequence 2).
        let want: Vec<f32> = [0, 1, 3, 4, 5, 6]
            .iter()
            .flat_map(|&r| [2.0 * r as f32, 2.0 * r as f32 + 1.0])
            .collect();
        assert_eq!(packed.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        let back = p.pad(&packed).unwrap().to_vec2::<f32>().unwrap();
        for (r, row) in back.iter().enumerate() {
            let real = [0, 1, 3, 4, 5, 6].contains(&r);
            let expect = if real {
                vec![2.0 * r as f32, 2.0 * r as f32 + 1.0]
            } else {
                vec![0.0; 2]
            };
            assert_eq!(row, &expect, "row {r}");
        }
    }

    #[test]
    fn batched_tensors_keep_their_leading_dimension() {
        let p = Packing::new(&[1, 3]).unwrap();
        let t = rand_tensor(&[2, 6, 5], 1, 1.0);
        let packed = p.pack(&t).unwrap();
        assert_eq!(packed.dims(), &[2, 4, 5]);
        let again = p.pack(&p.pad(&packed).unwrap()).unwrap();
        assert_eq!(bits(&again), bits(&packed));
        assert!(Packing::new(&[3, 3]).unwrap().is_dense());
        // Other dtypes (and devices) go through index_select: the same rows.
        let wide = t.to_dtype(candle_core::DType::F64).unwrap();
        let via_select = p.pad(&p.pack(&wide).unwrap()).unwrap();
        let via_copies = p.pad(&packed).unwrap().to_dtype(candle_core::DType::F64).unwrap();
        assert_eq!(
            via_select.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            via_copies.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        );
        // Strided views are read as their contiguous copies.
        let strided = rand_tensor(&[5, 6], 3, 1.0).t().unwrap();
        let dense = strided.contiguous().unwrap();
        assert_eq!(bits(&p.pack(&strided).unwrap()), bits(&p.pack(&dense).unwrap()));
        let packed = p
            .pack(&dense)
            .unwrap()
            .t()
            .unwrap()
            .contiguous()
            .unwrap()
            .t()
            .unwrap();
        assert!(!packed.is_contiguous());
        assert_eq!(
            bits(&p.pad(&packed).unwrap()),
            bits(&p.pad(&packed.contiguous().unwrap()).unwrap())
        );
    }

    #[test]
    fn bad_layouts_are_errors() {
        assert!(Packing::new(&[]).is_err());
        let e = Packing::new(&[2, 0]).unwrap_err().to_string();
        assert!(e.contains("sequence 1"), "{e}");
        let p = Packing::new(&[2, 1]).unwrap();
        let e = p.pack(&rand_tensor(&[3, 4], 2, 1.0)).unwrap_err().to_string();
        assert!(e.contains("4 rows"), "{e}");
        assert!(p.pad(&rand_tensor(&[4], 2, 1.0)).is_err());
    }
}

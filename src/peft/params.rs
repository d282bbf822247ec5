//! Named parameter tensors: what a PEFT method trains, what the server averages, and what a
//! checkpoint stores. Names are stable and sorted, so two sets line up tensor by tensor.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};

/// An ordered map from parameter name to tensor.
#[derive(Debug, Clone, Default)]
pub struct ParamSet {
    /// The tensors, by name.
    pub tensors: BTreeMap<String, Tensor>,
}

impl ParamSet {
    /// A set from (name, tensor) pairs.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        ParamSet {
            tensors: pairs.into_iter().collect(),
        }
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| anyhow!("parameter `{name}` is missing"))
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.tensors.values().map(Tensor::elem_count).sum()
    }

    /// Checks that `other` has the same names and shapes.
    pub fn check_compatible(&self, other: &ParamSet) -> Result<()> {
        if self.tensors.len() != other.tensors.len() {
            bail!(
                "parameter sets differ: {} vs {} tensors",
                self.tensors.len(),
                other.tensors.len()
            );
        }
        for ((na, a), (nb, b)) in self.tensors.iter().zip(&other.tensors) {
            if na != nb || a.dims() != b.dims() {
                bail!(
                    "parameter sets differ: `{na}` {:?} vs `{nb}` {:?}",
                    a.dims(),
                    b.dims()
                );
            }
        }
        Ok(())
    }

    /// Applies `f` to every tensor (with its name).
    pub fn map(&self, mut f: impl FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<ParamSet> {
        let tensors = self
            .tensors
            .iter()
            .map(|(n, t)| Ok((n.clone(), f(n, t)?)))
            .collect::<Result<_>>()?;
        Ok(ParamSet { tensors })
    }

    /// Combines two compatible sets tensor by tensor.
    pub fn zip_with(
        &self,
        other: &ParamSet,
        mut f: impl FnMut(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<ParamSet> {
        self.check_compatible(other)?;
        let tensors = self
            .tensors
            .iter()
            .zip(other.tensors.values())
            .map(|((n, a), b)| Ok((n.clone(), f(a, b)?)))
            .collect::<Result<_>>()?;
        Ok(ParamSet { tensors })
    }

    /// Σ_k w_k · set_k / Σ_k w_k (FedAvg with weights n_k).
    pub fn weighted_average(sets: &[&ParamSet], weights: &[f64]) -> Result<ParamSet> {
        if sets.is_empty() || sets.len() != weights.len() {
            bail!(
                "weighted average: {} sets and {} weights",
                sets.len(),
                weights.len()
            );
        }
        let total: f64 = weights.iter().sum();
        if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            bail!("weighted average: weights sum to {total}, expected a positive total");
        }
        let mut acc = sets[0].map(|_, t| Ok((t.to_dtype(DType::F64)? * (weights[0] / total))?))?;
        for (s, &w) in sets.iter().zip(weights).skip(1) {
            acc = acc.zip_with(s, |a, b| Ok((a + (b.to_dtype(DType::F64)? * (w / total))?)?))?;
        }
        acc.zip_with(sets[0], |a, like| Ok(a.to_dtype(like.dtype())?))
    }

    /// The set as safetensors bytes (tensors moved to the CPU).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let cpu: Vec<(&str, Tensor)> = self
            .tensors
            .iter()
            .map(|(k, v)| Ok((k.as_str(), v.to_device(&Device::Cpu)?.contiguous()?)))
            .collect::<Result<_>>()?;
        safetensors::serialize(cpu.iter().map(|(k, v)| (*k, v)), None)
            .map_err(|e| anyhow!("cannot serialize parameters: {e}"))
    }

    /// Reads a set from safetensors bytes.
    pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<ParamSet> {
        let tensors = candle_core::safetensors::load_buffer(bytes, device)
            .map_err(|e| anyhow!("not a readable parameter file: {e}"))?;
        Ok(ParamSet {
            tensors: tensors.into_iter().collect(),
        })
    }

    /// Writes the set as safetensors, atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self
            .to_safetensors()
            .with_context(|| path.display().to_string())?;
        crate::report::atomic::write(path, &bytes)
    }

    /// Reads a set written by [`save`](Self::save).
    pub fn load(path: &Path, device: &Device) -> Result<ParamSet> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_safetensors(&bytes, device).with_context(|| path.display().to_string())
    }

    /// The name of the first tensor holding a NaN or an infinity, if any.
    pub fn first_non_finite(&self) -> Result<Option<&str>> {
        for (name, t) in &self.tensors {
            let sum = t.to_dtype(DType::F64)?.abs()?.sum_all()?.to_scalar::<f64>()?;
            if !sum.is_finite() {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: f32) -> ParamSet {
        let d = Device::Cpu;
        ParamSet::from_pairs([
            ("a".to_string(), Tensor::full(v, (2, 3), &d).unwrap()),
            ("b".to_string(), Tensor::full(2.0 * v, 4, &d).unwrap()),
        ])
    }

    #[test]
    fn weighted_average_is_fedavg() {
        let avg = ParamSet::weighted_average(&[&set(1.0), &set(4.0)], &[3.0, 1.0]).unwrap();
        let a: Vec<Vec<f32>> = avg.get("a").unwrap().to_vec2().unwrap();
        assert!((a[0][0] - 1.75).abs() < 1e-6);
        assert!(ParamSet::weighted_average(&[&set(1.0)], &[0.0]).is_err());
    }

    #[test]
    fn save_load_round_trip_and_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.safetensors");
        set(3.0).save(&p).unwrap();
        let back = ParamSet::load(&p, &Device::Cpu).unwrap();
        back.check_compatible(&set(0.0)).unwrap();
        std::fs::write(&p, b"garbage").unwrap();
        let e = format!("{:#}", ParamSet::load(&p, &Device::Cpu).unwrap_err());
        assert!(e.contains("p.safetensors"), "{e}");
    }
}

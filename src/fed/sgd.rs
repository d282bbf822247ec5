//! SGD exactly as `torch.optim.SGD` (dampening 0, no Nesterov): g ← g + wd·p;
//! buf ← μ·buf + g (buf = g on the first step); p ← p − lr·buf. Stage 1 of FedPuReL uses
//! lr 1e-3, μ 0.9, wd 5e-4 (Dassl defaults); stage 2 plain SGD (μ = wd = 0).

use anyhow::Result;

use crate::peft::params::ParamSet;

/// SGD hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum μ.
    pub momentum: f64,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
}

/// An optimizer with its momentum buffers (absent until the first step).
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Hyper-parameters.
    pub config: SgdConfig,
    /// Momentum buffers, one per parameter tensor.
    pub momentum: Option<ParamSet>,
}

impl Sgd {
    /// A fresh optimizer.
    pub fn new(config: SgdConfig) -> Self {
        Sgd {
            config,
            momentum: None,
        }
    }

    /// One update of `params` with gradient `grad`.
    /// A gradient with a NaN or an infinity is refused (parameters untouched), so a
    /// diverging run stops with the tensor's name instead of saving garbage.
    pub fn step(&mut self, params: &mut ParamSet, grad: &ParamSet) -> Result<()> {
        if let Some(name) = grad.first_non_finite()? {
            anyhow::bail!("the gradient of `{name}` is not finite (NaN or infinity)");
        }
        let c = self.config;
        let g = if c.weight_decay != 0.0 {
            grad.zip_with(params, |g, p| Ok((g + (p * c.weight_decay)?)?))?
        } else {
            grad.clone()
        };
        let direction = if c.momentum != 0.0 {
            let buf = match &self.momentum {
                Some(b) => b.zip_with(&g, |b, g| Ok(((b * c.momentum)? + g)?))?,
                None => g,
            };
            self.momentum = Some(buf.clone());
            buf
        } else {
            g
        };
        *params = params.zip_with(&direction, |p, d| Ok((p - (d * c.lr)?)?))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn one(v: f32) -> ParamSet {
        ParamSet::from_pairs([("w".to_string(), Tensor::new(&[v], &Device::Cpu).unwrap())])
    }

    fn val(p: &ParamSet) -> f32 {
        p.get("w").unwrap().to_vec1::<f32>().unwrap()[0]
    }

    /// Two steps computed by hand with torch.optim.SGD's update rule.
    #[test]
    fn matches_torch_sgd() {
        let mut opt = Sgd::new(SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
        });
        let mut p = one(1.0);
        opt.step(&mut p, &one(0.5)).unwrap();
        // g = 0.5 + 0.01 = 0.51; buf = 0.51; p = 1 - 0.051 = 0.949
        assert!((val(&p) - 0.949).abs() < 1e-6);
        opt.step(&mut p, &one(0.5)).unwrap();
        // g = 0.5 + 0.00949 = 0.50949; buf = 0.459 + 0.50949 = 0.96849; p = 0.949 - 0.096849
        assert!((val(&p) - (0.949 - 0.096849)).abs() < 1e-6);
        let mut plain = Sgd::new(SgdConfig {
            lr: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
        });
        let mut q = one(1.0);
        plain.step(&mut q, &one(0.5)).unwrap();
        assert!((val(&q) - 0.95).abs() < 1e-6 && plain.momentum.is_none());
    }

    #[test]
    fn a_non_finite_gradient_is_refused_and_leaves_the_parameters() {
        let mut opt = Sgd::new(SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        });
        let mut p = one(1.0);
        for bad in [f32::NAN, f32::INFINITY] {
            let e = format!("{:#}", opt.step(&mut p, &one(bad)).unwrap_err());
            assert!(e.contains("`w`") && e.contains("not finite"), "{e}");
            assert_eq!(val(&p), 1.0);
            assert!(opt.momentum.is_none());
        }
    }
}

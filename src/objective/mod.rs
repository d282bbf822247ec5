//! Losses and gradient surgery as pure math on logits: cross-entropy, the temperature
//! solve and temperature-aligned KL (TKL), gradient purification, and the stage-2 fusion
//! loss. Every loss returns its value *and* its gradient w.r.t. the logits, so the
//! encoders' explicit backward passes can take it from there. Checked against cases
//! computed with the authors' reference code (`tests/fixtures/*_cases.json`).

pub mod ce;
pub mod expf;
pub mod logf;
pub mod logit_adjust;
pub mod purify;
pub mod stage2;
pub mod tkl;

/// A scalar loss with its gradient w.r.t. the logits it was computed from.
#[derive(Debug, Clone)]
pub struct LossGrad {
    /// Loss value (mean over the batch).
    pub loss: f32,
    /// ∂loss/∂logits, `[B, C]`.
    pub grad: candle_core::Tensor,
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Reading the reference cases.
    use candle_core::{Device, Tensor};
    use serde_json::Value;

    /// The `cases` array of a fixture file in `tests/fixtures/`.
    pub fn cases(file: &str) -> Vec<Value> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(file);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        v["cases"].as_array().unwrap().clone()
    }

    fn num(v: &Value) -> f64 {
        match v {
            Value::String(s) => s.parse().unwrap(),
            other => other.as_f64().unwrap(),
        }
    }

    /// A number stored as JSON number or string.
    pub fn scalar(v: &Value) -> f64 {
        num(v)
    }

    /// A 1-D or 2-D JSON array as an f32 tensor.
    pub fn tensor(v: &Value) -> Tensor {
        let rows = v.as_array().unwrap();
        if rows.first().is_some_and(|r| r.is_array()) {
            let data: Vec<Vec<f32>> = rows
                .iter()
                .map(|r| r.as_array().unwrap().iter().map(|x| num(x) as f32).collect())
                .collect();
            let (n, m) = (data.len(), data[0].len());
            Tensor::from_vec(data.concat(), (n, m), &Device::Cpu).unwrap()
        } else {
            let data: Vec<f32> = rows.iter().map(|x| num(x) as f32).collect();
            let n = data.len();
            Tensor::from_vec(data, n, &Device::Cpu).unwrap()
        }
    }

    /// Labels as u32.
    pub fn labels(v: &Value) -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| num(x) as u32).collect()
    }

    /// Max |a − b| / max(1, max |b|).
    pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let d = crate::clip::ops::testutil::max_abs_diff(a, b);
        let scale = crate::clip::ops::testutil::max_abs_diff(b, &b.zeros_like().unwrap());
        d / scale.max(1.0)
    }
}

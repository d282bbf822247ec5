//! The `fedpurel` Python module: a thin converter over `fedpurel::bridge`. Parameters
//! cross as `dict[str, numpy.ndarray]` (float32, one entry per named PEFT tensor, in
//! name order), metrics as `dict[str, float]`; all training and evaluation is the Rust
//! library's — nothing here but conversion and calls. Errors raise `fedpurel.Error` with
//! the library's message.
//!
//! ```python
//! import fedpurel
//! server = fedpurel.Server("run.toml")
//! client = fedpurel.Client("run.toml", 0, "state/client-0")
//! params, n, metrics = client.fit(server.initial_parameters(), 0)
//! n, metrics = client.evaluate(params, 0)
//! ```

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use fedpurel::bridge::{ClientRunner, ServerRunner};
use fedpurel::fed::client::Stage2Done;
use fedpurel::fed::record::{ClientScore, Evaluation, StageStats};
use fedpurel::peft::params::ParamSet;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

create_exception!(
    fedpurel,
    Error,
    PyException,
    "An error of the fedpurel library (its message names the cause)."
);

fn err(e: anyhow::Error) -> PyErr {
    Error::new_err(format!("{e:#}"))
}

fn candle_err(e: candle_core::Error) -> PyErr {
    Error::new_err(e.to_string())
}

/// A parameter set as `{name: float32 ndarray}`.
fn to_numpy<'py>(py: Python<'py>, set: &ParamSet) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, t) in &set.tensors {
        let v: Vec<f32> = t
            .to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(candle_err)?;
        d.set_item(name, PyArray1::from_vec(py, v).reshape(t.dims().to_vec())?)?;
    }
    Ok(d)
}

/// `{name: float32 ndarray}` as a parameter set on `device`.
fn from_numpy(params: &Bound<'_, PyAny>, device: &Device) -> PyResult<ParamSet> {
    let d = params
        .cast::<PyDict>()
        .map_err(|_| Error::new_err("parameters must be a dict of name → float32 NumPy array"))?;
    let mut pairs = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let name: String = k
            .extract()
            .map_err(|_| Error::new_err("parameter names must be strings"))?;
        let a: PyReadonlyArrayDyn<'_, f32> = v
            .extract()
            .map_err(|_| Error::new_err(format!("parameter `{name}`: expected a float32 NumPy array")))?;
        let shape = a.shape().to_vec();
        let data: Vec<f32> = a.as_array().iter().copied().collect();
        pairs.push((name, Tensor::from_vec(data, shape, device).map_err(candle_err)?));
    }
    Ok(ParamSet::from_pairs(pairs))
}

fn put_stage(d: &Bound<'_, PyDict>, prefix: &str, s: &StageStats) -> PyResult<()> {
    d.set_item(format!("{prefix}-steps"), s.steps)?;
    d.set_item(format!("{prefix}-loss"), s.loss)?;
    d.set_item(format!("{prefix}-align-loss"), s.align_loss)?;
    d.set_item(format!("{prefix}-projected-fraction"), s.projected_fraction)?;
    d.set_item(format!("{prefix}-train-accuracy"), s.train_accuracy)?;
    d.set_item(format!("{prefix}-seconds"), s.seconds)
}

/// The personalization a message completed. Every reply carries the same keys (Flower
/// aggregates only records with equal keys): `stage2-round` is −1 and the statistics 0
/// when none completed.
fn put_stage2(d: &Bound<'_, PyDict>, s: &Option<Stage2Done>) -> PyResult<()> {
    let none = StageStats::default();
    d.set_item("stage2-round", s.as_ref().map_or(-1, |s| s.round as i64))?;
    d.set_item("stage2-exact", u8::from(s.as_ref().is_none_or(Stage2Done::exact)))?;
    put_stage(d, "stage2", s.as_ref().map_or(&none, |s| &s.stats))
}

/// A value that can be absent (a group without samples) is NaN then: Flower's metric
/// records hold numbers only, and every reply must carry the same keys.
fn put_opt(d: &Bound<'_, PyDict>, key: &str, v: Option<f64>) -> PyResult<()> {
    d.set_item(key, v.unwrap_or(f64::NAN))
}

fn put_score(d: &Bound<'_, PyDict>, prefix: &str, s: &ClientScore) -> PyResult<()> {
    put_opt(d, &format!("{prefix}-accuracy"), s.accuracy)?;
    put_opt(d, &format!("{prefix}-many"), s.many)?;
    put_opt(d, &format!("{prefix}-medium"), s.medium)?;
    put_opt(d, &format!("{prefix}-few"), s.few)?;
    d.set_item(format!("{prefix}-tkl"), s.tkl)?;
    d.set_item(format!("{prefix}-correct"), s.correct)
}

fn put_evaluation(d: &Bound<'_, PyDict>, prefix: &str, e: &Evaluation) -> PyResult<()> {
    d.set_item(format!("{prefix}-accuracy"), e.accuracy.all)?;
    put_opt(d, &format!("{prefix}-many"), e.accuracy.many)?;
    put_opt(d, &format!("{prefix}-medium"), e.accuracy.medium)?;
    put_opt(d, &format!("{prefix}-few"), e.accuracy.few)?;
    put_opt(
        d,
        &format!("{prefix}-worst-decile"),
        fedpurel::metrics::worst_decile(&e.per_class),
    )?;
    d.set_item(format!("{prefix}-worst-class"), e.balancedness.worst_class)?;
    d.set_item(format!("{prefix}-class-std"), e.balancedness.std)?;
    put_opt(
        d,
        &format!("{prefix}-few-over-many"),
        e.balancedness.few_over_many,
    )?;
    d.set_item(format!("{prefix}-tkl"), e.tkl)
}

/// One client of a run (`fedpurel::bridge::ClientRunner`): `Client(config, client,
/// state_dir)` with `config` a run configuration file (`fedpurel config …` prints one),
/// `client` the client's index in the split and `state_dir` a folder on the client's own
/// disk for its private state (a saved state there is resumed).
#[pyclass(module = "fedpurel")]
struct Client {
    inner: ClientRunner,
    device: Device,
}

#[pymethods]
impl Client {
    #[new]
    fn new(py: Python<'_>, config: PathBuf, client: usize, state_dir: PathBuf) -> PyResult<Self> {
        let inner = py
            .detach(|| ClientRunner::open(&config, client, &state_dir))
            .map_err(err)?;
        let device = inner.device().clone();
        Ok(Client { inner, device })
    }

    /// Round `round` (0-based): completes the previous round's personalization against
    /// `global_parameters` (that round's aggregate), trains locally from them, saves the
    /// client's state. Returns `(parameters, num_examples, metrics)`; `num_examples` is
    /// the FedAvg weight (training-set size).
    fn fit<'py>(
        &mut self,
        py: Python<'py>,
        global_parameters: &Bound<'py, PyAny>,
        round: usize,
    ) -> PyResult<(Bound<'py, PyDict>, usize, Bound<'py, PyDict>)> {
        let global = from_numpy(global_parameters, &self.device)?;
        let inner = &mut self.inner;
        let out = py.detach(|| inner.fit(global, round)).map_err(err)?;
        let m = PyDict::new(py);
        m.set_item("client", self.inner.client())?;
        m.set_item("round", round)?;
        put_stage(&m, "stage1", &out.stage1)?;
        put_stage2(&m, &out.stage2)?;
        Ok((to_numpy(py, &out.params)?, out.weight as usize, m))
    }

    /// The client's part of the evaluation with `global_parameters` (the aggregate of
    /// round `round` when given): completes a pending personalization first, then scores
    /// the global model (`gm-*`) and the client's personalized model (`pm-*`) on the
    /// client's test set. Returns `(num_examples, metrics)`.
    #[pyo3(signature = (global_parameters, round=None))]
    fn evaluate<'py>(
        &mut self,
        py: Python<'py>,
        global_parameters: &Bound<'py, PyAny>,
        round: Option<usize>,
    ) -> PyResult<(usize, Bound<'py, PyDict>)> {
        let global = from_numpy(global_parameters, &self.device)?;
        let inner = &mut self.inner;
        let (stage2, eval) = py.detach(|| inner.evaluate(global, round)).map_err(err)?;
        let m = PyDict::new(py);
        m.set_item("client", self.inner.client())?;
        put_score(&m, "gm", &eval.gm)?;
        put_score(&m, "pm", &eval.pm)?;
        put_stage2(&m, &stage2)?;
        Ok((eval.test_samples, m))
    }

    /// The client's index.
    #[getter]
    fn client(&self) -> usize {
        self.inner.client()
    }

    /// Number of clients of the run's split.
    #[getter]
    fn num_clients(&self) -> usize {
        self.inner.clients()
    }

    /// Training samples (the FedAvg weight).
    #[getter]
    fn num_train(&self) -> usize {
        self.inner.sizes().0
    }

    /// Test samples.
    #[getter]
    fn num_test(&self) -> usize {
        self.inner.sizes().1
    }

    /// The last round trained (None before the first).
    #[getter]
    fn last_round(&self) -> Option<usize> {
        self.inner.progress().0
    }

    /// The round whose personalization waits for its aggregate (None: nothing pending).
    #[getter]
    fn pending_round(&self) -> Option<usize> {
        self.inner.progress().1
    }

    /// The private parameters φ_k (None before the first personalization).
    fn private_parameters<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.inner.private().map(|p| to_numpy(py, p)).transpose()
    }
}

/// The server's side of a run (`fedpurel::bridge::ServerRunner`): the initial global
/// parameters and the global model's evaluation on the global test set.
#[pyclass(module = "fedpurel")]
struct Server {
    inner: ServerRunner,
}

#[pymethods]
impl Server {
    #[new]
    fn new(py: Python<'_>, config: PathBuf) -> PyResult<Self> {
        let inner = py.detach(|| ServerRunner::open(&config)).map_err(err)?;
        Ok(Server { inner })
    }

    /// Number of clients K of the split.
    #[getter]
    fn num_clients(&self) -> usize {
        self.inner.clients()
    }

    /// The initial global parameters (those `fedpurel run` starts from).
    fn initial_parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        to_numpy(py, &self.inner.initial_parameters())
    }

    /// The global model's evaluation on the global test set, as `fedpurel run` records
    /// it: `gm-accuracy` (All), `gm-many`, `gm-medium`, `gm-few`, `gm-worst-class`,
    /// `gm-class-std`, `gm-few-over-many`, `gm-tkl`.
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        global_parameters: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let global = from_numpy(global_parameters, self.inner.device())?;
        let inner = &self.inner;
        let e = py.detach(|| inner.evaluate(global)).map_err(err)?;
        let m = PyDict::new(py);
        put_evaluation(&m, "gm", &e)?;
        Ok(m)
    }
}

/// Reads a parameter file of fedpurel (e.g. a run's `checkpoints/rounds/global-0001.safetensors`).
#[pyfunction]
fn load_parameters<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let set = ParamSet::load(&path, &Device::Cpu).map_err(err)?;
    to_numpy(py, &set)
}

/// Writes parameters as a fedpurel parameter file (safetensors), atomically.
#[pyfunction]
fn save_parameters(path: PathBuf, parameters: &Bound<'_, PyAny>) -> PyResult<()> {
    from_numpy(parameters, &Device::Cpu)?.save(&path).map_err(err)
}

/// The module.
#[pymodule(name = "fedpurel")]
fn python_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("Error", m.py().get_type::<Error>())?;
    m.add_class::<Client>()?;
    m.add_class::<Server>()?;
    m.add_function(wrap_pyfunction!(load_parameters, m)?)?;
    m.add_function(wrap_pyfunction!(save_parameters, m)?)?;
    Ok(())
}

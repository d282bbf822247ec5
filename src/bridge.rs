//! One client's work — or the server's evaluation — for an outside orchestrator such as
//! Flower (the Python module of `bindings/python` is a thin converter over this file).
//!
//! * [`ClientRunner`]: built from a run configuration (`config.toml` as `fedpurel run`
//!   writes it, or `fedpurel config` prints it), a client index and a state directory on
//!   the client's own disk. [`ClientRunner::fit`] and [`ClientRunner::evaluate`] are
//!   [`crate::fed::client`]'s steps (the functions `fedpurel run`'s round loop calls,
//!   with the same random-stream keys); after each, the client's private state is saved
//!   atomically ([`crate::report::client_dir`]), so a process killed between rounds and
//!   started again continues where it was.
//! * [`ServerRunner`]: the initial global parameters (the `"init-global"` stream, as
//!   `fedpurel run`) and the GM evaluation on the global test set.
//!
//! With every client trained and evaluated every round, the orchestrator's size-weighted
//! FedAvg gives `fedpurel run --frac 1.0`'s numbers (see [`crate::fed::client`] for the
//! ordering). Which clients train is the orchestrator's choice; `fedpurel run`'s seeded
//! sampler (all clients in round 0, ⌊frac·K⌋ after) is not used here.
//!
//! A process keeps the last configuration it opened loaded (model, data, frozen
//! features), so that the next message — often for another client of the same run, in
//! Flower's simulation — does not load it again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use candle_core::Device;

use crate::fed::algorithm::Algorithm;
use crate::fed::client::{self, check_supported, ClientState, FitOutcome, Stage2Done};
use crate::fed::federation::{FedState, Federation};
use crate::fed::record::{ClientEvaluation, Evaluation};
use crate::peft::params::ParamSet;
use crate::report::client_dir::ClientDir;
use crate::setup::{algorithm, federation, load, read_config, Loaded, Quiet, RunConfig};

self_cell::self_cell!(
    /// A loaded configuration and the federation that borrows its model.
    struct Prepared {
        owner: Loaded,
        #[covariant]
        dependent: Federation,
    }
);

/// Everything a configuration loads, shared by the clients and the server of a process.
struct Session {
    prepared: Prepared,
    algo: Box<dyn Algorithm>,
    /// The initial global parameters (names and shapes every global set must have).
    initial: ParamSet,
    fingerprint: String,
}

/// The session of the configuration last opened in this process.
static LAST: Mutex<Option<(String, Arc<Session>)>> = Mutex::new(None);

impl Session {
    /// The session of the configuration file `path`, loaded once per process.
    fn open(path: &Path) -> Result<Arc<Session>> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, s)) = last.as_ref() {
            if *t == text {
                return Ok(Arc::clone(s));
            }
        }
        let cfg = read_config(path)?;
        let fingerprint = fingerprint(&cfg)?;
        let prepared = Prepared::try_new(load(cfg)?, |l| federation(l, &Quiet))?;
        let fed = prepared.borrow_dependent();
        let algo = algorithm(&prepared.borrow_owner().cfg, fed)?;
        check_supported(fed, algo.as_ref()).with_context(|| format!("{}", path.display()))?;
        let initial = fed.initial_state()?.global;
        let session = Arc::new(Session {
            prepared,
            algo,
            initial,
            fingerprint,
        });
        *last = Some((text, Arc::clone(&session)));
        Ok(session)
    }

    fn fed(&self) -> &Federation<'_> {
        self.prepared.borrow_dependent()
    }

    fn device(&self) -> &Device {
        self.prepared.borrow_owner().clip.device()
    }

    /// Checks that `global` has the names and shapes of the run's global parameters.
    fn check(&self, global: &ParamSet) -> Result<()> {
        global.check_compatible(&self.initial).context(
            "the global parameters sent do not fit this run's PEFT parameters (another model, PEFT kind or configuration?)",
        )
    }

    /// A state holding only the global parameters `global`.
    fn state_with(&self, global: ParamSet) -> FedState {
        FedState::fresh(global, self.fed().clients())
    }
}

/// A fingerprint of what a client's state depends on: the configuration without the
/// number of rounds and the output, cache and device settings.
fn fingerprint(cfg: &RunConfig) -> Result<String> {
    let mut v = toml::Value::try_from(cfg).context("cannot serialize the configuration")?;
    if let Some(t) = v.as_table_mut() {
        for k in ["out", "cache_dir", "device"] {
            t.remove(k);
        }
        if let Some(train) = t.get_mut("train").and_then(toml::Value::as_table_mut) {
            train.remove("rounds");
        }
    }
    let text = toml::to_string(&v).context("cannot serialize the configuration")?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}

/// One client of a run, with its state directory.
pub struct ClientRunner {
    session: Arc<Session>,
    dir: ClientDir,
    state: ClientState,
}

impl ClientRunner {
    /// Client `client` of the run configured in `config`, keeping its state in
    /// `state_dir` (created on first save; a saved state there is resumed).
    pub fn open(config: &Path, client: usize, state_dir: &Path) -> Result<Self> {
        let session = Session::open(config)?;
        let n = session.fed().clients();
        if client >= n {
            anyhow::bail!(
                "client {client} does not exist: {} splits the data over {n} clients (0 … {})",
                config.display(),
                n - 1
            );
        }
        let mut dir = ClientDir::new(state_dir, &session.fingerprint);
        let state = dir.load(client, session.device())?;
        Ok(ClientRunner { session, dir, state })
    }

    /// The client index.
    pub fn client(&self) -> usize {
        self.state.client
    }

    /// Number of clients K of the split.
    pub fn clients(&self) -> usize {
        self.session.fed().clients()
    }

    /// (training samples, test samples) of the client.
    pub fn sizes(&self) -> (usize, usize) {
        self.session.fed().client_sizes(self.state.client)
    }

    /// The last round this client trained, and the round whose personalization waits.
    pub fn progress(&self) -> (Option<usize>, Option<usize>) {
        (self.state.last_round, self.state.pending)
    }

    /// Round `round` (0-based, as `fedpurel run` counts): completes the pending
    /// personalization against `global` (the aggregate of the previous round), trains
    /// locally from `global`, saves the state; returns the local parameters and weight.
    pub fn fit(&mut self, global: ParamSet, round: usize) -> Result<FitOutcome> {
        self.session.check(&global)?;
        let s = &self.session;
        let mut st = self.state.clone();
        let out = client::fit(s.fed(), s.algo.as_ref(), &mut st, global, round)?;
        self.dir.save(&st)?;
        self.state = st;
        Ok(out)
    }

    /// The client's part of the evaluation with `global` (the aggregate of round `round`
    /// when known): completes a pending personalization (saving the state), then scores
    /// the GM and the client's PM on its own test set.
    pub fn evaluate(
        &mut self,
        global: ParamSet,
        round: Option<usize>,
    ) -> Result<(Option<Stage2Done>, ClientEvaluation)> {
        self.session.check(&global)?;
        let s = &self.session;
        let mut st = self.state.clone();
        let (stage2, eval) = client::evaluate(s.fed(), s.algo.as_ref(), &mut st, &global, round)?;
        if stage2.is_some() {
            self.dir.save(&st)?;
        }
        self.state = st;
        Ok((stage2, eval))
    }

    /// The device tensors of the run live on.
    pub fn device(&self) -> &Device {
        self.session.device()
    }

    /// The client's private parameters φ_k, if it has any yet.
    pub fn private(&self) -> Option<&ParamSet> {
        self.state.private.as_ref()
    }
}

/// The server's side of a run: initial parameters and the GM evaluation.
pub struct ServerRunner {
    session: Arc<Session>,
}

impl ServerRunner {
    /// The server of the run configured in `config`.
    pub fn open(config: &Path) -> Result<Self> {
        Ok(ServerRunner {
            session: Session::open(config)?,
        })
    }

    /// Number of clients K of the split.
    pub fn clients(&self) -> usize {
        self.session.fed().clients()
    }

    /// The initial global parameters φ_g (those `fedpurel run` starts from).
    pub fn initial_parameters(&self) -> ParamSet {
        self.session.initial.clone()
    }

    /// The GM evaluation of `global` on the global test set, as `fedpurel run` records it.
    pub fn evaluate(&self, global: ParamSet) -> Result<Evaluation> {
        self.session.check(&global)?;
        let state = self.session.state_with(global);
        self.session
            .fed()
            .evaluate_global(&state, self.session.algo.as_ref())
    }

    /// The device tensors of the run live on.
    pub fn device(&self) -> &Device {
        self.session.device()
    }
}

/// Makes the relative paths of a configuration absolute (against the current directory),
/// so that processes started elsewhere — an orchestrator's clients — find the same files.
pub fn absolute_paths(cfg: &mut RunConfig) -> Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let abs = |p: &mut PathBuf| {
        if p.is_relative() && !p.as_os_str().is_empty() && !p.to_string_lossy().starts_with("random:") {
            *p = cwd.join(&*p);
        }
    };
    abs(&mut cfg.model);
    abs(&mut cfg.out);
    abs(&mut cfg.cache_dir);
    if let Some(r) = cfg.data.root.as_mut() {
        abs(r);
    }
    if let Some(f) = cfg.data.split_file.as_mut() {
        abs(f);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::source::DatasetName;
    use crate::fed::federation::{KeyedSchedule, Schedule};
    use crate::setup::presets::preset;

    /// A small synthetic run on the tiny fixture model, written to `dir/run.toml`.
    fn config(dir: &Path, algorithm: &str) -> (RunConfig, PathBuf) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut cfg = preset(
            "cifar100-lt-prompt",
            &root.join("tests/fixtures/tiny-clip/hf"),
            &dir.join("run"),
            &dir.join("cache"),
        )
        .unwrap();
        cfg.algorithm = algorithm.into();
        cfg.data.dataset = DatasetName::Synthetic;
        cfg.data.imb_factor = Some(10.0);
        cfg.data.clients = 4;
        cfg.data.synthetic_classes = 10;
        cfg.data.synthetic_train_per_class = 30;
        cfg.data.synthetic_test_per_class = 6;
        cfg.train.rounds = 2;
        cfg.train.frac = 1.0;
        cfg.train.batch_size = 8;
        let path = dir.join(format!("{algorithm}.toml"));
        std::fs::write(&path, toml::to_string_pretty(&cfg).unwrap()).unwrap();
        (cfg, path)
    }

    fn max_abs_diff(a: &ParamSet, b: &ParamSet) -> f32 {
        a.tensors
            .iter()
            .map(|(n, t)| {
                let d = (t - b.get(n).unwrap()).unwrap().abs().unwrap();
                d.flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .fold(0.0, f32::max)
    }

    /// Two rounds with every client, each message handled by a freshly opened client (its
    /// state read back from disk), aggregated in the round loop's client order, give the
    /// round loop's global and private parameters bit for bit and its GM and PM numbers —
    /// whether a personalization completes at the evaluation right after its round or at
    /// the next round's training.
    #[test]
    fn clients_apart_reproduce_the_round_loop_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, path) = config(tmp.path(), "fedpurel");
        let loaded = load(cfg.clone()).unwrap();
        let fed = federation(&loaded, &Quiet).unwrap();
        let algo = algorithm(&cfg, &fed).unwrap();
        let mut state = fed.initial_state().unwrap();
        let records: Vec<_> = (0..2)
            .map(|_| fed.run_round(&mut state, algo.as_ref(), &|_| {}).unwrap())
            .collect();

        let server = ServerRunner::open(&path).unwrap();
        assert_eq!(server.clients(), 4);
        let order = KeyedSchedule {
            seed: cfg.train.seed,
            frac: 1.0,
            clients: 4,
            batch_size: cfg.train.batch_size,
        };
        let state_dir = |k: usize| tmp.path().join(format!("state/client-{k}"));
        let mut global = server.initial_parameters();
        for (t, rec) in records.iter().enumerate() {
            let clients = order.clients(t).unwrap();
            assert_eq!(clients, rec.clients);
            let (mut locals, mut weights) = (Vec::new(), Vec::new());
            for &k in &clients {
                let mut c = ClientRunner::open(&path, k, &state_dir(k)).unwrap();
                let out = c.fit(global.clone(), t).unwrap();
                assert_eq!(out.stage2.is_some(), t == 1 && k == 1, "client {k} round {t}");
                assert!(out.stage2.as_ref().is_none_or(Stage2Done::exact));
                locals.push(out.params);
                weights.push(out.weight);
            }
            let refs: Vec<&ParamSet> = locals.iter().collect();
            global = ParamSet::weighted_average(&refs, &weights).unwrap();
            let mut pm = Vec::new();
            for k in 0..4 {
                // Client 1 skips the evaluation of round 0: its personalization of round 0
                // completes at its training of round 1 instead.
                if t == 0 && k == 1 {
                    continue;
                }
                let mut c = ClientRunner::open(&path, k, &state_dir(k)).unwrap();
                let (stage2, eval) = c.evaluate(global.clone(), Some(t)).unwrap();
                assert!(stage2.unwrap().exact());
                pm.push(eval.pm.accuracy.unwrap());
            }
            let gm = server.evaluate(global.clone()).unwrap();
            let want = if t == 0 { &records[0] } else { &records[1] };
            assert_eq!(
                serde_json::to_value(&gm).unwrap(),
                serde_json::to_value(&want.gm).unwrap()
            );
            if t == 1 {
                let mean = pm.iter().sum::<f64>() / pm.len() as f64;
                assert_eq!(mean, want.pm.accuracy.all);
            }
        }
        assert_eq!(max_abs_diff(&global, &state.global), 0.0);
        for k in 0..4 {
            let c = ClientRunner::open(&path, k, &state_dir(k)).unwrap();
            assert_eq!(c.progress(), (Some(1), None));
            let d = max_abs_diff(c.private().unwrap(), state.private[k].as_ref().unwrap());
            assert_eq!(d, 0.0, "client {k}");
        }
        // A round already trained is refused, and so is another run's state directory.
        let mut c = ClientRunner::open(&path, 0, &state_dir(0)).unwrap();
        let e = format!("{:#}", c.fit(global.clone(), 1).unwrap_err());
        assert!(e.contains("already trained round 1"), "{e}");
        let (_, other) = config(tmp.path(), "promptfl");
        let e = format!(
            "{:#}",
            ClientRunner::open(&other, 0, &state_dir(0)).err().unwrap()
        );
        assert!(e.contains("another run"), "{e}");
    }

    #[test]
    fn what_a_remote_client_cannot_reproduce_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, path) = config(tmp.path(), "promptfl+fedgrab");
        let e = format!("{:#}", ServerRunner::open(&path).err().unwrap());
        assert!(
            e.contains("promptfl+fedgrab") && e.contains("server state"),
            "{e}"
        );
        let (mut cfg, path) = config(tmp.path(), "fedpurel");
        cfg.train.carry_momentum = true;
        std::fs::write(&path, toml::to_string_pretty(&cfg).unwrap()).unwrap();
        let e = format!("{:#}", ServerRunner::open(&path).err().unwrap());
        assert!(e.contains("carry_momentum"), "{e}");
        cfg.train.carry_momentum = false;
        std::fs::write(&path, toml::to_string_pretty(&cfg).unwrap()).unwrap();
        let e = format!("{:#}", ClientRunner::open(&path, 4, tmp.path()).err().unwrap());
        assert!(e.contains("client 4 does not exist"), "{e}");
        let server = ServerRunner::open(&path).unwrap();
        let wrong = ParamSet::from_pairs([(
            "x".to_string(),
            candle_core::Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
        )]);
        let e = format!("{:#}", server.evaluate(wrong).unwrap_err());
        assert!(e.contains("do not fit"), "{e}");
    }
}

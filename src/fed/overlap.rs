//! Rounds overlapped: round t + 1's local training beside round t's personalization and
//! evaluation, with the same numbers as one after the other.
//!
//! When a round's local training is one chain of clients (the stage-1 momentum carried
//! from client to client, the reference code's mode), it runs on one core while the others
//! wait: on the tiny CLIP that is 60 % of a round. Round t + 1's local training reads the
//! global model that round t's aggregation made, the carried momentum and the server state;
//! round t's personalization and evaluation read those too and write only the clients'
//! private slots. So when the algorithm's local training reads nothing personalization
//! writes ([`Algorithm::local_training_reads_private_state`]), the two halves run at once,
//! each on a thread with a one-thread pool of its own (`crate::pools::beside`): neither
//! runs the other's parallel work, and the shared pool stays free for a batch loader that
//! decodes live images through it while a side waits for it (on the shared pool's own
//! workers, such a wait never ends). Every batch, step and draw is keyed by
//! (round, client, stage, step), never by what ran before, so each side computes exactly
//! what it would have alone; checks after each round make sure that neither side wrote what
//! the other reads.
//!
//! Whichever half ends first gives its core to the other. The other half's training
//! steps (personalization's, or local training's) then run on a pool with a thread per
//! core (`crate::pools::widen`), and round t's loops over test chunks and clients are
//! shared (`crate::pools::share`): the side that trained round t + 1 claims items of them
//! once it is done, and the results are combined in their order as before.
//!
//! A round's checkpoint holds what a run without overlap holds after that round: round t + 1's
//! local training works on a copy of the state and joins it only after round t's record and
//! checkpoint are written, so a run killed at any moment resumes to the same numbers.

use anyhow::{bail, Result};

use super::algorithm::Algorithm;
use super::at_once::{same_optional, same_tensors};
use super::federation::{FedState, Federation};
use super::record::RoundRecord;
use super::train::LocalRound;
use crate::pools::share::Share;
use crate::pools::widen::Widen;

impl FedState {
    /// What local training reads and writes of this state: the global model, the
    /// carried momentum and the server state; no client's private slots.
    fn local_training_view(&self) -> FedState {
        FedState {
            rounds_done: self.rounds_done,
            global: self.global.clone(),
            private: vec![None; self.private.len()],
            momentum: self.momentum.clone(),
            server_extra: self.server_extra.clone(),
            client_extra: vec![None; self.client_extra.len()],
        }
    }

    /// Takes the global model, momentum and server state of `trained` (a
    /// [`local_training_view`](Self::local_training_view) after local training), after
    /// checking that its local training wrote no client's private slot.
    fn absorb_local_training(&mut self, trained: FedState, algo: &str) -> Result<()> {
        if trained
            .private
            .iter()
            .chain(&trained.client_extra)
            .any(Option::is_some)
        {
            bail!(
                "{algo}: local training wrote a client's private state, which overlapped rounds \
                 cannot share; its `local_training_reads_private_state` must say true"
            );
        }
        self.global = trained.global;
        self.momentum = trained.momentum;
        self.server_extra = trained.server_extra;
        Ok(())
    }
}

impl Federation<'_> {
    /// Whether round `t + 1`'s local training may run beside round `t`'s personalization
    /// and evaluation (see the module doc): `algo` trains and its local training reads no
    /// private state, the run is on banked features on the CPU with more than one thread,
    /// the user did not ask for one client at a time, and round `t + 1`'s clients train
    /// one after another (with the clients at once, local training already uses the cores).
    pub fn rounds_overlap(&self, algo: &dyn Algorithm, t: usize) -> bool {
        algo.trains()
            && !algo.local_training_reads_private_state()
            && self.clip().device().is_cpu()
            && !self.peft().needs_pixels()
            && !self.settings().one_client_at_a_time
            && rayon::current_num_threads() > 1
            && self
                .schedule
                .clients(t + 1)
                .is_ok_and(|c| !self.clients_at_once(&c, 1))
    }

    /// Runs `algo` from round `state.rounds_done` up to `rounds`, overlapping consecutive
    /// rounds where [`rounds_overlap`](Self::rounds_overlap) allows and `may_overlap`
    /// says yes; after each round, in order, `done` gets its record and the state a run
    /// without overlap has then (for metrics and checkpoints). `phase(t, what)` hears
    /// each phase as it starts, from either side of an overlap. On an error, the rounds
    /// before it have been passed to `done`.
    pub fn run_rounds(
        &self,
        state: &mut FedState,
        algo: &dyn Algorithm,
        rounds: usize,
        may_overlap: bool,
        phase: &(dyn Fn(usize, &str) + Sync),
        done: &mut dyn FnMut(RoundRecord, &FedState) -> Result<()>,
    ) -> Result<()> {
        let name = algo.name();
        // Round t's local training, done beside round t − 1 on a view of the state.
        let mut ahead: Option<(LocalRound, FedState)> = None;
        // The pools each side's steps move to once the other side is done (made at the
        // first overlap, with a thread per core of the pool this runs on).
        let cores = rayon::current_num_threads();
        let mut widens: Option<(Widen, Widen)> = None;
        while state.rounds_done < rounds {
            let t = state.rounds_done;
            let local = match ahead.take() {
                Some((local, trained)) => {
                    state.absorb_local_training(trained, &name)?;
                    local
                }
                None => self.local_round(state, algo, t, &|p| phase(t, p))?,
            };
            if !(may_overlap && t + 1 < rounds && self.rounds_overlap(algo, t)) {
                let rec = self.finish_round(state, algo, local, true, &|p| phase(t, p))?;
                done(rec, state)?;
                continue;
            }
            let mut next = state.local_training_view();
            let (global, momentum, server) = (
                state.global.clone(),
                state.momentum.clone(),
                state.server_extra.clone(),
            );
            // Whichever side ends first gives its core to the other: the other side's
            // training steps move to a pool with a thread per core (its widen), and its
            // evaluation loops (round t's) take the finished side's thread as a helper.
            let share = Share::new();
            let (finishing, training) = match &widens {
                Some((f, l)) => (f, l),
                None => {
                    let (f, l) = widens.insert((Widen::new(cores)?, Widen::new(cores)?));
                    (&*f, &*l)
                }
            };
            finishing.close();
            training.close();
            let (rec, next_local) = crate::pools::beside(
                || {
                    let rec = finishing.within(|| {
                        share.lead(|| self.finish_round(state, algo, local, false, &|p| phase(t, p)))
                    });
                    training.open();
                    rec
                },
                || {
                    let next_local =
                        training.within(|| self.local_round(&mut next, algo, t + 1, &|p| phase(t + 1, p)));
                    finishing.open();
                    share.serve();
                    next_local
                },
            )?;
            let rec = rec?;
            if !(same_tensors(&state.global, &global)
                && same_optional(&state.momentum, &momentum)
                && same_optional(&state.server_extra, &server))
            {
                bail!(
                    "{name}: round {t}'s personalization or evaluation changed the global model, \
                     the momentum or the server state, which overlapped rounds cannot share"
                );
            }
            done(rec, state)?;
            ahead = Some((next_local?, next));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::data::source::DatasetName;
    use crate::fed::algorithm::{Accum, ClientCx, PmRule};
    use crate::fed::algorithms::fedpurel::FedPuReL;
    use crate::fed::record::without_timings;
    use crate::peft::params::ParamSet;
    use crate::setup::presets::preset;
    use crate::setup::{federation, load, Loaded, Quiet};

    /// FedPuReL with the reference code's carried momentum (stage 1 a chain of clients) on
    /// a small synthetic federation.
    fn loaded(tmp: &Path) -> Loaded {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/hf");
        let mut cfg = preset(
            "cifar100-lt-prompt-reference-code",
            &fixture,
            &tmp.join("run"),
            &tmp.join("cache"),
        )
        .unwrap();
        cfg.data.dataset = DatasetName::Synthetic;
        cfg.data.imb_factor = Some(4.0);
        (cfg.data.clients, cfg.data.synthetic_classes) = (4, 5);
        (
            cfg.data.synthetic_train_per_class,
            cfg.data.synthetic_test_per_class,
        ) = (12, 3);
        (cfg.train.rounds, cfg.train.batch_size, cfg.train.frac) = (4, 8, 0.5);
        assert!(cfg.train.carry_momentum);
        load(cfg).unwrap()
    }

    /// The records (without timings) and the state `done` saw after each round.
    fn run(
        fed: &Federation,
        algo: &dyn Algorithm,
        may_overlap: bool,
    ) -> Result<(Vec<String>, Vec<FedState>)> {
        let mut state = fed.initial_state()?;
        let (mut records, mut states) = (Vec::new(), Vec::new());
        fed.run_rounds(&mut state, algo, 4, may_overlap, &|_, _| {}, &mut |rec, s| {
            records.push(without_timings(serde_json::to_value(&rec)?).to_string());
            states.push(s.clone());
            Ok(())
        })?;
        Ok((records, states))
    }

    fn bytes(p: &ParamSet) -> Vec<u8> {
        p.to_safetensors().unwrap()
    }

    fn two_threads<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
            .install(f)
    }

    #[test]
    fn overlapped_rounds_give_the_records_and_checkpoints_of_rounds_one_after_another() {
        let tmp = tempfile::tempdir().unwrap();
        let l = loaded(tmp.path());
        let fed = federation(&l, &Quiet).unwrap();
        let algo = FedPuReL::paper();
        two_threads(|| {
            assert!(fed.rounds_overlap(&algo, 0), "this federation should overlap");
            let (rec_a, states_a) = run(&fed, &algo, true).unwrap();
            let (rec_b, states_b) = run(&fed, &algo, false).unwrap();
            assert_eq!(rec_a, rec_b);
            assert_eq!(states_a.len(), 4);
            for (t, (a, b)) in states_a.iter().zip(&states_b).enumerate() {
                assert_eq!(a.rounds_done, t + 1);
                assert_eq!(a.rounds_done, b.rounds_done);
                assert_eq!(bytes(&a.global), bytes(&b.global), "round {t}: global");
                let m = |s: &FedState| s.momentum.as_ref().map(bytes);
                assert_eq!(m(a), m(b), "round {t}: momentum");
                let p = |s: &FedState| {
                    s.private
                        .iter()
                        .map(|p| p.as_ref().map(bytes))
                        .collect::<Vec<_>>()
                };
                assert_eq!(p(a), p(b), "round {t}: private");
            }
        });
        // One thread, or one client at a time: no overlap.
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| assert!(!fed.rounds_overlap(&algo, 0)));
    }

    /// Local training whose steps move to a two-thread pool (an opened widen, as when the
    /// evaluation beside it has finished) computes the bits of the same training on the
    /// chain's one-thread pool.
    #[test]
    fn widened_steps_give_the_bits_of_steps_on_one_thread() {
        let tmp = tempfile::tempdir().unwrap();
        let l = loaded(tmp.path());
        let fed = federation(&l, &Quiet).unwrap();
        let algo = FedPuReL::paper();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let train = |widen: Option<&Widen>| {
            one.install(|| {
                let mut state = fed.initial_state().unwrap();
                let local = match widen {
                    Some(w) => w.within(|| fed.local_round(&mut state, &algo, 0, &|_| {})),
                    None => fed.local_round(&mut state, &algo, 0, &|_| {}),
                }
                .unwrap();
                let m = state.momentum.as_ref().map(bytes);
                (bytes(&state.global), m, local.clients, local.stage1.loss)
            })
        };
        let widen = Widen::new(2).unwrap();
        widen.open();
        let wide = train(Some(&widen));
        assert!(widen.widened_steps() > 0, "no step ran on the wide pool");
        assert_eq!(wide, train(None));
    }

    /// FedPuReL whose local training also writes the client's private slot while saying
    /// it reads none: overlapped rounds must refuse it.
    struct WritesPrivate(FedPuReL);

    impl Algorithm for WritesPrivate {
        fn name(&self) -> String {
            "writes-private".into()
        }
        fn train_local(&self, cx: &ClientCx, params: &mut ParamSet, state: &mut FedState) -> Result<Accum> {
            state.private[cx.client] = Some(params.clone());
            self.0.train_local(cx, params, state)
        }
        fn local_training_reads_private_state(&self) -> bool {
            false
        }
        fn personalize(&self, cx: &ClientCx, state: &mut FedState) -> Result<Accum> {
            self.0.personalize(cx, state)
        }
        fn pm_rule(&self) -> PmRule {
            self.0.pm_rule()
        }
    }

    #[test]
    fn local_training_that_writes_private_state_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let l = loaded(tmp.path());
        let fed = federation(&l, &Quiet).unwrap();
        let e = two_threads(|| run(&fed, &WritesPrivate(FedPuReL::paper()), true))
            .map(|_| ())
            .expect_err("the overlap should refuse the algorithm")
            .to_string();
        assert!(e.contains("writes-private") && e.contains("private state"), "{e}");
    }
}

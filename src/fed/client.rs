//! One client's share of the round loop, for an orchestrator that runs clients apart from
//! the server (Flower, through [`crate::bridge`]): local training from the global model it
//! is sent, personalization against the aggregate, and its part of the GM/PM evaluation.
//! Every step calls the functions [`Federation::run_round`] calls, with the same keys of
//! the random streams (round, client, stage, step), so the numbers are those of
//! `fedpurel run` (module tests in `crate::bridge`).
//!
//! **Ordering.** In `fedpurel run` a client's personalization of round t (FedPuReL's
//! stage 2) runs against the global model aggregated at the end of round t, which a
//! remote client only receives with its *next* message. So [`fit`] of round t trains
//! stage 1 and leaves stage 2 of round t *pending*; the next message completes it first
//! against the global model it carries: [`evaluate`] right after round t's aggregation
//! (that model is exactly the aggregate of round t), or [`fit`] of round t + 1 (whose
//! global model is the same aggregate). Stage 2 is *late* — trained against a newer
//! global model than `fedpurel run` would use — only when a client trained in round t is
//! neither evaluated after round t nor trained in round t + 1; [`Stage2Done::exact`] says
//! which happened.

use anyhow::{bail, Result};

use super::algorithm::{Algorithm, AlgorithmSettings};
use super::federation::{FedState, Federation};
use super::record::{ClientEvaluation, StageStats};
use super::registry;
use crate::peft::params::ParamSet;

/// What one client keeps between messages (on its own disk: `report::client_dir`).
#[derive(Debug, Clone)]
pub struct ClientState {
    /// The client's index in the split.
    pub client: usize,
    /// φ_k (None until the algorithm first creates it).
    pub private: Option<ParamSet>,
    /// The algorithm's per-client state (e.g. Fed-GraB's PID controllers), if any.
    pub extra: Option<ParamSet>,
    /// Round whose personalization waits for that round's aggregate.
    pub pending: Option<usize>,
    /// Last round whose local training this client ran.
    pub last_round: Option<usize>,
}

impl ClientState {
    /// A client that has not trained yet.
    pub fn new(client: usize) -> Self {
        ClientState {
            client,
            private: None,
            extra: None,
            pending: None,
            last_round: None,
        }
    }

    /// The federation-wide state the algorithm hooks see: `global` plus this client's
    /// entries (the other clients' are empty; hooks touch only their own client's).
    fn federation_state(&self, fed: &Federation, global: ParamSet, round: usize) -> FedState {
        let mut state = FedState::fresh(global, fed.clients());
        state.rounds_done = round;
        state.private[self.client] = self.private.clone();
        state.client_extra[self.client] = self.extra.clone();
        state
    }

    /// Takes this client's entries back from a federation-wide state.
    fn take_back(&mut self, state: &mut FedState) {
        self.private = state.private[self.client].take();
        self.extra = state.client_extra[self.client].take();
    }
}

/// A completed personalization.
#[derive(Debug, Clone)]
pub struct Stage2Done {
    /// The round it belongs to.
    pub round: usize,
    /// The round whose aggregate it was trained against (None: not known, the caller did
    /// not say).
    pub against: Option<usize>,
    /// Its statistics.
    pub stats: StageStats,
}

impl Stage2Done {
    /// Whether it ran against the aggregate of its own round, as in `fedpurel run`
    /// (true when the caller did not say which aggregate it sent).
    pub fn exact(&self) -> bool {
        self.against.is_none_or(|a| a == self.round)
    }
}

/// The result of [`fit`].
#[derive(Debug, Clone)]
pub struct FitOutcome {
    /// The client's local copy of the global parameters after local training.
    pub params: ParamSet,
    /// Its FedAvg weight n_k (training-set size).
    pub weight: f64,
    /// Local-training statistics.
    pub stage1: StageStats,
    /// The previous round's personalization, if this call completed it.
    pub stage2: Option<Stage2Done>,
}

/// Refuses settings a remote client cannot reproduce: an algorithm whose server step
/// keeps state the clients read, and stage-1 momentum carried from one client to the
/// next (a simulation artifact of the reference code).
pub fn check_supported(fed: &Federation, algo: &dyn Algorithm) -> Result<()> {
    if algo.keeps_server_state() {
        let defaults = AlgorithmSettings::default();
        let usable: Vec<&str> = registry::entries()
            .filter(|e| !(e.build)(&defaults).keeps_server_state())
            .map(|e| e.name)
            .collect();
        bail!(
            "{} keeps server state that its clients read (the class prior of Fed-GraB); a remote client cannot reproduce it — use one of: {}",
            algo.name(),
            usable.join(", ")
        );
    }
    if fed.settings().carry_momentum {
        bail!("carry_momentum = true passes the stage-1 momentum from one client to the next, which clients on separate machines cannot do; set train.carry_momentum = false");
    }
    Ok(())
}

fn check_client(fed: &Federation, st: &ClientState) -> Result<()> {
    if st.client >= fed.clients() {
        bail!(
            "client {} does not exist: the split has {} clients (0 … {})",
            st.client,
            fed.clients(),
            fed.clients().saturating_sub(1)
        );
    }
    Ok(())
}

/// Completes a pending personalization against `global`, the aggregate of round
/// `against` when the caller knows it.
pub fn complete_pending(
    fed: &Federation,
    algo: &dyn Algorithm,
    st: &mut ClientState,
    global: &ParamSet,
    against: Option<usize>,
) -> Result<Option<Stage2Done>> {
    check_client(fed, st)?;
    let Some(round) = st.pending else {
        return Ok(None);
    };
    if let Some(a) = against {
        if a < round {
            bail!(
                "client {}: the global parameters sent are those of round {a}, older than its pending personalization of round {round}",
                st.client
            );
        }
    }
    let t0 = std::time::Instant::now();
    let mut state = st.federation_state(fed, global.clone(), round + 1);
    let text = fed.personalization_text(&state)?;
    let acc = fed.personalize_client(&mut state, algo, round, st.client, &text)?;
    st.take_back(&mut state);
    st.pending = None;
    Ok(Some(Stage2Done {
        round,
        against,
        stats: acc.finish(t0.elapsed().as_secs_f64()),
    }))
}

/// Round `t` for this client: completes the pending personalization of an earlier round
/// against `global` (the aggregate of round t − 1), then trains locally from `global`
/// and leaves personalization of round `t` pending.
pub fn fit(
    fed: &Federation,
    algo: &dyn Algorithm,
    st: &mut ClientState,
    global: ParamSet,
    t: usize,
) -> Result<FitOutcome> {
    check_client(fed, st)?;
    if let Some(last) = st.last_round {
        if t <= last {
            bail!(
                "client {}: asked to train round {t}, but it already trained round {last} (rounds must increase)",
                st.client
            );
        }
    }
    let stage2 = complete_pending(fed, algo, st, &global, t.checked_sub(1))?;
    let t0 = std::time::Instant::now();
    let mut state = st.federation_state(fed, global, t);
    let (params, acc) = fed.train_client(&mut state, algo, t, st.client)?;
    st.take_back(&mut state);
    st.pending = Some(t);
    st.last_round = Some(t);
    Ok(FitOutcome {
        params,
        weight: fed.client_weight(st.client),
        stage1: acc.finish(t0.elapsed().as_secs_f64()),
        stage2,
    })
}

/// This client's part of the evaluation with global parameters `global` (the aggregate
/// of round `round` when the caller knows it): completes a pending personalization
/// first, then scores the GM and the client's PM on its own test set.
pub fn evaluate(
    fed: &Federation,
    algo: &dyn Algorithm,
    st: &mut ClientState,
    global: &ParamSet,
    round: Option<usize>,
) -> Result<(Option<Stage2Done>, ClientEvaluation)> {
    check_client(fed, st)?;
    let stage2 = complete_pending(fed, algo, st, global, round)?;
    let state = st.federation_state(fed, global.clone(), round.map_or(0, |r| r + 1));
    let eval = fed.evaluate_client(&state, algo, st.client)?;
    Ok((stage2, eval))
}

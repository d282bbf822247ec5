//! The sampled clients of a round, trained at once. Each client's stage-1 epoch and its
//! personalization read the round's global model and write only that client's own state
//! (its private parameters and algorithm state), so independent clients can run on
//! separate threads and give the same bits as one after another: every batch order,
//! dropout mask and step is keyed by (round, client, stage, step), never by what ran
//! before, and the results are gathered in the sampled order. Two things make clients
//! dependent, and then they run one after another: the stage-1 momentum carried from one
//! client to the next (`carry_momentum`, the reference code's mode; its stage 2 has no
//! momentum, so it still runs at once), and a client sampled twice in one round (a
//! replayed schedule may list one). Such a chain holds one core; the next round's local
//! training then overlaps this round's personalization and evaluation instead
//! (`super::overlap`).
//!
//! Only rounds on banked features on the CPU run clients at once (prompt, adapter): their
//! steps are small enough that one client cannot keep the cores busy, while a LoRA step's
//! matmuls already use every core, two LoRA clients would hold two image-tower tapes, and
//! a GPU runs one client's kernels on all of itself. `--one-client-at-a-time` turns it off.

use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use super::algorithm::Algorithm;
use super::federation::{FedState, Federation};
use crate::peft::params::ParamSet;
use crate::pools::on_own_pools;

impl FedState {
    /// Client `k`'s view of the state: the round's global model and server state, `k`'s
    /// own private parameters and algorithm state, every other client's slot empty, no
    /// carried momentum. Cheap: tensors are shared, not copied.
    fn client_view(&self, k: usize) -> FedState {
        let mut view = FedState {
            rounds_done: self.rounds_done,
            global: self.global.clone(),
            private: vec![None; self.private.len()],
            momentum: None,
            server_extra: self.server_extra.clone(),
            client_extra: vec![None; self.client_extra.len()],
        };
        view.private[k] = self.private[k].clone();
        view.client_extra[k] = self.client_extra[k].clone();
        view
    }

    /// Takes client `k`'s own slots back from its `view`, after checking that the
    /// algorithm wrote nothing else (which would make the clients depend on each other).
    fn absorb_client_view(&mut self, k: usize, mut view: FedState, algo: &str) -> Result<()> {
        let others_empty =
            |slots: &[Option<ParamSet>]| slots.iter().enumerate().all(|(j, s)| j == k || s.is_none());
        let untouched = view.momentum.is_none()
            && others_empty(&view.private)
            && others_empty(&view.client_extra)
            && view.rounds_done == self.rounds_done
            && same_tensors(&view.global, &self.global)
            && same_optional(&view.server_extra, &self.server_extra);
        if !untouched {
            bail!(
                "{algo}: client {k}'s local hooks changed state beyond the client's own slots \
                 (the global model, server state, momentum or another client's); clients \
                 trained at once cannot share such state"
            );
        }
        self.private[k] = view.private[k].take();
        self.client_extra[k] = view.client_extra[k].take();
        Ok(())
    }
}

/// Whether `a` and `b` are both absent or hold the very same tensors.
pub(super) fn same_optional(a: &Option<ParamSet>, b: &Option<ParamSet>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => same_tensors(a, b),
        _ => false,
    }
}

/// Whether `a` and `b` hold the very same tensors (not copies) under the same names.
pub(super) fn same_tensors(a: &ParamSet, b: &ParamSet) -> bool {
    a.tensors.len() == b.tensors.len()
        && a.tensors
            .iter()
            .zip(&b.tensors)
            .all(|((na, ta), (nb, tb))| na == nb && ta.id() == tb.id())
}

impl Federation<'_> {
    /// Whether this round's `clients` may train `stage` at once (see the module doc):
    /// rounds on banked features on the CPU, no momentum carried between the clients
    /// (stage 1 with `carry_momentum`; stage 2 never carries it), no client twice, more
    /// than one thread, and the user did not ask for one client at a time.
    pub(super) fn clients_at_once(&self, clients: &[usize], stage: u8) -> bool {
        let mut sorted = clients.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        self.clip().device().is_cpu()
            && !self.peft().needs_pixels()
            && !self.settings().one_client_at_a_time
            && (stage != 1 || !self.settings().carry_momentum)
            && sorted.len() == clients.len()
            && clients.len() > 1
            && rayon::current_num_threads() > 1
    }

    /// `work(state, k)` for each of `clients`, in that order, or, with `at_once` (which
    /// [`clients_at_once`](Self::clients_at_once) must allow), at once on client views of
    /// `state`; the results in the order of `clients`. On an error, the first failing client's (in that order).
    /// Parallel work inside a client stays on the client's own one-thread pool.
    pub(super) fn for_each_client<T: Send>(
        &self,
        state: &mut FedState,
        clients: &[usize],
        at_once: bool,
        algo: &dyn Algorithm,
        work: impl Fn(&mut FedState, usize) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        if !at_once {
            return clients.iter().map(|&k| work(state, k)).collect();
        }
        // One single-threaded pool per core: a client's small matrix products gain little
        // from a second thread, and its parallel loops then never wait on the other.
        let pools = rayon::current_num_threads().min(clients.len());
        let views: Vec<Mutex<Option<FedState>>> = clients
            .iter()
            .map(|&k| Mutex::new(Some(state.client_view(k))))
            .collect();
        let done = on_own_pools(clients.len(), pools, 1, &|n| {
            let taken = views[n].lock().unwrap_or_else(|e| e.into_inner()).take();
            let mut view = taken.context("a client view was taken twice")?;
            let out = work(&mut view, clients[n])?;
            Ok((view, out))
        })?;
        let mut results = Vec::with_capacity(clients.len());
        for ((view, out), &k) in done.into_iter().zip(clients) {
            state.absorb_client_view(k, view, &algo.name())?;
            results.push(out);
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn params(v: f32) -> ParamSet {
        let t = Tensor::new(&[v, v + 1.0], &Device::Cpu).unwrap();
        ParamSet::from_pairs([("w".to_string(), t)])
    }

    fn state() -> FedState {
        let mut s = FedState::fresh(params(0.0), 3);
        s.private[2] = Some(params(2.0));
        s
    }

    #[test]
    fn a_view_holds_only_its_clients_slots_and_gives_them_back() {
        let mut s = state();
        let mut view = s.client_view(1);
        assert!(
            view.private.iter().all(Option::is_none),
            "client 2's slot leaked into 1's view"
        );
        view.private[1] = Some(params(1.0));
        view.client_extra[1] = Some(params(5.0));
        s.absorb_client_view(1, view, "test").unwrap();
        assert!(s.private[1].is_some() && s.client_extra[1].is_some());
        assert!(s.private[2].is_some(), "another client's slot was lost");
    }

    #[test]
    fn writing_beyond_the_clients_own_slots_is_an_error() {
        type Write = fn(&mut FedState);
        let writes: [(&str, Write); 4] = [
            ("another client's private slot", |v| {
                v.private[0] = Some(params(9.0))
            }),
            ("the global model", |v| v.global = params(0.0)),
            ("the momentum", |v| v.momentum = Some(params(0.0))),
            ("the server state", |v| v.server_extra = Some(params(0.0))),
        ];
        for (what, write) in writes {
            let mut s = state();
            let mut view = s.client_view(1);
            write(&mut view);
            let err = s.absorb_client_view(1, view, "test").unwrap_err().to_string();
            assert!(
                err.contains("client 1") && err.contains("own slots"),
                "{what}: {err}"
            );
        }
    }
}

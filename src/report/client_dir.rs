//! A remote client's state directory: what one client keeps on its own disk between the
//! messages of an orchestrator (`crate::bridge`), so that a client process killed
//! between rounds and started again continues exactly.
//!
//! Layout: `client.json` (client index, the run it belongs to, the last round trained,
//! the round whose personalization is pending, and the generation of the parameter
//! files) and `private-<gen>.safetensors` / `extra-<gen>.safetensors` (φ_k and the
//! algorithm's per-client state). A save writes the parameter files of a new generation,
//! then `client.json` atomically — the commit point — and only then removes older
//! generations, so a process killed at any moment leaves the previous or the new state,
//! never a mix.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::atomic;
use crate::fed::client::ClientState;
use crate::peft::params::ParamSet;

const STATE: &str = "client.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    client: usize,
    run: String,
    generation: u64,
    last_round: Option<usize>,
    pending_personalization: Option<usize>,
    has_private: bool,
    has_extra: bool,
}

/// A client's state directory.
#[derive(Debug, Clone)]
pub struct ClientDir {
    /// The folder.
    pub root: PathBuf,
    /// Fingerprint of the run configuration this state belongs to.
    run: String,
    /// Generation of the files on disk (0: nothing saved yet).
    generation: u64,
}

impl ClientDir {
    /// The state directory at `root` for the run with fingerprint `run`.
    pub fn new(root: &Path, run: &str) -> Self {
        ClientDir {
            root: root.to_path_buf(),
            run: run.to_string(),
            generation: 0,
        }
    }

    fn file(&self, kind: &str, generation: u64) -> PathBuf {
        self.root.join(format!("{kind}-{generation}.safetensors"))
    }

    /// Loads client `client`'s saved state, or a fresh one when the directory holds none;
    /// state of another client or another run is refused.
    pub fn load(&mut self, client: usize, device: &Device) -> Result<ClientState> {
        let path = self.root.join(STATE);
        if !path.is_file() {
            return Ok(ClientState::new(client));
        }
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let sf: StateFile = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: not a client state: {e}", path.display()))?;
        if sf.client != client {
            bail!(
                "{}: this state belongs to client {}, not client {client}; give each client its own state directory",
                path.display(),
                sf.client
            );
        }
        if sf.run != self.run {
            bail!(
                "{}: this state belongs to another run (configuration fingerprint {}, this one {}); use another state directory or delete it",
                path.display(),
                sf.run,
                self.run
            );
        }
        let load = |kind: &str, present: bool| -> Result<Option<ParamSet>> {
            present
                .then(|| ParamSet::load(&self.file(kind, sf.generation), device))
                .transpose()
        };
        let state = ClientState {
            client,
            private: load("private", sf.has_private)?,
            extra: load("extra", sf.has_extra)?,
            pending: sf.pending_personalization,
            last_round: sf.last_round,
        };
        self.generation = sf.generation;
        Ok(state)
    }

    /// Saves `state` as a new generation (see the module comment).
    pub fn save(&mut self, state: &ClientState) -> Result<()> {
        let generation = self.generation + 1;
        if let Some(p) = &state.private {
            p.save(&self.file("private", generation))?;
        }
        if let Some(x) = &state.extra {
            x.save(&self.file("extra", generation))?;
        }
        let sf = StateFile {
            client: state.client,
            run: self.run.clone(),
            generation,
            last_round: state.last_round,
            pending_personalization: state.pending,
            has_private: state.private.is_some(),
            has_extra: state.extra.is_some(),
        };
        atomic::write(
            &self.root.join(STATE),
            serde_json::to_string_pretty(&sf)?.as_bytes(),
        )?;
        self.generation = generation;
        self.remove_stale()
    }

    /// Removes parameter files of other generations (left by an earlier save or by a
    /// process killed before its commit).
    fn remove_stale(&self) -> Result<()> {
        let keep = [
            self.file("private", self.generation),
            self.file("extra", self.generation),
        ];
        let entries =
            std::fs::read_dir(&self.root).with_context(|| format!("cannot list {}", self.root.display()))?;
        for e in entries {
            let path = e?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ours = (name.starts_with("private-") || name.starts_with("extra-"))
                && name.ends_with(".safetensors");
            if ours && !keep.contains(&path) {
                std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn params(v: f32) -> ParamSet {
        ParamSet::from_pairs([("a".to_string(), Tensor::full(v, (2, 2), &Device::Cpu).unwrap())])
    }

    #[test]
    fn saves_reload_and_old_generations_go() {
        let d = tempfile::tempdir().unwrap();
        let mut dir = ClientDir::new(d.path(), "run1");
        let mut st = dir.load(3, &Device::Cpu).unwrap();
        assert!(st.private.is_none() && st.last_round.is_none());
        st.private = Some(params(1.0));
        st.pending = Some(0);
        st.last_round = Some(0);
        dir.save(&st).unwrap();
        st.private = Some(params(2.0));
        st.pending = None;
        dir.save(&st).unwrap();
        let mut again = ClientDir::new(d.path(), "run1");
        let back = again.load(3, &Device::Cpu).unwrap();
        let v: Vec<Vec<f32>> = back.private.unwrap().get("a").unwrap().to_vec2().unwrap();
        assert_eq!(v[0][0], 2.0);
        assert_eq!((back.pending, back.last_round), (None, Some(0)));
        let files: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
    }

    #[test]
    fn another_client_or_run_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut dir = ClientDir::new(d.path(), "run1");
        dir.save(&ClientState::new(1)).unwrap();
        let e = format!(
            "{:#}",
            ClientDir::new(d.path(), "run1")
                .load(2, &Device::Cpu)
                .unwrap_err()
        );
        assert!(e.contains("client 1") && e.contains("client.json"), "{e}");
        let e = format!(
            "{:#}",
            ClientDir::new(d.path(), "run2")
                .load(1, &Device::Cpu)
                .unwrap_err()
        );
        assert!(e.contains("another run"), "{e}");
    }

    #[test]
    fn a_commit_that_never_happened_leaves_the_previous_state() {
        let d = tempfile::tempdir().unwrap();
        let mut dir = ClientDir::new(d.path(), "r");
        let mut st = ClientState::new(0);
        st.private = Some(params(1.0));
        dir.save(&st).unwrap();
        // A process killed after writing generation 2's parameters but before its commit.
        params(9.0).save(&d.path().join("private-2.safetensors")).unwrap();
        let back = ClientDir::new(d.path(), "r").load(0, &Device::Cpu).unwrap();
        let v: Vec<Vec<f32>> = back.private.unwrap().get("a").unwrap().to_vec2().unwrap();
        assert_eq!(v[0][0], 1.0);
    }
}

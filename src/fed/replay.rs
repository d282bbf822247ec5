//! Replaying a run recorded with the authors' code (`shared/reference-harness`, `DUMP=1`):
//! the clients of every round and the order in which each client's samples were batched
//! (`batch_orders.jsonl`), and the initial parameters (`params_init.safetensors`). With the
//! reference's split (`--split-file`) this makes a run directly comparable, parameter by
//! parameter, with the reference's.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use serde::Deserialize;

use super::train::{batches_of, Schedule};
use crate::peft::model::CTX;
use crate::peft::params::ParamSet;

#[derive(Deserialize)]
struct OrderLine {
    round: usize,
    phase: String,
    client: usize,
    n: usize,
    order: Vec<usize>,
}

/// Client lists and batch orders of a recorded run.
#[derive(Debug, Clone)]
pub struct ReplaySchedule {
    clients: Vec<Vec<usize>>,
    orders: HashMap<(usize, u8, usize), Vec<usize>>,
    batch_size: usize,
}

impl ReplaySchedule {
    /// Reads `batch_orders.jsonl`; `batch_size` is the recorded run's B.
    pub fn read(path: &Path, batch_size: usize) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mut clients: Vec<Vec<usize>> = Vec::new();
        let mut orders = HashMap::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let r: OrderLine =
                serde_json::from_str(line).map_err(|e| anyhow!("{}: line {}: {e}", path.display(), i + 1))?;
            let stage = match r.phase.as_str() {
                "stage1_train" => 1,
                "stage2_train" => 2,
                _ => continue,
            };
            if r.order.len() != r.n {
                bail!(
                    "{}: line {}: order has {} entries for n = {}",
                    path.display(),
                    i + 1,
                    r.order.len(),
                    r.n
                );
            }
            if stage == 1 {
                if clients.len() <= r.round {
                    clients.resize(r.round + 1, Vec::new());
                }
                clients[r.round].push(r.client);
            }
            orders.insert((r.round, stage, r.client), r.order);
        }
        Ok(ReplaySchedule {
            clients,
            orders,
            batch_size,
        })
    }

    /// Rounds recorded.
    pub fn rounds(&self) -> usize {
        self.clients.len()
    }
}

impl Schedule for ReplaySchedule {
    fn clients(&self, round: usize) -> Result<Vec<usize>> {
        self.clients
            .get(round)
            .cloned()
            .ok_or_else(|| anyhow!("the recorded run has no round {round}"))
    }

    fn batches(&self, round: usize, client: usize, stage: u8, indices: &[usize]) -> Result<Vec<Vec<usize>>> {
        let order = self.orders.get(&(round, stage, client)).ok_or_else(|| {
            anyhow!("the recorded run has no stage-{stage} order for client {client} in round {round}")
        })?;
        if order.len() != indices.len() {
            bail!(
                "round {round} client {client}: recorded order covers {} samples, the split gives {}",
                order.len(),
                indices.len()
            );
        }
        let mapped = order
            .iter()
            .map(|&o| {
                indices
                    .get(o)
                    .copied()
                    .ok_or_else(|| anyhow!("recorded position {o} out of range"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(batches_of(&mapped, self.batch_size))
    }
}

/// The recorded initial prompt context: (global, shared initial private).
pub fn read_initial_prompt(path: &Path, device: &Device) -> Result<(ParamSet, ParamSet)> {
    let t = candle_core::safetensors::load(path, device).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let get = |k: &str| -> Result<ParamSet> {
        let v = t
            .get(k)
            .ok_or_else(|| anyhow!("{}: missing tensor `{k}`", path.display()))?;
        Ok(ParamSet::from_pairs([(CTX.to_string(), v.clone())]))
    };
    Ok((
        get("global/prompt_learner.ctx")?,
        get("local/prompt_learner.ctx")?,
    ))
}

#[cfg(test)]
mod tests {
    //! Exact parity with the authors' code: two recorded rounds of FedPuReL (prompt) on the
    //! reference's split, batch orders and initial context, compared parameter by
    //! parameter (tests/fixtures/reference-run-prompt, features from
    //! `examples/make_parity_features.rs`).
    use std::sync::Arc;

    use candle_core::{Device, Tensor};

    use super::*;
    use crate::clip::model::tests::fixture_dir;
    use crate::clip::ops::testutil::max_abs_diff;
    use crate::clip::tokenizer::ClipTokenizer;
    use crate::clip::zeroshot::ZeroShotHead;
    use crate::clip::{Clip, LoadOptions};
    use crate::data::dataset::{Dataset, Images, Split, SplitKind};
    use crate::data::partition::import;
    use crate::data::transforms::{Transform, TransformKind};
    use crate::fed::local::AlignLoss;
    use crate::fed::sgd::SgdConfig;
    use crate::fed::train::{Federation, TrainSettings};
    use crate::peft::model::Peft;
    use crate::peft::prompt::PromptLearner;

    fn dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference-run-prompt")
    }

    /// Labels only: the images are represented by their cached features.
    fn dataset(t: &HashMap<String, Tensor>, classes: Vec<String>) -> Dataset {
        let split = |name: &str| {
            let labels: Vec<u32> = t[name].to_vec1().unwrap();
            let n = labels.len();
            Split {
                labels,
                coarse: None,
                images: Images::Planes {
                    width: 1,
                    height: 1,
                    data: vec![0; 3 * n],
                },
            }
        };
        Dataset {
            name: "cifar100-synthetic".into(),
            classes,
            coarse_classes: None,
            train: split("train_labels"),
            test: split("test_labels"),
        }
    }

    #[test]
    fn two_reference_rounds_are_reproduced() {
        let dev = Device::Cpu;
        let t = candle_core::safetensors::load(dir().join("features.safetensors"), &dev).unwrap();
        let classes: Vec<String> = std::fs::read_to_string(dir().join("../cifar100_classes.txt"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let ds = Arc::new(dataset(&t, classes.clone()));
        let partition = import::read(&dir().join("partition.json")).unwrap();
        let rows: Vec<u32> = t["train_rows"].to_vec1().unwrap();
        assert_eq!(
            rows.iter().map(|&r| r as usize).collect::<Vec<_>>(),
            partition.lt_train
        );
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let tok = ClipTokenizer::from_dir(&fixture_dir("hf")).unwrap();
        let zs = ZeroShotHead::build(&clip, &tok, &classes, "a photo of a {}.").unwrap();
        let peft = Peft::Prompt(PromptLearner::new(&clip, &tok, &classes, 4, false).unwrap());
        let settings = TrainSettings {
            rounds: 2,
            frac: 0.4,
            batch_size: 32,
            stage1: SgdConfig {
                lr: 1e-3,
                momentum: 0.9,
                weight_decay: 5e-4,
            },
            carry_momentum: true,
            stage2: SgdConfig {
                lr: 1e-3,
                momentum: 0.0,
                weight_decay: 0.0,
            },
            lambda: 0.99,
            lambda_proj: 1.0,
            align: AlignLoss::Tkl,
            seed: 1,
            eval_batch: 512,
            views: 0,
        };
        let (train_f, test_f) = (t["train_features"].clone(), t["test_features"].clone());
        let lt = partition.lt_train.clone();
        let encode = |split, idx: &[usize], _views: usize| -> anyhow::Result<Tensor> {
            Ok(match split {
                SplitKind::Train => {
                    assert_eq!(idx, lt.as_slice());
                    train_f.clone()
                }
                SplitKind::Test => test_f.clone(),
            })
        };
        let transform = Transform::new(TransformKind::Cifar);
        let mut fed = Federation::new(
            &clip,
            peft,
            ds,
            partition,
            transform,
            zs.text_features,
            settings,
            encode,
        )
        .unwrap();
        fed.set_schedule(Box::new(
            ReplaySchedule::read(&dir().join("batch_orders.jsonl"), 32).unwrap(),
        ));
        let (global, local) = read_initial_prompt(&dir().join("params_init.safetensors"), &dev).unwrap();
        fed.set_private_init(local).unwrap();
        let mut state = fed.initial_state().unwrap();
        state.global = global;
        for round in 0..2 {
            let rec = fed
                .run_round(
                    &mut state,
                    &crate::fed::algorithms::fedpurel::FedPuReL::paper(),
                    &|_| {},
                )
                .unwrap();
            let want =
                candle_core::safetensors::load(dir().join(format!("params_round{round}.safetensors")), &dev)
                    .unwrap();
            let g = max_abs_diff(state.global.get(CTX).unwrap(), &want["global/prompt_learner.ctx"]);
            let mut worst = 0f32;
            for (k, p) in state.private.iter().enumerate() {
                if let Some(w) = want.get(&format!("local/client{k}/prompt_learner.ctx")) {
                    worst = worst.max(max_abs_diff(p.as_ref().unwrap().get(CTX).unwrap(), w));
                }
            }
            println!("round {round}: global ctx max abs diff {g:e}, private ctx {worst:e}");
            assert!(
                g <= 1e-5 && worst <= 1e-5,
                "round {round}: global {g:e}, private {worst:e}"
            );
            // Accuracies: GM exactly or within a sample or two of 10 000.
            let m: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir().join(format!("metrics_round{round}.json"))).unwrap(),
            )
            .unwrap();
            let gm_ref = m["global"]["acc"].as_f64().unwrap();
            println!(
                "round {round}: GM {:.2} % (reference {gm_ref:.2} %), PM {:.3} %",
                rec.gm.accuracy.all, rec.pm.accuracy.all
            );
            assert!(
                (rec.gm.accuracy.all - gm_ref).abs() <= 0.02 + 1e-9,
                "GM {} vs {gm_ref}",
                rec.gm.accuracy.all
            );
            let pm_ref: Vec<f64> = m["personal_per_client"]["acc"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let pm_ref_mean = pm_ref.iter().sum::<f64>() / pm_ref.len() as f64;
            println!("round {round}: PM reference {pm_ref_mean:.3} %");
            assert!(
                (rec.pm.accuracy.all - pm_ref_mean).abs() < 0.05,
                "PM {} vs {pm_ref_mean}",
                rec.pm.accuracy.all
            );
        }
    }
}

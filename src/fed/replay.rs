//! Replaying a run recorded with the authors' code (`shared/reference-harness`, `DUMP=1`):
//! the clients of every round and the order in which each client's samples were batched
//! (`batch_orders.jsonl`), and the initial parameters (`params_init.safetensors`). With the
//! reference's split (`--split-file`) this makes a run directly comparable, parameter by
//! parameter, with the reference's.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;

use super::federation::{batches_of, PhaseSplits, Schedule};
use crate::peft::model::{CTX, LORA_VISION};
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

/// The per-phase client data of a recorded `partition.json` (`clients[].stage2_train_rows`
/// and `clients[].fedavg_weight`, written by the harness for the authors' list-file
/// datasets, whose three trainers split the data three times); None when the recording
/// has one split for every phase (the CIFAR path).
pub fn read_phase_splits(path: &Path) -> Result<Option<PhaseSplits>> {
    #[derive(Deserialize)]
    struct Client {
        stage2_train_rows: Option<Vec<usize>>,
        fedavg_weight: Option<f64>,
    }
    #[derive(Deserialize)]
    struct File {
        clients: Vec<Client>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let f: File = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if f.clients
        .iter()
        .all(|c| c.stage2_train_rows.is_none() && c.fedavg_weight.is_none())
    {
        return Ok(None);
    }
    let mut splits = PhaseSplits {
        stage2_train: Vec::new(),
        fedavg_weight: Vec::new(),
    };
    for (k, c) in f.clients.into_iter().enumerate() {
        match (c.stage2_train_rows, c.fedavg_weight) {
            (Some(rows), Some(w)) => {
                splits.stage2_train.push(rows);
                splits.fedavg_weight.push(w);
            }
            _ => bail!(
                "{}: client {k} lacks stage2_train_rows or fedavg_weight (others have them)",
                path.display()
            ),
        }
    }
    Ok(Some(splits))
}

/// Our name of a trainable tensor the authors' code calls `key`: the prompt context
/// (`prompt_learner.ctx`), the adapter's two linear maps (`img_adap.{0,2}.*`) and the
/// vision LoRA factors (`image_encoder.transformer.resblocks.L.attn.{q,k,v}_proj.w_lora_{A,B}`,
/// shaped as ours: A `[r, in]`, B `[out, r]`).
pub fn our_param_name(key: &str) -> Result<String> {
    if key == "prompt_learner.ctx" {
        return Ok(CTX.to_string());
    }
    if let Some(rest) = key.strip_prefix("img_adap.") {
        let (layer, param) = rest
            .split_once('.')
            .ok_or_else(|| anyhow!("malformed adapter key `{key}`"))?;
        let fc = match layer {
            "0" => "fc1",
            "2" => "fc2",
            _ => bail!("unknown adapter layer in `{key}`"),
        };
        return Ok(format!("adapter.{fc}.{param}"));
    }
    if let Some(rest) = key.strip_prefix("image_encoder.transformer.resblocks.") {
        let parse = || -> Option<String> {
            let (layer, rest) = rest.split_once(".attn.")?;
            let (proj, factor) = rest.split_once("_proj.w_lora_")?;
            let factor = match factor {
                "A" => "a",
                "B" => "b",
                _ => return None,
            };
            Some(format!("{LORA_VISION}.{layer}.{proj}.{factor}"))
        };
        return parse().ok_or_else(|| anyhow!("unknown LoRA key `{key}`"));
    }
    bail!("no parameter of ours corresponds to the reference's `{key}`")
}

/// The tensors of a recorded parameter file (`params_init.safetensors`,
/// `params_round{r}.safetensors`) grouped by prefix (`global`, `local`, `local/client3`,
/// `stage1/client3`, …), each group under our parameter names.
pub fn read_param_groups(path: &Path, device: &Device) -> Result<BTreeMap<String, ParamSet>> {
    let t = candle_core::safetensors::load(path, device).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut groups: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
    for (key, v) in t {
        let (group, name) =
            split_group(&key).with_context(|| format!("{}: tensor `{key}`", path.display()))?;
        groups.entry(group).or_default().push((our_param_name(&name)?, v));
    }
    Ok(groups
        .into_iter()
        .map(|(g, pairs)| (g, ParamSet::from_pairs(pairs)))
        .collect())
}

/// `global/<key>` → ("global", key); `local/client3/<key>` → ("local/client3", key).
fn split_group(key: &str) -> Result<(String, String)> {
    let (head, rest) = key.split_once('/').ok_or_else(|| anyhow!("no group prefix"))?;
    match rest.split_once('/') {
        Some((client, name)) if client.starts_with("client") => {
            Ok((format!("{head}/{client}"), name.to_string()))
        }
        _ => Ok((head.to_string(), rest.to_string())),
    }
}

/// The recorded initial parameters: (global, shared initial private).
pub fn read_initial_params(path: &Path, device: &Device) -> Result<(ParamSet, ParamSet)> {
    let mut g = read_param_groups(path, device)?;
    let mut take = |k: &str| {
        g.remove(k)
            .ok_or_else(|| anyhow!("{}: no `{k}/…` tensors", path.display()))
    };
    Ok((take("global")?, take("local")?))
}

#[cfg(test)]
pub(crate) mod tests {
    //! Exact parity with the authors' code: recorded runs of FedPuReL replayed on the
    //! reference's split, batch orders and initial parameters, compared parameter by
    //! parameter and metric by metric after every round (fixtures and their provenance
    //! in tests/fixtures/README.md; every check with its measured error in
    //! docs/fidelity.md):
    //!
    //! * prompt, 2 rounds, tiny random CLIP, synthetic CIFAR-100-LT (IF 100, 20 clients;
    //!   features from `examples/make_parity_features.rs`);
    //! * LoRA (dropout 0) and adapter (the code's soft distillation), 2 rounds each, tiny
    //!   random CLIP, a smaller synthetic CIFAR-100-LT (IF 10, 5 clients) whose pixels are
    //!   in the fixture, so the image tower runs live as in the reference.
    use std::sync::Arc;

    use candle_core::{Device, Tensor};

    use super::*;
    use crate::clip::model::tests::fixture_dir;
    use crate::clip::ops::testutil::max_abs_diff;
    use crate::clip::tokenizer::ClipTokenizer;
    use crate::clip::zeroshot::ZeroShotHead;
    use crate::clip::{Clip, LoadOptions};
    use crate::data::dataset::{Dataset, Images, Split, SplitKind};
    use crate::data::features::{encode_split, EncodeRequest};
    use crate::data::partition::import;
    use crate::data::transforms::{Mode, Transform, TransformKind};
    use crate::fed::algorithms::fedpurel::FedPuReL;
    use crate::fed::federation::{Federation, TrainSettings};
    use crate::fed::local::AlignLoss;
    use crate::peft::lora::LoraSpec;
    use crate::peft::model::Peft;
    use crate::peft::prompt::PromptLearner;
    use crate::peft::PeftKind;
    use crate::setup::presets::{paper_train, reference_code};

    pub(crate) fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    /// The reference script's settings (`-reference-code`: λ 0.99, carried stage-1
    /// momentum) with `align` as the alignment loss, `rounds` rounds, test batches of 512.
    pub(crate) fn reference_settings(rounds: usize, align: AlignLoss) -> TrainSettings {
        let mut t = reference_code(paper_train(1), PeftKind::Prompt);
        (t.rounds, t.align, t.eval_batch) = (rounds, align, 512);
        t
    }

    /// How far one replayed round may be from the recording.
    pub(crate) struct Tolerance {
        /// Max abs difference of every global parameter.
        pub global: f32,
        /// Max abs difference of every private parameter of the round's clients.
        pub private: f32,
        /// GM accuracy, percentage points.
        pub gm: f64,
        /// PM accuracy (unweighted client mean), percentage points.
        pub pm: f64,
    }

    /// What a replayed round measured against the recording.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct RoundDiff {
        /// Max abs difference of the global parameters.
        pub global: f32,
        /// Max abs difference over the private parameters of the round's clients.
        pub private: f32,
        /// Our GM accuracy minus the reference's (points).
        pub gm: f64,
        /// Our PM accuracy minus the reference's (points).
        pub pm: f64,
    }

    /// Replays `rounds` recorded rounds of `dir` on `fed` (its schedule and initial
    /// parameters replaced by the recording's) and checks each against `tol`.
    pub(crate) fn replay(fed: &mut Federation, dir: &Path, rounds: usize, tol: &Tolerance) -> Vec<RoundDiff> {
        let dev = Device::Cpu;
        let schedule =
            ReplaySchedule::read(&dir.join("batch_orders.jsonl"), fed.settings().batch_size).unwrap();
        assert!(
            schedule.rounds() >= rounds,
            "{}: {} rounds recorded",
            dir.display(),
            schedule.rounds()
        );
        fed.set_schedule(Box::new(schedule));
        if let Some(splits) = read_phase_splits(&dir.join("partition.json")).unwrap() {
            fed.set_phase_splits(splits).unwrap();
        }
        let (global, local) = read_initial_params(&dir.join("params_init.safetensors"), &dev).unwrap();
        fed.set_private_init(local).unwrap();
        let mut state = fed.initial_state().unwrap();
        global.check_compatible(&state.global).unwrap();
        state.global = global;
        let mut diffs = Vec::new();
        for round in 0..rounds {
            let rec = fed.run_round(&mut state, &FedPuReL::paper(), &|_| {}).unwrap();
            let mut want =
                read_param_groups(&dir.join(format!("params_round{round}.safetensors")), &dev).unwrap();
            let set_diff = |ours: &ParamSet, theirs: &ParamSet| -> f32 {
                ours.check_compatible(theirs).unwrap();
                ours.tensors
                    .iter()
                    .map(|(k, t)| {
                        let d = max_abs_diff(t, theirs.get(k).unwrap());
                        if std::env::var_os("REPLAY_DEBUG").is_some() {
                            let mag = t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                            println!("  {k}: max abs diff {d:e}, max |param| {mag:e}");
                        }
                        d
                    })
                    .fold(0.0, f32::max)
            };
            let global = set_diff(&state.global, &want.remove("global").unwrap());
            let mut private = 0f32;
            for &k in &rec.clients {
                let theirs = want
                    .remove(&format!("local/client{k}"))
                    .unwrap_or_else(|| panic!("round {round}: no private parameters of client {k}"));
                private = private.max(set_diff(state.private[k].as_ref().unwrap(), &theirs));
            }
            let m: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join(format!("metrics_round{round}.json"))).unwrap(),
            )
            .unwrap();
            let recorded: Vec<usize> = m["clients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(rec.clients, recorded, "round {round}: clients");
            let gm_ref = m["global"]["acc"].as_f64().unwrap();
            let pm_ref: Vec<f64> = m["personal_per_client"]["acc"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let pm_ref = pm_ref.iter().sum::<f64>() / pm_ref.len() as f64;
            let d = RoundDiff {
                global,
                private,
                gm: rec.gm.accuracy.all - gm_ref,
                pm: rec.pm.accuracy.all - pm_ref,
            };
            println!(
                "{} round {round}: params max abs diff global {:e}, private {:e}; GM {:.3} % (reference {gm_ref:.3} %), PM {:.3} % (reference {pm_ref:.3} %)",
                dir.file_name().unwrap().to_string_lossy(),
                d.global,
                d.private,
                rec.gm.accuracy.all,
                rec.pm.accuracy.all
            );
            assert!(
                d.global <= tol.global && d.private <= tol.private,
                "round {round}: parameters differ by {d:?}"
            );
            assert!(d.gm.abs() <= tol.gm + 1e-9, "round {round}: GM differs by {d:?}");
            assert!(d.pm.abs() <= tol.pm + 1e-9, "round {round}: PM differs by {d:?}");
            diffs.push(d);
        }
        diffs
    }

    fn classes() -> Vec<String> {
        std::fs::read_to_string(fixtures().join("cifar100_classes.txt"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn labels_of(t: &Tensor) -> Vec<u32> {
        t.to_dtype(candle_core::DType::U32).unwrap().to_vec1().unwrap()
    }

    /// Labels only: the images are represented by their cached features.
    fn labels_only(train: Vec<u32>, test: Vec<u32>) -> Dataset {
        let split = |labels: Vec<u32>| {
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
            classes: classes(),
            coarse_classes: None,
            train: split(train),
            test: split(test),
        }
    }

    #[test]
    fn two_reference_rounds_are_reproduced() {
        let dir = fixtures().join("reference-run-prompt");
        let dev = Device::Cpu;
        let t = candle_core::safetensors::load(dir.join("features.safetensors"), &dev).unwrap();
        let ds = Arc::new(labels_only(
            labels_of(&t["train_labels"]),
            labels_of(&t["test_labels"]),
        ));
        let partition = import::read(&dir.join("partition.json")).unwrap();
        let rows: Vec<u32> = t["train_rows"].to_vec1().unwrap();
        assert_eq!(
            rows.iter().map(|&r| r as usize).collect::<Vec<_>>(),
            partition.lt_train
        );
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let tok = ClipTokenizer::from_dir(&fixture_dir("hf")).unwrap();
        let classes = ds.prompt_names();
        let zs = ZeroShotHead::build(&clip, &tok, &classes, "a photo of a {}.").unwrap();
        let peft = Peft::Prompt(PromptLearner::new(&clip, &tok, &classes, 4, false).unwrap());
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
        let mut fed = Federation::new(
            &clip,
            peft,
            ds,
            partition,
            Transform::new(TransformKind::Cifar),
            zs.text_features,
            reference_settings(2, AlignLoss::Tkl),
            encode,
        )
        .unwrap();
        // Accuracies: GM within a sample or two of 10 000, PM within 0.05 points.
        replay(
            &mut fed,
            &dir,
            2,
            &Tolerance {
                global: 1e-5,
                private: 1e-5,
                gm: 0.02,
                pm: 0.05,
            },
        );
    }

    /// The small synthetic CIFAR-100 of the LoRA and adapter recordings: the long-tailed
    /// training rows and the whole test file, as pixels (other training rows are never
    /// read and stay black).
    fn small_cifar() -> Dataset {
        let t = candle_core::safetensors::load(
            fixtures().join("reference-small-cifar/images.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let rows: Vec<i64> = t["train_rows"].to_vec1().unwrap();
        let train_labels = labels_of(&t["train_labels"]);
        let lt: Vec<Vec<u8>> = t["train_images"].to_vec2().unwrap();
        let mut train = vec![0u8; train_labels.len() * 3072];
        for (&r, img) in rows.iter().zip(&lt) {
            train[r as usize * 3072..(r as usize + 1) * 3072].copy_from_slice(img);
        }
        let test: Vec<u8> = t["test_images"].flatten_all().unwrap().to_vec1().unwrap();
        let planes = |data| Images::Planes {
            width: 32,
            height: 32,
            data,
        };
        Dataset {
            name: "cifar100-synthetic-small".into(),
            classes: classes(),
            coarse_classes: None,
            train: Split {
                labels: train_labels,
                coarse: None,
                images: planes(train),
            },
            test: Split {
                labels: labels_of(&t["test_labels"]),
                coarse: None,
                images: planes(test),
            },
        }
    }

    /// Frozen features of `idx` through the deterministic `transform`, encoded now (no cache).
    fn encode_live(
        clip: &Clip,
        ds: &Arc<Dataset>,
        transform: Transform,
        split: SplitKind,
        idx: &[usize],
    ) -> anyhow::Result<Tensor> {
        let req = EncodeRequest {
            split,
            indices: Some(idx.to_vec()),
            transform,
            mode: Mode::Test,
            views: 1,
            seed: 0,
            batch_size: 128,
        };
        encode_split(clip, ds, &req)
    }

    /// Replays a recording on the small synthetic CIFAR-100 with `peft`, the frozen
    /// features encoded live through the reference's CIFAR pipeline.
    fn replay_small(
        fixture: &str,
        peft: impl FnOnce(&Clip, Tensor) -> Peft,
        align: AlignLoss,
        tol: &Tolerance,
    ) {
        let dir = fixtures().join(fixture);
        let ds = Arc::new(small_cifar());
        let partition = import::read(&dir.join("partition.json")).unwrap();
        let clip = Clip::load(&fixture_dir("hf"), &LoadOptions::default()).unwrap();
        let tok = ClipTokenizer::from_dir(&fixture_dir("hf")).unwrap();
        let zs = ZeroShotHead::build(&clip, &tok, &ds.prompt_names(), "a photo of a {}.").unwrap();
        let transform = Transform::new(TransformKind::Cifar);
        let encode = |split, idx: &[usize], _views: usize| encode_live(&clip, &ds, transform, split, idx);
        let peft = peft(&clip, zs.text_features.clone());
        let mut fed = Federation::new(
            &clip,
            peft,
            Arc::clone(&ds),
            partition,
            transform,
            zs.text_features.clone(),
            reference_settings(2, align),
            encode,
        )
        .unwrap();
        replay(&mut fed, &dir, 2, tol);
    }

    #[test]
    fn two_reference_lora_rounds_are_reproduced() {
        replay_small(
            "reference-run-lora",
            |_, text| Peft::Lora {
                spec: LoraSpec {
                    dropout: 0.0,
                    ..LoraSpec::default()
                },
                vision: true,
                text_lora: None,
                text,
            },
            AlignLoss::Tkl,
            // Each client's first stage-1 step starts with B = 0, so the student equals
            // the teacher up to rounding (max |f − z| 8e-7 here), the TKL gradient is
            // rounding noise (norm ~1e-7) and the per-tensor purification switch (cos < 0)
            // flips on that noise — in the authors' code as in ours. The global B
            // factors therefore agree only to a few % of their size (measured 3.9e-5 and
            // 1.0e-4 with |B| ≤ 6.4e-4 and 1.4e-3 after rounds 0 and 1); A, the private
            // branch and both accuracies agree closely (docs/fidelity.md).
            &Tolerance {
                global: 2e-4,
                private: 1e-6,
                gm: 0.0,
                pm: 0.0,
            },
        );
    }

    #[test]
    fn two_reference_adapter_rounds_are_reproduced() {
        replay_small(
            "reference-run-adapter",
            |_, text| Peft::Adapter { text },
            AlignLoss::SoftDistillation,
            &Tolerance {
                global: 1e-5,
                private: 1e-5,
                gm: 0.0,
                pm: 0.0,
            },
        );
    }

    /// The demo's setting (`fedpurel export world`: the world's downstream task, IF 100,
    /// the demo CLIP) run by the authors' code for 10 rounds of prompt tuning with the
    /// ImageNet-LT reader (three splits, see [`PhaseSplits`]); features encoded live.
    #[test]
    fn ten_reference_rounds_on_the_demo_clip_are_reproduced() {
        let dir = fixtures().join("reference-run-world");
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join(crate::setup::presets::DEMO_MODEL);
        // Recorded on the world's downstream domain (the demo's task before
        // docs/demo-regime.md moved it to the pretraining domain).
        let mut data = crate::setup::presets::demo_preset(false, &model, Path::new(""), Path::new("")).data;
        data.world_domain = crate::data::world::Domain::Downstream;
        let ds = Arc::new(crate::data::world::generate(&data.world_spec()).unwrap());
        let partition = import::read(&dir.join("partition.json")).unwrap();
        let clip = Clip::load(&model, &LoadOptions::default()).unwrap();
        let tok = ClipTokenizer::from_dir(&model).unwrap();
        let classes = ds.prompt_names();
        let zs = ZeroShotHead::build(&clip, &tok, &classes, "a photo of a {}.").unwrap();
        let peft = Peft::Prompt(PromptLearner::new(&clip, &tok, &classes, 4, false).unwrap());
        let transform = Transform::at(TransformKind::Native, 32);
        let encode = |split, idx: &[usize], _views: usize| encode_live(&clip, &ds, transform, split, idx);
        let rounds = (0..)
            .take_while(|r| dir.join(format!("params_round{r}.safetensors")).is_file())
            .count();
        assert_eq!(rounds, 10, "{}: rounds recorded", dir.display());
        let mut fed = Federation::new(
            &clip,
            peft,
            Arc::clone(&ds),
            partition,
            transform,
            zs.text_features,
            reference_settings(rounds, AlignLoss::Tkl),
            encode,
        )
        .unwrap();
        replay(
            &mut fed,
            &dir,
            rounds,
            // One test sample is 0.033 points of GM (3 000 images) and about as much of PM.
            &Tolerance {
                global: 1e-6,
                private: 1e-6,
                gm: 0.04,
                pm: 0.04,
            },
        );
    }

    #[test]
    fn reference_names_map_to_ours() {
        for (theirs, ours) in [
            ("prompt_learner.ctx", "prompt.ctx"),
            ("img_adap.0.weight", "adapter.fc1.weight"),
            ("img_adap.2.bias", "adapter.fc2.bias"),
            (
                "image_encoder.transformer.resblocks.2.attn.v_proj.w_lora_B",
                "lora.vision.2.v.b",
            ),
        ] {
            assert_eq!(our_param_name(theirs).unwrap(), ours);
        }
        for bad in [
            "img_adap.1.weight",
            "image_encoder.transformer.resblocks.0.attn.q_proj.w_lora_C",
            "ctx",
        ] {
            assert!(our_param_name(bad).unwrap_err().to_string().contains(bad));
        }
        assert_eq!(
            split_group("local/client3/img_adap.0.weight").unwrap(),
            ("local/client3".to_string(), "img_adap.0.weight".to_string())
        );
        assert_eq!(
            split_group("global/prompt_learner.ctx").unwrap(),
            ("global".to_string(), "prompt_learner.ctx".to_string())
        );
    }
}

//! Builds `tests/fixtures/reference-run-prompt/features.safetensors`: the tiny fixture
//! CLIP's image features of the reference run's synthetic CIFAR-100 (the long-tailed train
//! rows and the whole test split, through the reference's CIFAR transform), plus all
//! labels, so the exact-parity test needs neither the 180 MB data files nor Python.
//!
//! ```text
//! python3 -m venv /tmp/npenv && /tmp/npenv/bin/pip install numpy
//! /tmp/npenv/bin/python shared/reference-harness/make_cifar_like.py --out /tmp/cifar-like
//! cargo run --release --example make_parity_features -- /tmp/cifar-like
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use fedpurel::clip::{Clip, LoadOptions};
use fedpurel::data::features::{encode_split, EncodeRequest};
use fedpurel::data::partition::import;
use fedpurel::data::transforms::{Mode, Transform, TransformKind};
use fedpurel::data::SplitKind;

fn main() -> Result<()> {
    let root = std::env::args()
        .nth(1)
        .context("usage: make_parity_features <data root>")?;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ds = Arc::new(fedpurel::data::cifar::load(Path::new(&root))?);
    let partition = import::read(&fixtures.join("reference-run-prompt/partition.json"))?;
    let clip = Clip::load(&fixtures.join("tiny-clip/hf"), &LoadOptions::default())?;
    let transform = Transform::new(TransformKind::Cifar);
    let req = |split, indices| EncodeRequest {
        split,
        indices,
        transform,
        mode: Mode::Test,
        views: 1,
        seed: 0,
        batch_size: 64,
    };
    let train = encode_split(
        &clip,
        &ds,
        &req(SplitKind::Train, Some(partition.lt_train.clone())),
    )?;
    let test = encode_split(&clip, &ds, &req(SplitKind::Test, None))?;
    let dev = Device::Cpu;
    let u32s = |v: &[usize]| Tensor::from_vec(v.iter().map(|&x| x as u32).collect::<Vec<_>>(), v.len(), &dev);
    let labels = |v: &[u32]| Tensor::from_vec(v.to_vec(), v.len(), &dev);
    let tensors: HashMap<String, Tensor> = HashMap::from([
        ("train_rows".to_string(), u32s(&partition.lt_train)?),
        ("train_features".to_string(), train),
        ("test_features".to_string(), test),
        ("train_labels".to_string(), labels(&ds.train.labels)?),
        ("test_labels".to_string(), labels(&ds.test.labels)?),
    ]);
    let out = fixtures.join("reference-run-prompt/features.safetensors");
    candle_core::safetensors::save(&tensors, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}

//! CPU vs CUDA agreement of the tiny fixture CLIP (tests/fixtures/tiny-clip/hf): image and
//! text features of the reference inputs (tests/fixtures/zeroshot_expected.safetensors)
//! computed on the GPU must match the CPU within 1e-4 in f32, and half precision on the
//! GPU must stay close to f32 on the CPU; and one FedPuReL round per PEFT kind on the GPU
//! must agree with the same round on the CPU (`tests/common/round_agreement.rs`: losses,
//! TKL, KL and gradient statistics within 1e-3 relative, accuracies within one test image
//! of a class).
//!
//! Only built with `--features cuda`; run with `cargo test --release --features cuda
//! --test gpu_agreement` (tools/gpu-check.sh does). Without a usable GPU every test prints
//! `SKIP` and passes. Note: a `cuda` build links libcuda.so.1 (candle builds cudarc with
//! `dynamic-linking`), so on a machine without the NVIDIA driver the test binary cannot
//! even start; the skip covers a driver without a usable device.
#![cfg(feature = "cuda")]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

mod common;
use fedpurel::clip::model::l2_normalize;
use fedpurel::clip::{Clip, LoadOptions};

/// The repository root: `CARGO_MANIFEST_DIR` at run time (cargo sets it; gpu-check.sh sets
/// it for an executable built on another machine), else where it was built.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// CUDA device 0, or None (with a printed reason) when there is none.
fn cuda_or_skip(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("SKIP {test}: no usable CUDA device ({e})");
            None
        }
    }
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        root().join("tests/fixtures/zeroshot_expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// Token rows and their EOT positions from the reference file.
fn tokens(exp: &HashMap<String, Tensor>) -> (Vec<Vec<u32>>, Vec<usize>) {
    let ids: Vec<Vec<i64>> = exp["token_ids"].to_vec2().unwrap();
    let ids: Vec<Vec<u32>> = ids
        .into_iter()
        .map(|r| r.into_iter().map(|t| t as u32).collect())
        .collect();
    let eot = ids
        .iter()
        .map(|r| r.iter().position(|&t| t == 49407).unwrap())
        .collect();
    (ids, eot)
}

fn load(device: &Device, dtype: DType) -> Clip {
    Clip::load(
        &root().join("tests/fixtures/tiny-clip/hf"),
        &LoadOptions {
            device: device.clone(),
            dtype,
        },
    )
    .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Image features, text features and logits of the reference inputs on `clip`'s device.
fn features(clip: &Clip, exp: &HashMap<String, Tensor>) -> (Tensor, Tensor, Tensor) {
    let (ids, eot) = tokens(exp);
    let img = clip.encode_images(&exp["pixel_values"]).unwrap();
    let txt = clip.encode_token_ids(&ids, &eot).unwrap();
    assert!(
        img.device().same_device(clip.device()),
        "image features left the model's device"
    );
    let img = img.to_dtype(DType::F32).unwrap();
    let txt = txt.to_dtype(DType::F32).unwrap();
    let logits = (l2_normalize(&img)
        .unwrap()
        .matmul(&l2_normalize(&txt).unwrap().t().unwrap())
        .unwrap()
        * clip.logit_scale_exp())
    .unwrap();
    (img, txt, logits)
}

#[test]
fn gpu_agreement_f32_features_match_cpu() {
    let Some(gpu) = cuda_or_skip("gpu_agreement_f32_features_match_cpu") else {
        return;
    };
    let exp = reference();
    let (ci, ct, cl) = features(&load(&Device::Cpu, DType::F32), &exp);
    let (gi, gt, gl) = features(&load(&gpu, DType::F32), &exp);
    assert!(gi.device().is_cuda(), "GPU features were not computed on the GPU");
    let (di, dt, dl) = (
        max_abs_diff(&ci, &gi),
        max_abs_diff(&ct, &gt),
        max_abs_diff(&cl, &gl),
    );
    println!("f32 CPU vs CUDA: max abs diff image {di:e}, text {dt:e}, logits {dl:e}");
    assert!(
        di < 1e-4 && dt < 1e-4,
        "image {di:e}, text {dt:e} (tolerance 1e-4)"
    );
    // Logits are the cosine similarities times exp(logit_scale) (~14 for the fixture).
    assert!(dl < 1e-3, "logits {dl:e} (tolerance 1e-3)");
    // And both agree with the reference computed by the authors' code.
    let (ri, rt) = (
        max_abs_diff(&gi, &exp["image_features"]),
        max_abs_diff(&gt, &exp["text_features"]),
    );
    println!("f32 CUDA vs reference: image {ri:e}, text {rt:e}");
    assert!(
        ri < 1e-4 && rt < 1e-4,
        "CUDA vs reference: image {ri:e}, text {rt:e}"
    );
}

#[test]
fn gpu_agreement_half_precision_stays_close_to_cpu_f32() {
    let Some(gpu) = cuda_or_skip("gpu_agreement_half_precision_stays_close_to_cpu_f32") else {
        return;
    };
    let exp = reference();
    let (ci, ct, _) = features(&load(&Device::Cpu, DType::F32), &exp);
    for (dtype, tol) in [(DType::F16, 2e-2f32), (DType::BF16, 8e-2)] {
        let (gi, gt, _) = features(&load(&gpu, dtype), &exp);
        let rel = |a: &Tensor, b: &Tensor| max_abs_diff(a, b) / max_abs_diff(b, &b.zeros_like().unwrap());
        let (ri, rt) = (rel(&gi, &ci), rel(&gt, &ct));
        println!("{dtype:?} CUDA vs f32 CPU: relative error image {ri:e}, text {rt:e}");
        assert!(
            ri < tol && rt < tol,
            "{dtype:?}: image {ri:e}, text {rt:e} (tolerance {tol:e})"
        );
    }
}

/// One FedPuReL round (round 0: every client trains both stages, then GM and PM
/// evaluation) per PEFT kind, by the `fedpurel` executable on the GPU and on the CPU.
/// The executable: `FEDPUREL_BIN` (tools/gpu-check.sh sets it), else the one cargo built.
#[test]
fn gpu_agreement_one_fedpurel_round_per_peft_kind() {
    use common::round_agreement::{disagreements, one_round};
    if cuda_or_skip("gpu_agreement_one_fedpurel_round_per_peft_kind").is_none() {
        return;
    }
    let bin = std::env::var_os("FEDPUREL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fedpurel")));
    let tmp = std::env::temp_dir().join(format!("fedpurel-gpu-agreement-{}", std::process::id()));
    let mut failed = Vec::new();
    for peft in ["prompt", "lora", "adapter"] {
        let cpu = one_round(&bin, &tmp.join(format!("{peft}-cpu")), peft, "cpu");
        let gpu = one_round(&bin, &tmp.join(format!("{peft}-cuda")), peft, "cuda");
        let d = disagreements(&cpu, &gpu);
        println!(
            "{peft}: CPU vs CUDA round 0: stage-1 loss {} vs {}, GM TKL {} vs {}, GM All {} vs {}; {} fields beyond tolerance",
            cpu["stage1"]["loss"], gpu["stage1"]["loss"], cpu["gm"]["tkl"], gpu["gm"]["tkl"],
            cpu["gm"]["accuracy"]["all"], gpu["gm"]["accuracy"]["all"], d.len()
        );
        failed.extend(d.into_iter().map(|x| format!("{peft} {x}")));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(failed.is_empty(), "CPU vs CUDA: {failed:#?}");
}

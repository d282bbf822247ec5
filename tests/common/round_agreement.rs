//! One FedPuReL round of the tiny fixture CLIP on a given device, and the check that two
//! such rounds agree: what `tests/gpu_agreement.rs` asks of the GPU against the CPU.
#![allow(dead_code)] // each test file uses its part

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Relative tolerance of losses, TKL, KL and gradient statistics.
pub const REL_TOL: f64 = 1e-3;
/// Tolerance of accuracies, in percentage points: one test image of a class (20 per class).
pub const ACCURACY_TOL_PP: f64 = 5.0;

/// The repository root (see `gpu_agreement.rs` for an executable built elsewhere).
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Round 0 of FedPuReL with `peft` on `device` (6 synthetic classes, 3 clients, the tiny
/// fixture CLIP), run by the `fedpurel` executable `bin` into `out`: its metrics record
/// without timings.
pub fn one_round(bin: &Path, out: &Path, peft: &str, device: &str) -> Value {
    let out_s = out.display().to_string();
    let cache = out.with_extension("cache").display().to_string();
    let args = [
        "run",
        "--dataset",
        "synthetic",
        "--synthetic-classes",
        "6",
        "--synthetic-train-per-class",
        "16",
        "--synthetic-test-per-class",
        "20",
        "--imb-factor",
        "8",
        "--clients",
        "3",
        "--model",
        "tests/fixtures/tiny-clip/hf",
        "--rounds",
        "1",
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--algorithm",
        "fedpurel",
        "--peft",
        peft,
        "--device",
        device,
        "--out",
        &out_s,
        "--cache-dir",
        &cache,
    ];
    let run = Command::new(bin)
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(
        run.status.success(),
        "{peft} on {device}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let line = text.lines().next().expect("one round recorded");
    fedpurel::fed::record::without_timings(serde_json::from_str(line).unwrap())
}

/// Where record `b` departs from record `a`: every field present in both, numbers within
/// [`REL_TOL`] (accuracies within [`ACCURACY_TOL_PP`]), everything else equal. Each entry
/// names the field and both values; empty when they agree.
pub fn disagreements(a: &Value, b: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", false, a, b, &mut out);
    out
}

fn is_accuracy(key: &str) -> bool {
    matches!(
        key,
        "accuracy" | "balancedness" | "per_class" | "train_accuracy" | "weighted_all"
    )
}

fn walk(path: &str, accuracy: bool, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    Some(vb) => walk(&p, accuracy || is_accuracy(k), va, vb, out),
                    None => out.push(format!("{p}: missing")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                walk(&format!("{path}[{i}]"), accuracy, va, vb, out);
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let tol = if accuracy {
                ACCURACY_TOL_PP
            } else {
                REL_TOL * x.abs().max(y.abs()).max(1.0)
            };
            if (x - y).abs() > tol {
                out.push(format!("{path}: {x} vs {y} (tolerance {tol:e})"));
            }
        }
        (x, y) if x == y => {}
        (x, y) => out.push(format!("{path}: {x} vs {y}")),
    }
}

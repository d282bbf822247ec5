//! The README's main command in CI: `fedpurel demo --quick` on the shipped demo CLIP
//! (`assets/demo-clip`). Asserts only what holds for any correct implementation — the
//! shipped model's zero-shot accuracy on its task is well above chance, every run
//! finishes, every metric is in range, the table and the plots are written — never
//! which algorithm wins.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The demo's algorithms, in table order.
const ALGORITHMS: [&str; 4] = ["zeroshot", "promptfl", "promptfolio", "fedpurel"];
/// Rounds of `demo-quick`.
const QUICK_ROUNDS: usize = 6;
/// Chance accuracy of the world's 60 classes, %.
const CHANCE: f64 = 100.0 / 60.0;
/// The least zero-shot accuracy the shipped model must reach on the quick demo's test
/// set, as a multiple of chance (see the model card for what it measures).
const MIN_ZERO_SHOT_OVER_CHANCE: f64 = 10.0;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fedpurel(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fedpurel"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every number under `v` (recursively), with its path.
fn numbers(v: &serde_json::Value, path: &str, out: &mut Vec<(String, f64)>) {
    match v {
        serde_json::Value::Number(n) => out.push((path.to_string(), n.as_f64().unwrap())),
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                numbers(x, &format!("{path}.{k}"), out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                numbers(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn quick_demo_on_the_shipped_model() {
    let model = root().join("assets/demo-clip");
    assert!(
        model.join("model.safetensors").is_file(),
        "the demo CLIP is missing from {}",
        model.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = (tmp.path().join("demo"), tmp.path().join("cache"));
    let args = [
        "demo",
        "--quick",
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = fedpurel(&args);
    assert!(ok, "fedpurel demo --quick failed:\n{stderr}");
    println!("{stdout}");

    // Every run finished, and every reported metric is a percentage (TKL: finite, ≥ 0).
    for a in ALGORITHMS {
        assert!(stdout.contains(&format!("| {a} | 1 |")), "{a} missing:\n{stdout}");
        let summary = json(&out.join(a).join("seed-1/summary.json"));
        let rounds = if a == "zeroshot" { 1 } else { QUICK_ROUNDS };
        assert_eq!(summary["rounds_completed"], rounds, "{a}");
        for part in ["gm", "pm", "zeroshot"] {
            let mut xs = Vec::new();
            numbers(&summary[part], part, &mut xs);
            assert!(xs.len() >= 6, "{a}: {part} has {} numbers", xs.len());
            for (name, x) in xs {
                if name.ends_with(".tkl") {
                    assert!(x.is_finite() && x >= 0.0, "{a}: {name} = {x}");
                } else {
                    assert!((0.0..=100.0).contains(&x), "{a}: {name} = {x}");
                }
            }
        }
    }

    // The shipped model knows its task: zero-shot GM accuracy well above chance.
    let zs = json(&out.join("zeroshot/seed-1/summary.json"))["gm"]["all"]
        .as_f64()
        .unwrap();
    assert!(
        zs >= MIN_ZERO_SHOT_OVER_CHANCE * CHANCE,
        "zero-shot accuracy of the shipped model {zs:.2} % is not well above chance ({CHANCE:.2} %)"
    );
    assert!(
        stdout.contains(&format!("{zs:.2} % (chance: {CHANCE:.2} %)")),
        "{stdout}"
    );

    // The table and the plots.
    let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + ALGORITHMS.len(), "{csv}");
    assert!(out.join("compare.md").is_file());
    for name in [
        "per-class-accuracy.png",
        "rounds.png",
        "partition.png",
        "world-samples.png",
    ] {
        let path = out.join("plots").join(name);
        assert!(stdout.contains(&path.display().to_string()), "{name} not listed");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
        let img = image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            img.width() >= 200 && img.height() >= 50,
            "{name}: {}×{}",
            img.width(),
            img.height()
        );
    }
}

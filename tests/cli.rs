//! End-to-end checks of the `fedpurel` binary on the bundled fixtures (few and small).

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// `zeroshot --json` on the six fixture images reproduces the reference logits (CLIP
/// preprocessing from the image files, both checkpoint layouts).
#[test]
fn zeroshot_json_matches_reference_logits() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/zeroshot_expected.json")).unwrap(),
    )
    .unwrap();
    let tensors = candle_core::safetensors::load(
        root().join("tests/fixtures/zeroshot_expected.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let ref_logits: Vec<Vec<f32>> = tensors["logits"].to_vec2().unwrap();
    let images: Vec<String> = expected["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("tests/fixtures/images/{}", v.as_str().unwrap()))
        .collect();
    for layout in ["hf", "openai"] {
        let model = format!("tests/fixtures/tiny-clip/{layout}");
        let mut args = vec![
            "zeroshot",
            "--model",
            &model,
            "--classes",
            "tests/fixtures/cifar100_classes.txt",
            "--json",
            "--top-k",
            "3",
            "--images",
        ];
        args.extend(images.iter().map(String::as_str));
        let (ok, stdout, stderr) = fedpurel(&args);
        assert!(ok, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["classes"].as_array().unwrap().len(), 100);
        let imgs = v["images"].as_array().unwrap();
        assert_eq!(imgs.len(), 6);
        for (i, img) in imgs.iter().enumerate() {
            assert!(img["path"]
                .as_str()
                .unwrap()
                .ends_with(expected["images"][i].as_str().unwrap()));
            let logits: Vec<f32> = img["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let diff = logits
                .iter()
                .zip(&ref_logits[i])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-4, "{layout} image {i}: logits differ by {diff:e}");
            let top: Vec<usize> = img["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(top.len(), 3);
            assert!(logits[top[0]] >= logits[top[1]] && logits[top[1]] >= logits[top[2]]);
            assert!(logits.iter().all(|&l| l <= logits[top[0]]));
        }
    }
}

#[test]
fn model_info_reports_both_layouts() {
    for (layout, name) in [("hf", "huggingface"), ("openai", "openai")] {
        let model = format!("tests/fixtures/tiny-clip/{layout}");
        let (ok, stdout, stderr) = fedpurel(&["model", "info", "--model", &model, "--json"]);
        assert!(ok, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["layout"], name);
        assert_eq!(v["config"]["vision"]["width"], 128);
        assert_eq!(v["config"]["text"]["layers"], 2);
        assert_eq!(v["parameters"], 4280641);
    }
}

#[test]
fn bad_inputs_fail_with_a_message_naming_them() {
    let (ok, _, stderr) = fedpurel(&["model", "info", "--model", "no/such/dir"]);
    assert!(!ok && stderr.contains("no/such/dir"), "{stderr}");
    let (ok, _, stderr) = fedpurel(&[
        "zeroshot",
        "--model",
        "tests/fixtures/tiny-clip/hf",
        "--classes",
        "tests/fixtures/cifar100_classes.txt",
        "--images",
        "tests/fixtures/images/missing.png",
    ]);
    assert!(!ok && stderr.contains("missing.png"), "{stderr}");
    let (ok, _, stderr) = fedpurel(&[
        "zeroshot",
        "--model",
        "tests/fixtures/tiny-clip/hf",
        "--classes",
        "tests/fixtures/cifar100_classes.txt",
        "--template",
        "no placeholder",
        "--images",
        "tests/fixtures/images",
    ]);
    assert!(!ok && stderr.contains("placeholder"), "{stderr}");
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("not-an-image.png");
    std::fs::write(&bad, b"definitely not a png").unwrap();
    let (ok, _, stderr) = fedpurel(&[
        "zeroshot",
        "--model",
        "tests/fixtures/tiny-clip/hf",
        "--classes",
        "tests/fixtures/cifar100_classes.txt",
        "--images",
        bad.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("not-an-image.png"), "{stderr}");
    assert!(!Path::new("tests/fixtures/images/missing.png").exists());
}

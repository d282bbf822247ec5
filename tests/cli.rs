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

/// A freshly initialized small CLIP written by `ClipWeights::save_hf` is a checkpoint
/// `model info` reads, with the architecture taken from its config.json.
#[test]
fn model_info_reads_a_saved_pretraining_checkpoint() {
    use fedpurel::clip::config::{ClipConfig, TextConfig, VisionConfig};
    let config = ClipConfig {
        text: TextConfig {
            vocab_size: 500,
            width: 64,
            layers: 2,
            heads: 2,
            mlp_width: 256,
            context_length: 24,
        },
        vision: VisionConfig {
            image_size: 32,
            patch_size: 4,
            width: 96,
            layers: 2,
            heads: 3,
            mlp_width: 384,
        },
        embed_dim: 64,
        layer_norm_eps: 1e-5,
    };
    let weights = fedpurel::clip::init::init_weights(&config, 11).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = fedpurel::clip::weights::SaveOptions {
        tokenizer: Some(root().join("tests/fixtures/tiny-clip/hf/tokenizer.json")),
        ..Default::default()
    };
    weights.save_hf(dir.path(), &opts).unwrap();
    let model = dir.path().to_str().unwrap();
    let (ok, stdout, stderr) = fedpurel(&["model", "info", "--model", model, "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["layout"], "huggingface");
    assert!(
        v["config_source"].as_str().unwrap().ends_with("config.json"),
        "{v}"
    );
    assert_eq!(v["config"], serde_json::to_value(&config).unwrap());
    assert_eq!(v["parameters"], weights.numel());
    assert!(dir.path().join("tokenizer.json").is_file());
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

fn run_args<'a>(out: &'a str, cache: &'a str, peft: &'a str, rounds: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--dataset",
        "synthetic",
        "--synthetic-classes",
        "10",
        "--synthetic-train-per-class",
        "30",
        "--synthetic-test-per-class",
        "6",
        "--imb-factor",
        "10",
        "--clients",
        "4",
        "--model",
        "tests/fixtures/tiny-clip/hf",
        "--peft",
        peft,
        "--rounds",
        rounds,
        "--batch-size",
        "8",
        "--out",
        out,
        "--cache-dir",
        cache,
    ]
}

/// Numbers of a metrics record, without timings.
fn numbers(v: &serde_json::Value, path: &str, out: &mut Vec<(String, f64)>) {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .filter(|(k, _)| !k.contains("seconds"))
            .for_each(|(k, x)| numbers(x, &format!("{path}.{k}"), out)),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| numbers(x, &format!("{path}[{i}]"), out)),
        serde_json::Value::Number(n) => out.push((path.to_string(), n.as_f64().unwrap())),
        _ => {}
    }
}

/// Every number of a run directory's metrics.jsonl, without timings, by round and path.
fn metrics_numbers(run_dir: &str) -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(Path::new(run_dir).join("metrics.jsonl")).unwrap();
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        numbers(&serde_json::from_str(l).unwrap(), &format!("round{i}"), &mut out);
    }
    out
}

/// A run stopped after round 1 and resumed ends with the numbers of an uninterrupted run,
/// and leaves the documented run directory.
#[test]
fn run_resumes_to_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, cache) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("cache"),
    );
    let (a, b, cache) = (a.to_str().unwrap(), b.to_str().unwrap(), cache.to_str().unwrap());
    let (ok, _, err) = fedpurel(&run_args(a, cache, "prompt", "2"));
    assert!(ok, "{err}");
    let (ok, _, err) = fedpurel(&run_args(b, cache, "prompt", "1"));
    assert!(ok, "{err}");
    let (ok, _, err) = fedpurel(&run_args(b, cache, "prompt", "2"));
    assert!(ok && err.contains("resuming"), "{err}");
    let (ra, rb) = (metrics_numbers(a), metrics_numbers(b));
    assert_eq!(ra.len(), rb.len());
    for ((pa, x), (pb, y)) in ra.iter().zip(&rb) {
        assert_eq!(pa, pb);
        assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{pa}: {x} vs {y}");
    }
    let committed = |d: &str| {
        let latest = std::fs::read_to_string(Path::new(d).join("checkpoints/latest")).unwrap();
        std::fs::read(
            Path::new(d)
                .join("checkpoints")
                .join(latest.trim())
                .join("global.safetensors"),
        )
        .unwrap()
    };
    assert_eq!(committed(a), committed(b));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(a).join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rounds_completed"], 2);
    for model in ["gm", "pm", "zeroshot"] {
        for field in SUMMARY_PERCENTAGES.iter().chain(&["tkl"]) {
            assert!(summary[model].get(field).is_some(), "summary.{model}.{field}");
        }
    }
    for f in [
        "config.toml",
        "summary.md",
        "checkpoints/latest",
        "checkpoints/round-0002/state.json",
    ] {
        assert!(Path::new(a).join(f).is_file(), "{f}");
    }
    // Re-evaluating the checkpoints gives the recorded numbers (GM of round 0, GM and PM of
    // the last round), and GM/PM accuracies are percentages.
    for round in ["0", "1"] {
        let (ok, stdout, err) = fedpurel(&["eval", "--run", a, "--round", round, "--json"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["matches_record"]["gm"], true, "{stdout}");
        let all = v["gm"]["accuracy"]["all"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&all));
        if round == "1" {
            assert_eq!(v["matches_record"]["pm"], true, "{stdout}");
        }
    }
    // Another run's settings in the same directory are refused.
    let mut other = run_args(b, cache, "prompt", "2");
    other.extend(["--lambda", "0.5"]);
    let (ok, _, err) = fedpurel(&other);
    assert!(!ok && err.contains("other settings"), "{err}");
}

#[test]
fn lora_and_adapter_runs_complete() {
    let tmp = tempfile::tempdir().unwrap();
    for peft in ["lora", "adapter"] {
        let out = tmp.path().join(peft);
        let cache = tmp.path().join("cache");
        let (ok, stdout, err) = fedpurel(&run_args(
            out.to_str().unwrap(),
            cache.to_str().unwrap(),
            peft,
            "1",
        ));
        assert!(ok, "{peft}: {err}");
        assert!(stdout.contains("| GM |") && stdout.contains("| PM |"), "{stdout}");
    }
}

/// With one worker thread (a one-core machine, or RAYON_NUM_THREADS=1) a LoRA run, whose
/// batch loader decodes images on the pool the run itself occupies, completes and gives
/// the numbers of a run on every core. A hang is killed after 10 minutes and fails the test.
#[test]
fn one_worker_thread_runs_to_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let (many, one) = (dir("many"), dir("one"));
    let (ok, _, err) = fedpurel(&run_args(&many, &dir("cache-many"), "lora", "1"));
    assert!(ok, "{err}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedpurel"))
        .args(run_args(&one, &dir("cache-one"), "lora", "1"))
        .env("RAYON_NUM_THREADS", "1")
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(600) {
            child.kill().unwrap();
            panic!("a run with RAYON_NUM_THREADS=1 did not finish in 10 minutes (deadlock?)");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "the one-thread run failed: {status}");
    assert_eq!(metrics_numbers(&many), metrics_numbers(&one));
}

fn compare_args<'a>(
    out: &'a str,
    cache: &'a str,
    peft: &'a str,
    algorithms: &'a str,
    seeds: &'a str,
) -> Vec<&'a str> {
    let mut a = run_args(out, cache, peft, "2");
    a[0] = "compare";
    a.extend(["--algorithms", algorithms, "--seeds", seeds]);
    a
}

/// The percentages of each model in `summary.json`.
const SUMMARY_PERCENTAGES: [&str; 7] = [
    "all",
    "many",
    "medium",
    "few",
    "worst_decile",
    "worst_class",
    "best_all",
];

/// Every accuracy-like number of a summary lies in [0, 100].
fn summary_in_range(path: &Path) {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for model in ["gm", "pm", "zeroshot"] {
        for key in SUMMARY_PERCENTAGES {
            if let Some(x) = v[model][key].as_f64() {
                assert!(
                    (0.0..=100.0).contains(&x),
                    "{}: {model}.{key} = {x}",
                    path.display()
                );
            }
        }
        assert!(v[model]["tkl"].as_f64().unwrap() >= 0.0);
    }
}

/// Every algorithm × PEFT combination that exists runs end to end through `compare`
/// (two seeds for prompts: mean ± std), leaves in-range summaries, and resumes finished
/// cells; combinations that do not exist, bad seed lists and grids whose cells saw
/// different splits are refused with messages that say why.
#[test]
fn every_algorithm_runs_and_compare_tables_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cache = cache.to_str().unwrap();
    let common = "zeroshot,fedpurel,fedpurel-kl,fedpurel-nopurify,fedpurel-fusion,promptfl,promptfl+la,promptfl+la-posthoc,promptfl+fedgrab";
    let prompt_only = format!("{common},promptfolio,promptfolio+fedgrab");
    for (peft, algorithms, seeds) in [
        ("prompt", prompt_only.as_str(), "1,2"),
        ("lora", common, "1"),
        ("adapter", common, "1"),
    ] {
        let out = tmp.path().join(peft);
        let out = out.to_str().unwrap();
        let (ok, stdout, err) = fedpurel(&compare_args(out, cache, peft, algorithms, seeds));
        assert!(ok, "{peft}: {err}");
        let table = std::fs::read_to_string(Path::new(out).join("compare.md")).unwrap();
        for a in algorithms.split(',') {
            assert!(
                table.contains(&format!("| {a} | {seeds} |")),
                "{peft}/{a}:\n{table}"
            );
            for s in seeds.split(',') {
                summary_in_range(
                    &Path::new(out)
                        .join(a)
                        .join(format!("seed-{s}"))
                        .join("summary.json"),
                );
            }
        }
        if seeds.contains(',') {
            assert!(stdout.contains(" ± "), "{stdout}");
            assert!(Path::new(out).join("compare.csv").is_file());
        }
    }
    // Finished cells are not re-run.
    let out = tmp.path().join("prompt");
    let (ok, _, err) = fedpurel(&compare_args(
        out.to_str().unwrap(),
        cache,
        "prompt",
        "zeroshot,fedpurel",
        "1,2",
    ));
    assert!(ok && err.matches("finished earlier").count() == 4, "{err}");
    // A cell whose split differs from the others' is refused.
    let cell = out.join("fedpurel/seed-1/summary.json");
    let text = std::fs::read_to_string(&cell).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let split = v["run"]["split"].as_str().unwrap().to_string();
    std::fs::write(&cell, text.replace(&split, "0000000000000000")).unwrap();
    let (ok, _, err) = fedpurel(&compare_args(
        out.to_str().unwrap(),
        cache,
        "prompt",
        "zeroshot,fedpurel",
        "1",
    ));
    assert!(!ok && err.contains("disagree on data or split"), "{err}");
    // Combinations and lists that do not exist.
    let bad = tmp.path().join("bad");
    let bad = bad.to_str().unwrap();
    let (ok, _, err) = fedpurel(&compare_args(bad, cache, "lora", "promptfolio", "1"));
    assert!(!ok && err.contains("prompt learning only"), "{err}");
    let (ok, _, err) = fedpurel(&compare_args(bad, cache, "prompt", "fedpurel", "1,two"));
    assert!(!ok && err.contains("`two` is not a seed"), "{err}");
    let mut run = run_args(bad, cache, "adapter", "1");
    run.extend(["--algorithm", "promptfolio"]);
    let (ok, _, err) = fedpurel(&run);
    assert!(!ok && err.contains("prompt learning only"), "{err}");
}

/// `demo` names a missing model directory before doing any work, and `compare --quick`
/// refuses presets without a reduced size.
#[test]
fn demo_and_compare_quick_refuse_bad_input_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let (ok, _, stderr) = fedpurel(&[
        "demo",
        "--quick",
        "--model",
        "no/such/demo-clip",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("no/such/demo-clip") && stderr.contains("--model"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing is written before the model is found");
    let (ok, _, stderr) = fedpurel(&[
        "compare",
        "--preset",
        "cifar100-lt-prompt",
        "--quick",
        "--model",
        "tests/fixtures/tiny-clip/hf",
    ]);
    assert!(
        !ok && stderr.contains("--quick") && stderr.contains("cifar100-lt-prompt"),
        "{stderr}"
    );
}

/// `compare --preset demo --quick` runs the world task at its reduced size (shrunk further
/// here) and shows mean ± std over two seeds.
#[test]
fn compare_on_the_demo_preset_shows_spread_over_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = (tmp.path().join("out"), tmp.path().join("cache"));
    let (ok, stdout, err) = fedpurel(&[
        "compare",
        "--preset",
        "demo",
        "--quick",
        "--model",
        "tests/fixtures/tiny-clip/hf",
        "--rounds",
        "1",
        "--clients",
        "2",
        "--world-train-per-class",
        "30",
        "--world-test-per-class",
        "2",
        "--imb-factor",
        "10",
        "--seeds",
        "1,2",
        "--algorithms",
        "zeroshot,promptfl",
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("Comparison on world") && stdout.contains(" ± "),
        "{stdout}"
    );
    assert!(stdout.contains("| promptfl | 1,2 |"), "{stdout}");
    let cfg = std::fs::read_to_string(out.join("promptfl/seed-2/config.toml")).unwrap();
    assert!(
        cfg.contains("dataset = \"world\"") && cfg.contains("world_train_per_class = 30"),
        "{cfg}"
    );
    for s in ["1", "2"] {
        summary_in_range(&out.join(format!("promptfl/seed-{s}/summary.json")));
    }
}

/// `--views V` with an augmenting transform: V augmented views of every training image are
/// encoded once into the feature cache (V × N rows), each step picks one view per sample
/// from a keyed stream, so two runs agree to the bit; live augmentation (`--views 0`)
/// needs no training-feature cache at all.
#[test]
fn augmented_views_are_cached_and_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cache = cache.to_str().unwrap();
    let run = |out: &str, views: &str| {
        let o = tmp.path().join(out);
        let mut a = run_args(o.to_str().unwrap(), cache, "prompt", "2");
        a.extend(["--transform", "clip", "--views", views]);
        let (ok, _, err) = fedpurel(&a);
        assert!(ok, "{err}");
        let text = std::fs::read_to_string(o.join("metrics.jsonl")).unwrap();
        let mut out = Vec::new();
        for (i, l) in text.lines().enumerate() {
            numbers(&serde_json::from_str(l).unwrap(), &format!("round{i}"), &mut out);
        }
        out
    };
    let (a, b) = (run("a", "3"), run("b", "3"));
    assert_eq!(a, b, "the same seed and views gave other numbers");
    let rows: Vec<usize> = std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let t = candle_core::safetensors::load(e.path(), &candle_core::Device::Cpu).ok()?;
            t.values().next().map(|x| x.dim(0).unwrap())
        })
        .collect();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("a/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rounds_completed"], 2);
    let config = std::fs::read_to_string(tmp.path().join("a/config.toml")).unwrap();
    assert!(config.contains("views = 3"), "{config}");
    // One test-split file (60 rows) and one train file holding 3 views of each image.
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.contains(&60), "{rows:?}");
    let train = rows.iter().find(|&&r| r != 60).unwrap();
    assert_eq!(train % 3, 0, "{rows:?}");
    let live = run("live", "0");
    assert_ne!(live, a, "live augmentation gave the cached views' numbers");
}

/// Rounds of `demo-quick`.
const QUICK_ROUNDS: usize = 6;
/// Chance accuracy of the world's 60 classes, %.
const CHANCE: f64 = 100.0 / 60.0;
/// The least zero-shot accuracy the shipped model must reach on the quick demo's test
/// set, as a multiple of chance (see the model card for what it measures).
const MIN_ZERO_SHOT_OVER_CHANCE: f64 = 10.0;

/// The parsed JSON file at `path` (panics naming it).
fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The README's main command in CI: `fedpurel demo --quick` on the shipped demo CLIP
/// (`assets/demo-clip`). Asserts only what holds for any correct implementation — the
/// shipped model's zero-shot accuracy on its task is well above chance, every run
/// finishes, every metric is in range, the table and the plots are written — never
/// which algorithm wins.
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

    // evidence.json names the kinds and rows that ran.
    let evidence = json(&out.join("evidence.json"));
    let kinds = evidence["kinds"].as_array().unwrap();
    assert!(!kinds.is_empty());
    let kind = kinds[0]["peft"].as_str().unwrap().to_string();
    let rows: Vec<String> = kinds[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap().to_string())
        .collect();
    for want in ["zeroshot", "promptfl", "promptfl+fedgrab", "fedpurel"] {
        assert!(rows.iter().any(|r| r == want), "{want} not in {rows:?}");
    }
    assert!(!kinds[0]["verdict"].as_array().unwrap().is_empty());
    // Every run finished, and every reported metric is a percentage (TKL: finite, ≥ 0).
    for a in &rows {
        assert!(stdout.contains(&format!("| {a} | 1 |")), "{a} missing:\n{stdout}");
        let summary = json(&out.join(&kind).join(a).join("seed-1/summary.json"));
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
    let zs = json(&out.join(&kind).join("zeroshot/seed-1/summary.json"))["gm"]["all"]
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
    let csv = std::fs::read_to_string(out.join(&kind).join("compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + rows.len(), "{csv}");
    assert!(out.join("compare.md").is_file());
    for name in [
        format!("{kind}-per-class-accuracy.png"),
        format!("{kind}-rounds.png"),
        format!("{kind}-tkl-vs-balancedness.png"),
        format!("{kind}-gradient-angles.png"),
        "partition.png".to_string(),
        "world-samples.png".to_string(),
    ] {
        let path = out.join("plots").join(&name);
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

/// A run directory written by fedpurel 0.1 before the `setup`/registry refactor
/// (`tests/fixtures/run-dir-0.1`: config.toml with the old `[baselines]` layout, metrics,
/// checkpoints) still loads: `eval` re-evaluates its checkpoint and gets the recorded GM
/// and PM numbers: the same accuracies, and TKL to float rounding (the recording's
/// machine blocked its matmuls for another cache geometry, see `fedpurel::machine`, so
/// `matches_record`, which asks for 1e-9, holds only on that machine kind).
#[test]
fn run_directories_of_version_0_1_keep_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    copy_dir(&root().join("tests/fixtures/run-dir-0.1"), &dir);
    let (ok, stdout, err) = fedpurel(&["eval", "--run", dir.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    for model in ["gm", "pm"] {
        assert_eq!(v[model]["accuracy"], last[model]["accuracy"], "{model}: {stdout}");
        let (now, rec) = (
            v[model]["tkl"].as_f64().unwrap(),
            last[model]["tkl"].as_f64().unwrap(),
        );
        assert!(
            (now - rec).abs() <= 1e-4 * rec.abs(),
            "{model} TKL {now} vs recorded {rec}"
        );
        assert!(v["matches_record"][model].is_boolean(), "{stdout}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The demo CLIP is compiled into the binary: `--preset demo-quick` runs from a
/// directory that has no `assets/demo-clip`, and gets the shipped model's zero-shot
/// numbers.
#[test]
fn the_demo_model_is_embedded_in_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |cwd: &Path, out: &str| {
        let out = tmp.path().join(out);
        let o = Command::new(env!("CARGO_BIN_EXE_fedpurel"))
            .args([
                "run",
                "--preset",
                "demo-quick",
                "--algorithm",
                "zeroshot",
                "--rounds",
                "1",
            ])
            .args(["--out", out.to_str().unwrap()])
            .args(["--cache-dir", tmp.path().join("cache").to_str().unwrap()])
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        json(&out.join("summary.json"))["gm"]["all"].as_f64().unwrap()
    };
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    assert_eq!(run(&elsewhere, "a"), run(&root(), "b"));
}

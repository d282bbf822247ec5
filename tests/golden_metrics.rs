//! Behaviour pinned across refactors: every algorithm × PEFT kind, 3 rounds of a small
//! synthetic federation on the tiny fixture CLIP, must write the very `metrics.jsonl`
//! recorded in `tests/fixtures/golden-metrics/` (every field except timings, compared
//! as exact JSON text: the same f64 bits, the same clients, the same per-class
//! accuracies). It runs the installed binary, so it holds whatever the code inside looks
//! like.
//!
//! The bits are those of the machine kind that recorded them: the matmul engine picks
//! its microkernel by instruction set and blocks its inner products by the CPU's cache
//! geometry, so another kind rounds differently (`fedpurel::machine`). Recordings are therefore kept per machine kind, one
//! folder each, `kernels-<id>/` for a machine whose
//! [`fedpurel::machine::kernel_signature`] is in its `KERNELS` file. The check:
//! 1. a folder named for this machine's signature: its bits, exactly;
//! 2. else what rounding cannot change (records, fields, clients, step counts) against
//!    any recording, saying so on stderr.
//!
//! Record this machine kind's folder with
//! `FEDPUREL_BLESS_GOLDEN=1 cargo test --release --test golden_metrics`. After a
//! deliberate change of behaviour, re-record and delete the folders of the kinds you
//! cannot re-record (their machines then check structure until they record), and say
//! why in the commit. The other tests here compare two runs on the same machine, so
//! they hold exactly everywhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use fedpurel::fed::record::without_timings;

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every (algorithm, PEFT kind, extra flags) pinned: each pair the registry accepts
/// (PromptFolio is prompt-only), plus the variants that take other code paths
/// (carried momentum, LoRA on both towers, class-specific contexts).
fn grid() -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    let algorithms = [
        "zeroshot",
        "fedpurel",
        "fedpurel-kl",
        "fedpurel-nopurify",
        "fedpurel-fusion",
        "promptfl",
        "promptfl+la",
        "promptfl+la-posthoc",
        "promptfl+fedgrab",
        "promptfolio",
        "promptfolio+fedgrab",
    ];
    let mut out = Vec::new();
    for peft in ["prompt", "lora", "adapter"] {
        for a in algorithms {
            if peft == "prompt" || !a.starts_with("promptfolio") {
                out.push((a, peft, &[] as &[&str]));
            }
        }
    }
    out.push(("fedpurel", "prompt", &["--carry-momentum"]));
    out.push(("fedpurel", "prompt", &["--class-specific"]));
    out.push(("fedpurel", "lora", &["--lora-encoder", "both"]));
    out
}

fn args(out: &Path, cache: &Path, algorithm: &str, peft: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--dataset",
        "synthetic",
        "--synthetic-classes",
        "6",
        "--synthetic-train-per-class",
        "16",
        "--synthetic-test-per-class",
        "4",
        "--imb-factor",
        "8",
        "--clients",
        "3",
        "--frac",
        "0.5",
        "--model",
        "tests/fixtures/tiny-clip/hf",
        "--rounds",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--algorithm",
        algorithm,
        "--peft",
        peft,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(["--out".into(), out.display().to_string()]);
    a.extend(["--cache-dir".into(), cache.display().to_string()]);
    a
}

/// `metrics.jsonl` without timings, one line per round.
fn pinned_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| without_timings(serde_json::from_str(l).unwrap()).to_string())
        .collect()
}

/// Whether `now` has the records, fields, clients and step counts of `want`, with a
/// number wherever `want` has one (what another machine's rounding cannot change).
fn same_structure(want: &serde_json::Value, now: &serde_json::Value, path: &str) -> Result<(), String> {
    use serde_json::Value;
    match (want, now) {
        (Value::Object(w), Value::Object(n)) => {
            let (wk, nk): (Vec<_>, Vec<_>) = (w.keys().collect(), n.keys().collect());
            if wk != nk {
                return Err(format!("{path}: fields {wk:?} recorded, {nk:?} now"));
            }
            for (k, v) in w {
                let exact = matches!(k.as_str(), "clients" | "round" | "steps");
                if exact && v != &n[k] {
                    return Err(format!("{path}.{k}: {v} recorded, {} now", n[k]));
                }
                same_structure(v, &n[k], &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(n)) if w.len() == n.len() => w
            .iter()
            .zip(n)
            .enumerate()
            .try_for_each(|(i, (a, b))| same_structure(a, b, &format!("{path}[{i}]"))),
        (Value::Number(_), Value::Number(_)) | (Value::Null, Value::Null) => Ok(()),
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{path}: {a} recorded, {b} now")),
    }
}

/// Runs one grid cell into `out` (feature cache `cache`) and returns its pinned lines.
fn run_pinned(out: &Path, cache: &Path, algorithm: &str, peft: &str, extra: &[&str]) -> Vec<String> {
    let run = Command::new(env!("CARGO_BIN_EXE_fedpurel"))
        .args(args(out, cache, algorithm, peft, extra))
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{algorithm} {peft} {extra:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    pinned_lines(&out.join("metrics.jsonl"))
}

/// How this machine's runs are checked against `golden` (see the file's header).
enum Check {
    /// Bit for bit against this folder's recording.
    Exact(PathBuf),
    /// Records, fields, clients and step counts against this folder's recording.
    Structure(PathBuf),
}

fn check_for_this_machine(golden: &Path) -> Check {
    let own = golden.join(fedpurel::machine::kernel_signature_id());
    if own.is_dir() {
        Check::Exact(own)
    } else {
        let any = std::fs::read_dir(golden)
            .ok()
            .and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.is_dir()))
            .expect("no golden recording: record one with FEDPUREL_BLESS_GOLDEN=1");
        Check::Structure(any)
    }
}

#[test]
fn every_algorithm_and_peft_kind_writes_the_recorded_metrics() {
    let bless = std::env::var("FEDPUREL_BLESS_GOLDEN").is_ok_and(|v| v != "0");
    let golden = root().join("tests/fixtures/golden-metrics");
    let kernels = fedpurel::machine::kernel_signature();
    let own = golden.join(fedpurel::machine::kernel_signature_id());
    // Recording needs no earlier recording to compare with.
    let check = if bless {
        Check::Exact(own.clone())
    } else {
        check_for_this_machine(&golden)
    };
    if let (false, Check::Structure(dir)) = (bless, &check) {
        eprintln!(
            "golden_metrics: no recording for this machine's kernels ({kernels}): checking \
             records, fields, clients and step counts against {}, not bits",
            dir.display()
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mut differ = Vec::new();
    for (algorithm, peft, extra) in grid() {
        let variant: String = extra
            .iter()
            .map(|f| format!("-{}", f.trim_start_matches('-')))
            .collect();
        let tag = format!("{}-{peft}{variant}", algorithm.replace('+', "_"));
        let lines = run_pinned(&tmp.path().join(&tag), &cache, algorithm, peft, extra);
        assert_eq!(lines.len(), 3, "{tag}: three rounds");
        if bless {
            std::fs::create_dir_all(&own).unwrap();
            std::fs::write(own.join(format!("{tag}.jsonl")), lines.join("\n") + "\n").unwrap();
            continue;
        }
        let (Check::Exact(dir) | Check::Structure(dir)) = &check;
        let file = dir.join(format!("{tag}.jsonl"));
        let want: Vec<String> = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (record with FEDPUREL_BLESS_GOLDEN=1)", file.display()))
            .lines()
            .map(String::from)
            .collect();
        for round in 0..3 {
            let (w, n) = (want.get(round), lines.get(round));
            let problem = match (w, n, &check) {
                (Some(w), Some(n), Check::Exact(_)) => {
                    (w != n).then(|| format!("recorded {w}\n  now      {n}"))
                }
                (Some(w), Some(n), Check::Structure(_)) => same_structure(
                    &serde_json::from_str(w).unwrap(),
                    &serde_json::from_str(n).unwrap(),
                    "",
                )
                .err(),
                _ => Some("missing record".into()),
            };
            if let Some(p) = problem {
                differ.push(format!("{tag} round {round}:\n  {p}"));
                break;
            }
        }
    }
    if bless {
        std::fs::write(own.join("KERNELS"), kernels + "\n").unwrap();
        return;
    }
    let how = match &check {
        Check::Exact(dir) => format!(
            "bits, against {} (this machine: {kernels}; if it is of another kind than that \
             recording, record its own folder with FEDPUREL_BLESS_GOLDEN=1)",
            dir.display()
        ),
        Check::Structure(dir) => format!("structure, against {}", dir.display()),
    };
    assert!(
        differ.is_empty(),
        "metrics.jsonl changed for {} of {} runs ({how}):\n{}",
        differ.len(),
        grid().len(),
        differ.join("\n")
    );
}

/// `value` without the stage statistics a probe adds.
fn without_angles(v: serde_json::Value) -> serde_json::Value {
    const ANGLES: [&str; 3] = ["angle_mean_deg", "obtuse_fraction", "removed_norm_fraction"];
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .filter(|(k, _)| !ANGLES.contains(&k.as_str()))
                .map(|(k, x)| (k, without_angles(x)))
                .collect(),
        ),
        other => other,
    }
}

/// `--probe-alignment` computes PromptFL's alignment gradient without applying it: the
/// run's numbers are those of the same run without the probe, and every stage-1 record
/// gains the angle.
#[test]
fn probing_the_alignment_gradient_changes_no_number() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    for (algorithm, peft) in [("promptfl", "prompt"), ("promptfl+fedgrab", "lora")] {
        let run = |tag: &str, extra: &[&str]| {
            let out = tmp.path().join(format!("{algorithm}-{peft}-{tag}"));
            run_pinned(&out, &cache, algorithm, peft, extra)
        };
        let probed = run("probed", &["--probe-alignment"]);
        let plain = run("plain", &[]);
        assert_eq!(probed.len(), 3);
        for (round, (p, w)) in probed.iter().zip(&plain).enumerate() {
            let p: serde_json::Value = serde_json::from_str(p).unwrap();
            let angle = p["stage1"]["angle_mean_deg"].as_f64();
            assert!(
                angle.is_some_and(|a| (0.0..=180.0).contains(&a)),
                "{algorithm} {peft} round {round}: angle {angle:?}"
            );
            assert_eq!(
                without_angles(p).to_string(),
                *w,
                "{algorithm} {peft} round {round}: the probe changed a number"
            );
        }
    }
}

/// Vision LoRA runs the image tower from cached stems by default (`fed::stems`); with no
/// memory for them (`--stem-cache-mib 0`) every image goes through the live pixel path,
/// as before the cache. Both write the same numbers, to the bit.
#[test]
fn the_stem_cache_changes_no_number() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    for algorithm in ["fedpurel", "promptfl+fedgrab"] {
        let run = |tag: &str, extra: &[&str]| {
            let out = tmp.path().join(format!("{algorithm}-{tag}"));
            run_pinned(&out, &cache, algorithm, "lora", extra)
        };
        let cached = run("cached", &[]);
        let live = run("live", &["--stem-cache-mib", "0"]);
        assert_eq!(cached.len(), 3);
        assert_eq!(cached, live, "{algorithm}: the stem cache changed a number");
    }
}

/// The GPU check's round agreement (`tests/common/round_agreement.rs`, used by
/// `tests/gpu_agreement.rs` for the GPU against the CPU), checked here on the CPU: a rerun
/// agrees, and a changed loss or an accuracy off by more than one test image is named.
#[test]
fn round_agreement_accepts_a_rerun_and_names_what_moved() {
    use common::round_agreement::{disagreements, one_round, ACCURACY_TOL_PP};
    let tmp = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_fedpurel"));
    let a = one_round(bin, &tmp.path().join("a"), "lora", "cpu");
    let b = one_round(bin, &tmp.path().join("b"), "lora", "cpu");
    assert_eq!(disagreements(&a, &b), Vec::<String>::new());
    let mut moved = b.clone();
    let loss = moved["stage1"]["loss"].as_f64().unwrap();
    moved["stage1"]["loss"] = serde_json::json!(loss * 1.01 + 0.01);
    let all = moved["gm"]["accuracy"]["all"].as_f64().unwrap();
    moved["gm"]["accuracy"]["all"] = serde_json::json!(all + ACCURACY_TOL_PP / 2.0);
    let few = moved["pm"]["accuracy"]["all"].as_f64().unwrap();
    moved["pm"]["accuracy"]["all"] = serde_json::json!(few + 2.0 * ACCURACY_TOL_PP);
    let d = disagreements(&a, &moved);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d[0].starts_with(".stage1.loss:") || d[1].starts_with(".stage1.loss:"),
        "{d:?}"
    );
    assert!(d.iter().any(|x| x.starts_with(".pm.accuracy.all:")), "{d:?}");
}

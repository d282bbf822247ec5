//! Kill-anywhere resume (docs/reliability.md): a run killed with SIGKILL and restarted
//! ends with the same metrics, summary and parameters, bit for bit, as an uninterrupted
//! run. Two kinds of kill:
//! * at named points (`src/faults.rs`): an uninterrupted run lists every point it passes
//!   (setup, each local and personalization step, aggregation, between GM and PM
//!   evaluation, after the metrics, between checkpoint files, after the checkpoint rename
//!   and commit, before every atomic rename, at the end); each chosen point is killed
//!   once and the run resumed;
//! * at pseudo-random moments, several times in a row before the run may finish.
//!
//! `cargo test` tries one occurrence of every point label for two algorithms plus a few
//! random-moment sequences; `FEDPUREL_KILL_SOAK=1` tries every point of the trace and
//! more random sequences (the soak, see docs/reliability.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn args(out: &Path, cache: &Path, algorithm: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--dataset",
        "synthetic",
        "--synthetic-classes",
        "10",
        "--synthetic-train-per-class",
        "40",
        "--synthetic-test-per-class",
        "6",
        "--imb-factor",
        "10",
        "--clients",
        "4",
        "--model",
        "tests/fixtures/tiny-clip/hf",
        "--rounds",
        "3",
        "--batch-size",
        "8",
        "--algorithm",
        algorithm,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(["--out".into(), out.display().to_string()]);
    a.extend(["--cache-dir".into(), cache.display().to_string()]);
    a
}

fn command(a: &[String], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fedpurel"));
    c.args(a)
        .current_dir(root())
        .env_remove("FEDPUREL_KILL_AT")
        .env_remove("FEDPUREL_FAULT_TRACE")
        .env_remove("FEDPUREL_FAIL_WRITE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Runs to completion; panics with stderr otherwise.
fn finish(a: &[String]) {
    let out = command(a, &[]).output().unwrap();
    assert!(
        out.status.success(),
        "the resumed run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tiny deterministic generator for choices and delays.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        ((self.next() * n as f64) as usize).min(n - 1)
    }
}

/// Leaves of a JSON value except timings, as (path, text).
fn numbers(v: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .filter(|(k, _)| !k.contains("seconds"))
            .for_each(|(k, x)| numbers(x, &format!("{path}.{k}"), out)),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| numbers(x, &format!("{path}[{i}]"), out)),
        other => out.push((path.to_string(), other.to_string())),
    }
}

fn json_numbers(path: &Path, lines: bool) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    if lines {
        for (i, line) in text.lines().enumerate() {
            numbers(
                &serde_json::from_str(line).unwrap(),
                &format!("line{i}"),
                &mut out,
            );
        }
    } else {
        numbers(&serde_json::from_str(&text).unwrap(), "", &mut out);
    }
    out
}

/// The committed checkpoint folder's files and the per-round globals, by name.
fn checkpoint_files(run: &Path) -> BTreeMap<String, Vec<u8>> {
    let ck = run.join("checkpoints");
    let latest = std::fs::read_to_string(ck.join("latest")).unwrap();
    let mut files = BTreeMap::new();
    for dir in [ck.join(latest.trim()), ck.join("rounds")] {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = format!(
                "{}/{}",
                dir.file_name().unwrap().to_string_lossy(),
                e.file_name().to_string_lossy()
            );
            files.insert(name, std::fs::read(e.path()).unwrap());
        }
    }
    files
}

fn check_equal(reference: &Path, killed: &Path, what: &str) {
    for (f, lines) in [("metrics.jsonl", true), ("summary.json", false)] {
        let (a, b) = (
            json_numbers(&reference.join(f), lines),
            json_numbers(&killed.join(f), lines),
        );
        assert_eq!(a.len(), b.len(), "{what}: {f} has another shape");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "{what}: {f} differs");
        }
    }
    let (a, b) = (checkpoint_files(reference), checkpoint_files(killed));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (name, x) in &a {
        assert!(
            x == &b[name],
            "{what}: checkpoint file {name} is not bit-identical"
        );
    }
    // No temporary file of an interrupted write is left behind.
    for dir in [killed.to_path_buf(), killed.join("checkpoints")] {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(!n.ends_with(".tmp"), "{what}: leftover {n}");
        }
    }
}

/// Kills a run at its `n`-th fault point, then resumes it to the end.
fn kill_at_point(a: &[String], n: usize) {
    let out = command(a, &[("FEDPUREL_KILL_AT", n.to_string())])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the run passed its point {n} without being killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    finish(a);
}

/// Kills a run at pseudo-random moments up to `max_kills` times, then lets it finish;
/// returns the number of kills that landed.
fn kill_at_random(a: &[String], rng: &mut Lcg, max_kills: usize) -> usize {
    let mut kills = 0;
    while kills < max_kills {
        let mut child = command(a, &[])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_secs_f64(0.05 + rng.next() * (0.3 + 0.1 * kills as f64));
        let start = Instant::now();
        let mut done = false;
        while start.elapsed() < delay {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "the run failed on its own after {kills} kills");
                done = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if done {
            child.wait().unwrap();
            return kills;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    finish(a);
    kills
}

/// Every fault point a run passes (`src/faults.rs`).
const LABELS: [&str; 11] = [
    "setup-done",
    "local-step",
    "aggregation",
    "personalization-step",
    "evaluation:gm-done",
    "metrics-written",
    "checkpoint:file-written",
    "checkpoint:folder-renamed",
    "checkpoint:committed",
    "atomic-write:before-rename",
    "training-done",
];

#[test]
fn killed_runs_resume_to_bit_identical_results() {
    let soak = std::env::var("FEDPUREL_KILL_SOAK").is_ok_and(|v| v != "0");
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Lcg(0x5EED);
    let (mut point_kills, mut random_kills, mut labels_seen) = (0, 0, BTreeMap::<String, usize>::new());
    // With the momentum carried from client to client, FedPuReL's rounds overlap
    // (`fed::overlap`): round t + 1's local training runs beside round t's personalization,
    // evaluation and checkpoint, so kills land in both at once.
    let variants: [(&str, &[&str]); 3] = [
        ("fedpurel", &[]),
        ("promptfolio+fedgrab", &[]),
        ("fedpurel", &["--carry-momentum"]),
    ];
    for (algorithm, extra) in variants {
        let tag = format!("{}{}", algorithm.replace('+', "-"), extra.concat());
        // The uninterrupted run, listing its fault points.
        let reference = tmp.path().join(format!("ref-{tag}"));
        let trace = tmp.path().join(format!("trace-{tag}"));
        let a = args(
            &reference,
            &tmp.path().join(format!("cache-ref-{tag}")),
            algorithm,
            extra,
        );
        let out = command(&a, &[("FEDPUREL_FAULT_TRACE", trace.display().to_string())])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let points: Vec<String> = std::fs::read_to_string(&trace)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        // Whole lines only, also when two threads pass points at once (overlapped rounds).
        if let Some(bad) = points.iter().find(|l| !LABELS.contains(&l.as_str())) {
            panic!("{tag}: the trace has the line {bad:?}, not a fault point's label");
        }
        let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, l) in points.iter().enumerate() {
            by_label.entry(l).or_default().push(i + 1);
        }
        for l in by_label.keys() {
            *labels_seen.entry(l.to_string()).or_default() += 1;
        }
        let chosen: Vec<usize> = if soak {
            (1..=points.len()).collect()
        } else {
            by_label.values().map(|ns| ns[rng.below(ns.len())]).collect()
        };
        for &n in &chosen {
            // A fresh run directory and feature cache, so kills also land in cache writes.
            let killed = tmp.path().join(format!("point-{tag}-{n}"));
            let a = args(
                &killed,
                &tmp.path().join(format!("cache-point-{tag}-{n}")),
                algorithm,
                extra,
            );
            kill_at_point(&a, n);
            check_equal(
                &reference,
                &killed,
                &format!("{tag}, killed at point {n} ({})", points[n - 1]),
            );
            let _ = std::fs::remove_dir_all(&killed);
            point_kills += 1;
        }
        for i in 0..if soak { 10 } else { 1 } {
            let killed = tmp.path().join(format!("random-{tag}-{i}"));
            let a = args(
                &killed,
                &tmp.path().join(format!("cache-random-{tag}-{i}")),
                algorithm,
                extra,
            );
            random_kills += kill_at_random(&a, &mut rng, 4);
            check_equal(&reference, &killed, &format!("{tag}, random kills"));
            let _ = std::fs::remove_dir_all(&killed);
        }
    }
    eprintln!(
        "kill points tried: {point_kills} at named points ({} labels: {:?}), {random_kills} at random moments",
        labels_seen.len(),
        labels_seen.keys().collect::<Vec<_>>()
    );
    for label in LABELS {
        assert!(labels_seen.contains_key(label), "no run passed the point {label}");
    }
    assert!(
        random_kills >= 2,
        "too few random kills landed ({random_kills}): the delays need tuning"
    );
}

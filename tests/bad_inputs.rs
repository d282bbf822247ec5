//! The bad-input catalogue (docs/reliability.md), checked end to end: every case runs
//! the `fedpurel` binary with one bad input and asserts the error the user sees. The
//! catalogue in the docs must list every case with the same message, so the table
//! cannot drift from what the tool prints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fedpurel(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fedpurel"));
    c.args(args).current_dir(root());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// A small valid run into `out` (flags later in `extra` override nothing: clap refuses
/// repeats, so cases replace values through `base_without`).
fn run_args(out: &Path, cache: &Path, skip: &[&str], extra: &[&str]) -> Vec<String> {
    let base = [
        ("--dataset", "synthetic"),
        ("--synthetic-classes", "10"),
        ("--synthetic-train-per-class", "30"),
        ("--synthetic-test-per-class", "6"),
        ("--imb-factor", "10"),
        ("--clients", "4"),
        ("--model", "tests/fixtures/tiny-clip/hf"),
        ("--rounds", "2"),
        ("--batch-size", "8"),
    ];
    let mut a = vec!["run".to_string()];
    for (k, v) in base {
        if !skip.contains(&k) {
            a.extend([k.to_string(), v.to_string()]);
        }
    }
    a.extend(strings(extra));
    a.extend(["--out".into(), out.display().to_string()]);
    a.extend(["--cache-dir".into(), cache.display().to_string()]);
    a
}

/// The catalogue rows of docs/reliability.md: (case id, line).
fn catalogue() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("docs/reliability.md")).unwrap();
    // Only the catalogue section: later tables (fuzzing results) use the same row shape.
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Bad-input catalogue"))
        .expect("docs/reliability.md has a `## Bad-input catalogue` section");
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let id = l.strip_prefix("| `")?.split('`').next()?.to_string();
            Some((id, l.to_string()))
        })
        .collect()
}

/// Checks a failed command's stderr against `expected` and the catalogue row of `id`.
fn expect_error(id: &str, out: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{id}: the command succeeded; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{id}: panicked: {stderr}");
    for e in expected {
        assert!(stderr.contains(e), "{id}: stderr lacks `{e}`:\n{stderr}");
    }
    let rows = catalogue();
    let row = rows
        .iter()
        .find(|(i, _)| i == id)
        .unwrap_or_else(|| panic!("docs/reliability.md has no row for `{id}`"));
    for e in expected {
        assert!(row.1.contains(e), "docs/reliability.md row `{id}` lacks `{e}`");
    }
}

#[test]
fn configuration_errors_name_the_setting_and_the_range() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = |n: &str| tmp.path().join(n);
    let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        (
            "unknown-preset",
            strings(&["run", "--preset", "cifar10-prompt", "--model", "m"]),
            vec!["unknown preset `cifar10-prompt`; valid presets: demo, demo-quick, cifar100-lt-prompt"],
        ),
        (
            "frac-out-of-range",
            run_args(&out("a"), &cache, &[], &["--frac", "1.5"]),
            vec!["--frac (train.frac) is 1.5; expected in (0, 1]"],
        ),
        (
            "lambda-out-of-range",
            run_args(&out("a"), &cache, &[], &["--lambda", "2"]),
            vec!["--lambda (train.lambda) is 2; expected in [0, 1]"],
        ),
        (
            "lr-not-positive",
            run_args(&out("a"), &cache, &[], &["--lr", "0"]),
            vec!["--lr (train.stage1.lr, train.stage2.lr) is 0 / 0; expected a finite number > 0"],
        ),
        (
            "rounds-zero",
            run_args(&out("a"), &cache, &["--rounds"], &["--rounds", "0"]),
            vec!["--rounds (train.rounds) is 0; expected at least 1"],
        ),
        (
            "alpha-not-positive",
            run_args(&out("a"), &cache, &[], &["--alpha", "0"]),
            vec!["--alpha must be a finite number > 0, got 0"],
        ),
        (
            "imb-factor-below-one",
            run_args(&out("a"), &cache, &["--imb-factor"], &["--imb-factor", "0.5"]),
            vec!["--imb-factor must be a finite number ≥ 1 (n_max / n_min), got 0.5"],
        ),
        (
            "empty-class-after-cut",
            run_args(&out("a"), &cache, &["--imb-factor"], &["--imb-factor", "100"]),
            vec!["have no training image after the long-tail cut at --imb-factor 100"],
        ),
        (
            "unknown-algorithm",
            run_args(&out("a"), &cache, &[], &["--algorithm", "fedprox"]),
            vec!["unknown algorithm `fedprox`; available: zeroshot, fedpurel"],
        ),
        (
            "algorithm-peft-mismatch",
            run_args(
                &out("a"),
                &cache,
                &[],
                &["--algorithm", "promptfolio", "--peft", "lora"],
            ),
            vec!["promptfolio is defined for prompt learning only (--peft prompt)"],
        ),
        (
            "bad-seed-list",
            strings(&[
                "compare",
                "--dataset",
                "synthetic",
                "--model",
                "tests/fixtures/tiny-clip/hf",
                "--algorithms",
                "zeroshot",
                "--seeds",
                "1,x",
            ]),
            vec!["--seeds `1,x`: `x` is not a seed"],
        ),
    ];
    for (id, args, expected) in &cases {
        expect_error(id, &fedpurel(args, &[]), expected);
    }
    // Config files: an unknown key (with the valid ones listed) and broken TOML.
    let good = out("good");
    let ok = fedpurel(&run_args(&good, &cache, &["--rounds"], &["--rounds", "1"]), &[]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let text = std::fs::read_to_string(good.join("config.toml")).unwrap();
    let typo = tmp.path().join("typo.toml");
    std::fs::write(&typo, text.replace("lora_rank = 8", "lora_rnak = 8")).unwrap();
    let args = vec!["run".to_string(), "--config".into(), typo.display().to_string()];
    expect_error(
        "unknown-config-key",
        &fedpurel(&args, &[]),
        &["typo.toml", "unknown field `lora_rnak`, expected one of"],
    );
    let broken = tmp.path().join("broken.toml");
    std::fs::write(&broken, "algorithm = \"fedpurel\"\n[data\n").unwrap();
    let args = vec!["run".to_string(), "--config".into(), broken.display().to_string()];
    expect_error(
        "config-not-toml",
        &fedpurel(&args, &[]),
        &["broken.toml: TOML parse error at line 2"],
    );
}

#[test]
fn missing_and_mismatched_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("run");
    let args = run_args(&out, &cache, &["--model"], &["--model", "no/such/model"]);
    expect_error("missing-model", &fedpurel(&args, &[]), &["no/such/model"]);
    let args = strings(&[
        "run",
        "--dataset",
        "cifar100",
        "--root",
        "no/such/data",
        "--model",
        "tests/fixtures/tiny-clip/hf",
        "--out",
        out.to_str().unwrap(),
    ]);
    expect_error(
        "missing-dataset",
        &fedpurel(&args, &[]),
        &["no CIFAR-100 data under no/such/data: looked for"],
    );
    // A truncated checkpoint file.
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "tokenizer.json", "vocab.json", "merges.txt"] {
        std::fs::copy(root().join("tests/fixtures/tiny-clip/hf").join(f), model.join(f)).unwrap();
    }
    let bytes = std::fs::read(root().join("tests/fixtures/tiny-clip/hf/model.safetensors")).unwrap();
    std::fs::write(model.join("model.safetensors"), &bytes[..bytes.len() / 3]).unwrap();
    let m = model.display().to_string();
    let args = run_args(&out, &cache, &["--model"], &["--model", &m]);
    expect_error(
        "truncated-checkpoint",
        &fedpurel(&args, &[]),
        &["model.safetensors"],
    );
    // A split exported for another dataset.
    let args = run_args(
        &out,
        &cache,
        &["--imb-factor"],
        &[
            "--split-file",
            "tests/fixtures/reference-run-prompt/partition.json",
        ],
    );
    expect_error(
        "split-for-other-data",
        &fedpurel(&args, &[]),
        &["partition.json does not fit this dataset: lt_train holds index"],
    );
}

#[test]
fn run_directory_errors_keep_the_run_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // The output path is a file.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    expect_error(
        "out-is-a-file",
        &fedpurel(&run_args(&file, &cache, &[], &[]), &[]),
        &["cannot create the run directory"],
    );
    // Another run's settings in an existing run directory.
    let run = tmp.path().join("run");
    let ok = fedpurel(&run_args(&run, &cache, &[], &[]), &[]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    expect_error(
        "run-dir-other-settings",
        &fedpurel(&run_args(&run, &cache, &[], &["--lambda", "0.5"]), &[]),
        &["holds a run with other settings; use another --out or delete it"],
    );
    // A second process on a run directory in use.
    let busy = tmp.path().join("busy");
    let mut first = Command::new(env!("CARGO_BIN_EXE_fedpurel"))
        .args(run_args(&busy, &cache, &["--rounds"], &["--rounds", "200"]))
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::fs::read_to_string(busy.join(".lock"))
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            start.elapsed().as_secs() < 60,
            "the first run never took its lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let second = fedpurel(&run_args(&busy, &cache, &["--rounds"], &["--rounds", "200"]), &[]);
    first.kill().unwrap();
    first.wait().unwrap();
    expect_error(
        "run-dir-in-use",
        &second,
        &[
            "is in use by another fedpurel process (pid",
            "wait for it to finish or use another --out",
        ],
    );
    // A killed holder releases the lock: the next run resumes.
    let again = fedpurel(&run_args(&busy, &cache, &["--rounds"], &["--rounds", "1"]), &[]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        again.status.success() || stderr.contains("other settings"),
        "the lock outlived its process: {stderr}"
    );
}

/// Disk full and a read-only file system (injected at the OS-call level, see
/// src/faults.rs), and a diverging run: the error names the file or the step, nothing
/// half-written is trusted, and the run resumes to the numbers of an uninterrupted one.
#[test]
fn write_failures_and_divergence_leave_the_last_good_state() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let reference = tmp.path().join("reference");
    let ok = fedpurel(&run_args(&reference, &cache, &[], &[]), &[]);
    assert!(ok.status.success());
    // The 6th atomic write of a fresh run is inside the first checkpoint.
    let run = tmp.path().join("full");
    let failed = fedpurel(
        &run_args(&run, &cache, &[], &[]),
        &[("FEDPUREL_FAIL_WRITE", "enospc@6")],
    );
    expect_error("disk-full", &failed, &["cannot write", "No space left on device"]);
    let resumed = fedpurel(&run_args(&run, &cache, &[], &[]), &[]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let summary = |d: &Path| -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
        v["run"] = serde_json::Value::Null;
        v
    };
    assert_eq!(
        summary(&run),
        summary(&reference),
        "the resumed run ends elsewhere"
    );
    let ro = tmp.path().join("readonly");
    let failed = fedpurel(
        &run_args(&ro, &cache, &[], &[]),
        &[("FEDPUREL_FAIL_WRITE", "erofs@1")],
    );
    expect_error(
        "read-only-output",
        &failed,
        &["cannot write", "config.toml: Read-only file system"],
    );
    // A diverging run stops at the step, with nothing saved from it.
    let nan = tmp.path().join("nan");
    let failed = fedpurel(&run_args(&nan, &cache, &[], &["--lr", "1e30"]), &[]);
    expect_error(
        "non-finite-loss",
        &failed,
        &["local training, round 0, client 0, step 1: the task loss is NaN (not finite)"],
    );
    assert!(!nan.join("checkpoints/latest").exists() && !nan.join("metrics.jsonl").exists());
}

#[test]
fn every_catalogue_row_names_a_test_that_exists() {
    let sources: String = ["tests/bad_inputs.rs", "tests/kill_resume.rs", "tests/cli.rs"]
        .iter()
        .map(|f| std::fs::read_to_string(root().join(f)).unwrap())
        .chain(walk(&root().join("src")))
        .collect();
    let rows = catalogue();
    assert!(rows.len() >= 30, "the catalogue has only {} rows", rows.len());
    for (id, line) in rows {
        let test = line
            .rsplit('|')
            .nth(1)
            .and_then(|c| c.split('`').nth(1))
            .unwrap_or_else(|| panic!("row `{id}` names no test"));
        let name = test.rsplit("::").next().unwrap();
        assert!(
            sources.contains(&format!("fn {name}(")),
            "row `{id}`: no test `{test}`"
        );
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(std::fs::read_to_string(p).unwrap());
        }
    }
    out
}

"""Shared set-up of the Flower integration tests: the pinned Flower, the fedpurel binary,
and a small run configuration (tiny fixture CLIP, synthetic long-tailed data, 3 clients).

Run through `integrations/flower/run_tests.sh`, which builds the wheel and installs the
pinned versions of requirements.txt into a virtual environment first."""

import importlib.metadata
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "integrations" / "flower"
FEDPUREL = ROOT / "target" / "release" / "fedpurel"
CLIENTS = 3
ROUNDS = 2


def pinned_flower() -> str:
    text = (APP / "requirements.txt").read_text()
    m = re.search(r"^flwr\[simulation\]==(\S+)$", text, re.M)
    assert m, "requirements.txt must pin flwr[simulation]==VERSION"
    return m.group(1)


def pytest_configure(config):
    """Refuse to run without the pinned Flower: these tests must fail, never skip."""
    want = pinned_flower()
    try:
        have = importlib.metadata.version("flwr")
        import flwr.simulation  # noqa: F401  (the simulation engine: Ray)
        import ray  # noqa: F401
    except Exception as e:  # an ImportError or a missing distribution
        raise pytest.UsageError(
            f"Flower {want} with its simulation engine is not installed here ({e!r}); "
            "install integrations/flower/requirements.txt (run_tests.sh does) — the Flower tests cannot run without it"
        )
    if have != want:
        raise pytest.UsageError(f"Flower {have} is installed, the tests pin {want} (integrations/flower/requirements.txt)")
    if not FEDPUREL.is_file():
        raise pytest.UsageError(f"{FEDPUREL} is missing: cargo build --release first")


def run_config_args(tmp: Path) -> list[str]:
    return [
        "--dataset", "synthetic",
        "--synthetic-classes", "10",
        "--synthetic-train-per-class", "40",
        "--synthetic-test-per-class", "8",
        "--imb-factor", "10",
        "--clients", str(CLIENTS),
        "--model", str(ROOT / "tests/fixtures/tiny-clip/hf"),
        "--rounds", str(ROUNDS),
        "--frac", "1.0",
        "--batch-size", "8",
        # A large step, so that two rounds move the tiny random model's predictions (at the
        # default 1e-3 its global model predicts one class throughout, a weak comparison).
        "--lr", "0.5",
        "--out", str(tmp / "fedpurel-run"),
        "--cache-dir", str(tmp / "cache"),
    ]


@pytest.fixture
def run_config(tmp_path: Path) -> Path:
    """A run configuration file written by `fedpurel config`."""
    path = tmp_path / "run.toml"
    out = subprocess.run([str(FEDPUREL), "config", *run_config_args(tmp_path)], check=True, capture_output=True, text=True)
    path.write_text(out.stdout)
    return path


def max_abs_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    import numpy as np

    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)

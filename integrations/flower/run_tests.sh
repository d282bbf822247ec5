#!/usr/bin/env bash
# The Flower integration's tests: installs the pinned versions of requirements.txt
# (Flower with its Ray simulation engine, maturin, pytest) into target/flower-venv,
# builds the fedpurel wheel from bindings/python and the fedpurel binary, and runs
# tests/ with pytest. If Flower cannot be installed this fails, saying so.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/flower-venv
req=integrations/flower/requirements.txt
python=${PYTHON:-python3}
# The venv is kept for a re-run while requirements.txt is unchanged.
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/requirements.txt"; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    if ! "$venv/bin/pip" install --disable-pip-version-check --quiet -r "$req"; then
        echo "error: cannot install the pinned Flower and test tools ($req) with $("$python" --version 2>&1); the Flower tests cannot run" >&2
        rm -rf "$venv"
        exit 1
    fi
    cp "$req" "$venv/requirements.txt"
fi
# The fedpurel binary the tests compare against, built as `cargo test --release` builds it
# (the same feature unification): right after the README's test command, as in CI, this
# is a no-op instead of a second release build of the crate (~2 min on 2 cores).
cargo test --release --no-run --quiet
rm -f target/wheels/fedpurel-*.whl
"$venv/bin/maturin" build --release --quiet -m bindings/python/Cargo.toml
"$venv/bin/pip" install --disable-pip-version-check --quiet --force-reinstall --no-deps target/wheels/fedpurel-*.whl
export PATH="$PWD/$venv/bin:$PATH"
python -m pytest integrations/flower/tests -v -s -p no:cacheprovider

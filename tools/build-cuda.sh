#!/usr/bin/env bash
# Build fedpurel with the `cuda` feature on a machine WITHOUT a GPU and without a
# system CUDA toolkit, using NVIDIA's CUDA 13.0 wheels from PyPI as the toolkit.
#
#   tools/build-cuda.sh            cargo build --release --features cuda
#   tools/build-cuda.sh --check    cargo check --all-targets --features cuda
#                                  (compiler wheels only: nothing is linked)
#   tools/build-cuda.sh --typecheck  cargo clippy --all-targets --features cuda -D warnings
#                                  with tools/nvcc-stub/nvcc instead of nvcc: no wheels, no
#                                  kernel compilation (empty PTX), every Rust line of the
#                                  feature type-checked; own target dir target/cuda-typecheck
#   tools/build-cuda.sh --env      only install/lay out the toolkit and print the
#                                  `export` lines (eval "$(tools/build-cuda.sh --env)")
#   tools/build-cuda.sh [--check] -- ARGS...   extra arguments for cargo
#
# Environment knobs (all optional):
#   CARGO_TARGET_DIR   default target/cuda, so the CPU build in target/ is left alone
#   CUDA_COMPUTE_CAP   default 90 (H100/H200, sm_90); candle-kernels' build script
#                      cannot ask a GPU here, so it must be told which arch to compile for
#   CARGO_BUILD_JOBS   default 2 (the project's machines have 2 cores)
#   CUDA_TOOLKIT_DIR   default target/cuda-toolkit (where the wheels are unpacked)
#
# Why CUDA 13.0 (not 13.4/13.5): cudarc 0.19.10 knows CUDA 11.4 ... 13.4 and panics on an
# unknown `nvcc --version` (13.5 is already on PyPI), and 13.0 needs the lowest driver of
# the 13.x line (R580+). The CUDA 12 wheels cannot be used: nvidia-cuda-nvcc-cu12 ships
# ptxas but no nvcc/cicc.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODE=build
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --check) MODE=check ;;
    --typecheck) MODE=typecheck ;;
    --env) MODE=env ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "build-cuda.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "[build-cuda] $*" >&2; }

# --- 1. Exact wheel pins (the set that the `cuda-toolkit==13.0.2` meta-package names) ---
# Compiler: enough for `cargo check` (build scripts run nvcc, nothing is linked).
COMPILER_WHEELS=(
  nvidia-cuda-nvcc==13.0.88     # bin/nvcc, ptxas, fatbinary, nvlink, nvcc.profile
  nvidia-nvvm==13.0.88          # nvvm/bin/cicc, libnvvm, libdevice (nvcc's front end)
  nvidia-cuda-crt==13.0.88      # include/crt/* (host_config.h, math_functions.h ...)
  nvidia-cuda-runtime==13.0.96  # cuda_runtime.h, cuda_fp16/bf16/fp8.h, libcudart.so.13
  nvidia-cuda-cccl==13.0.85     # include/cccl (libcu++; nvcc.profile always adds it)
)
# Libraries the final link needs (cudarc is built with `dynamic-linking` by candle-core:
# -lnvrtc -lcurand -lcublas -lcublasLt -lcuda; candle-kernels adds -lcudart). They are
# also what the binary loads at run time on a GPU machine (via LD_LIBRARY_PATH).
LINK_WHEELS=(
  nvidia-cuda-nvrtc==13.0.88
  nvidia-curand==10.4.0.35
  nvidia-cublas==13.1.0.3
)
CUDARC_VERSION_TAG=13000        # what cudarc calls CUDA 13.0 (feature cuda-13000)

# --typecheck: no toolkit at all. The stub's empty outputs must never meet a real build:
# cudaforge's incremental cache does not key on which nvcc ran, hence the own target dir.
if [[ "$MODE" == typecheck ]]; then
  export NVCC="$ROOT/tools/nvcc-stub/nvcc" PATH="$ROOT/tools/nvcc-stub:$PATH"
  export CUDARC_CUDA_VERSION=$CUDARC_VERSION_TAG CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  # CI points CUDA_TYPECHECK_TARGET_DIR at its own target/ (no real CUDA build ever runs
  # there) to reuse the dependencies its plain clippy just checked: ~1.5 min, not ~10.
  export CARGO_TARGET_DIR="${CUDA_TYPECHECK_TARGET_DIR:-$ROOT/target/cuda-typecheck}"
  log "typecheck with the nvcc stub, CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
  t0=$SECONDS
  cargo clippy -j "${CARGO_BUILD_JOBS:-2}" --all-targets --features cuda "${EXTRA[@]}" -- -D warnings
  log "cargo clippy (typecheck) finished in $((SECONDS - t0)) s"
  exit 0
fi

WHEELS=("${COMPILER_WHEELS[@]}")
if [[ "$MODE" != check ]]; then WHEELS+=("${LINK_WHEELS[@]}"); fi

TK_DIR="${CUDA_TOOLKIT_DIR:-$ROOT/target/cuda-toolkit}"
VENV="$TK_DIR/venv"
STAMP="$TK_DIR/installed.txt"

# --- 2. Install the wheels (idempotent: one stamp line per installed pin) ---------------
# A venv, not `pip install --target`: all CUDA 13 wheels unpack into the same
# nvidia/cu13/ folder, and --target --upgrade would replace that whole folder on a
# second install (the link wheels after a --check). --no-deps: the pins are the set.
missing=()
for w in "${WHEELS[@]}"; do
  grep -qxF "$w" "$STAMP" 2>/dev/null || missing+=("$w")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing ${#missing[@]} wheel(s) into $VENV: ${missing[*]}"
  t0=$SECONDS
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    "${missing[@]}"
  printf '%s\n' "${missing[@]}" >>"$STAMP"
  log "wheels installed in $((SECONDS - t0)) s"
else
  log "wheels already installed in $VENV"
fi
CUDA="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13"
[[ -x "$CUDA/bin/nvcc" ]] || { echo "nvcc missing under $CUDA/bin" >&2; exit 1; }

# --- 3. Lay out the folders nvcc and the linkers expect ----------------------------------
# nvcc.profile (in the wheel) adds -I$TOP/targets/x86_64-linux/include and
# -L$TOP/targets/x86_64-linux/lib, the layout of a real toolkit; the wheels put the
# headers and libraries straight in include/ and lib/. Point the former at the latter.
mkdir -p "$CUDA/targets/x86_64-linux" "$CUDA/lib/stubs"
ln -sfn ../../include "$CUDA/targets/x86_64-linux/include"
ln -sfn ../../lib "$CUDA/targets/x86_64-linux/lib"
# The wheels ship only versioned sonames (libcudart.so.13 ...); `-lcudart` needs the
# unversioned development name.
for so in "$CUDA"/lib/lib*.so.*; do
  [[ -e "$so" ]] || continue
  base="${so##*/}"; dev="${base%%.so.*}.so"
  [[ "$base" == *.alt.* || "$base" == libnvrtc-builtins* ]] && continue
  [[ -e "$CUDA/lib/$dev" ]] || ln -sfn "$base" "$CUDA/lib/$dev"
done

# libcuda.so is the driver: no wheel has it (a real toolkit has lib64/stubs/libcuda.so).
# Generate the same kind of stub: an empty function for every driver entry point that
# cudarc can call, with the driver's soname libcuda.so.1, so that the binary records
# DT_NEEDED libcuda.so.1 and the GPU machine's real driver library is loaded at run
# time. It lives in lib/stubs, which is never on LD_LIBRARY_PATH.
if [[ "$MODE" != check && ! -e "$CUDA/lib/stubs/libcuda.so" ]]; then
  cudarc_dir="$(cargo metadata --format-version 1 --features cuda 2>/dev/null | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
p = [p for p in m["packages"] if p["name"] == "cudarc"]
print(os.path.dirname(p[0]["manifest_path"]) if p else "")')"
  [[ -n "$cudarc_dir" ]] || { echo "cudarc not found by cargo metadata" >&2; exit 1; }
  grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc_dir/src/driver/sys/mod.rs" \
    | sed 's/^pub unsafe fn //' | sort -u \
    | awk '{ printf "int %s(void) { return 999; }\n", $1 }' >"$TK_DIR/libcuda-stub.c"
  cc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$CUDA/lib/stubs/libcuda.so" \
    "$TK_DIR/libcuda-stub.c"
  log "generated lib/stubs/libcuda.so ($(wc -l <"$TK_DIR/libcuda-stub.c") symbols)"
fi

# --- 4. Environment for the build scripts -----------------------------------------------
# PATH/NVCC: cudaforge (candle-kernels' build dependency) looks for $NVCC, then `nvcc` on
#   PATH, then $CUDA_HOME/bin/nvcc.
# CUDA_HOME/CUDA_PATH: cudarc adds <root>/lib and <root>/lib/stubs to the link search path.
# CUDARC_CUDA_VERSION: pins cudarc's API level instead of parsing `nvcc --version`.
# CUDA_COMPUTE_CAP: without a GPU nvidia-smi cannot be asked; 90 = Hopper (H100/H200), the
#   GPUs we run on. candle's PTX for sm_90 is JIT-compiled by the driver for any newer GPU
#   as well, but not for older ones (use 80 for A100).
# CUDAFORGE_THREADS: cudaforge compiles .cu files with half the cores by default (1 here).
# LD_LIBRARY_PATH: nvcc's cicc needs libnvvm; the built binary needs libcublas etc.
ENV_LINES=(
  "export CUDA_HOME='$CUDA'"
  "export CUDA_PATH='$CUDA'"
  "export NVCC='$CUDA/bin/nvcc'"
  "export PATH='$CUDA/bin':\"\$PATH\""
  "export CUDARC_CUDA_VERSION=$CUDARC_VERSION_TAG"
  "export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}"
  "export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-${CARGO_BUILD_JOBS:-2}}"
  "export LD_LIBRARY_PATH='$CUDA/lib'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
  "export CARGO_TARGET_DIR='${CARGO_TARGET_DIR:-$ROOT/target/cuda}'"
)
for l in "${ENV_LINES[@]}"; do eval "$l"; done
if [[ "$MODE" == env ]]; then printf '%s\n' "${ENV_LINES[@]}"; exit 0; fi

log "$(nvcc --version | tail -2 | head -1)"
log "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

# --- 5. Build -----------------------------------------------------------------------------
JOBS="${CARGO_BUILD_JOBS:-2}"
t0=$SECONDS
if [[ "$MODE" == check ]]; then
  cargo check -j "$JOBS" --all-targets --features cuda "${EXTRA[@]}"
else
  cargo build -j "$JOBS" --release --features cuda "${EXTRA[@]}"
fi
log "cargo $MODE finished in $((SECONDS - t0)) s"

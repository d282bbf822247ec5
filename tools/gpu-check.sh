#!/usr/bin/env bash
# The GPU check: run on a machine WITH an NVIDIA GPU (H100/H200), fits in 8 minutes.
#
#   tools/gpu-check.sh                 build with `cuda` here, then check and bench
#   tools/gpu-check.sh --package DIR   (on a build machine, GPU or not) build and copy the
#                                      two executables into DIR for a GPU machine that has
#                                      no Rust toolchain or no registry access
#   tools/gpu-check.sh --prebuilt DIR  (on the GPU machine) use DIR's executables
#
# Steps, each under `timeout`, each teed into target/gpu-check/<step>.log:
#   1. nvidia-smi (GPU, driver, the CUDA version the driver supports)
#   2. build: a system CUDA toolkit if one is there and cudarc knows its version (<= 13.4),
#      else tools/build-cuda.sh (CUDA 13.0 from PyPI wheels; needs driver R580+)
#   3. CPU-vs-GPU agreement tests (tests/gpu_agreement.rs: encoders, one FedPuReL round per
#      PEFT kind through the fedpurel executable, FEDPUREL_BIN)
#   4. `fedpurel bench round --model random:vit-b16 --device cuda --max-steps 2`
# A step that fails is reported and the later ones still run where they can; the exit
# status is non-zero if any step failed. Summary: target/gpu-check/summary.txt.
set -uo pipefail   # no -e: a failed step is recorded, not fatal

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LOG_DIR="$ROOT/target/gpu-check"
mkdir -p "$LOG_DIR"
SUMMARY="$LOG_DIR/summary.txt"
: >"$SUMMARY"

MODE=build
PKG_DIR=""
case "${1:-}" in
  --package) MODE=package; PKG_DIR="${2:?--package DIR}" ;;
  --prebuilt) MODE=prebuilt; PKG_DIR="$(cd "${2:?--prebuilt DIR}" && pwd)" ;;
  "") ;;
  -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
  *) echo "gpu-check.sh: unknown argument $1" >&2; exit 2 ;;
esac

FAILED=0
# step NAME SECONDS COMMAND...: run COMMAND under timeout, tee its output into
# $LOG_DIR/NAME.log, record rc and wall time in the summary.
step() {
  local name="$1" secs="$2"; shift 2
  local t0=$SECONDS rc
  echo "=== [$name] (timeout ${secs}s) $*" | tee "$LOG_DIR/$name.log"
  timeout --kill-after=10 "$secs" "$@" 2>&1 | tee -a "$LOG_DIR/$name.log"
  rc=${PIPESTATUS[0]}
  local line="$name: rc=$rc, $((SECONDS - t0)) s$([[ $rc == 124 ]] && echo ' (TIMED OUT)')"
  echo "=== $line" | tee -a "$LOG_DIR/$name.log"
  echo "$line" >>"$SUMMARY"
  [[ $rc == 0 ]] || FAILED=1
  return "$rc"
}

JOBS="${CARGO_BUILD_JOBS:-$(nproc)}"
export CARGO_BUILD_JOBS="$JOBS" CARGO_TERM_COLOR=never
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/cuda}"

# --- 1. The GPU ------------------------------------------------------------------------------
if [[ "$MODE" != package ]]; then
  step nvidia-smi 15 nvidia-smi
  step gpu-query 15 nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
  # Compile candle's kernels for this GPU's architecture (90 for H100/H200).
  cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')"
  [[ "$cap" =~ ^[0-9]+$ ]] && export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$cap}"
fi
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

# --- 2. Build (or take prebuilt executables) -------------------------------------------------
# A system toolkit is used if its nvcc is one cudarc 0.19.10 knows (11.4 ... 13.4); it then
# also provides the libraries (cublas, curand, nvrtc) the binary loads.
system_nvcc=""
for c in "${NVCC:-}" "$(command -v nvcc 2>/dev/null)" /usr/local/cuda/bin/nvcc; do
  [[ -n "$c" && -x "$c" ]] || continue
  ver="$("$c" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')"
  case "$ver" in
    11.[4-8]|12.[0-9]|13.[0-4]) system_nvcc="$c"; break ;;
    *) echo "ignoring $c (CUDA $ver: cudarc 0.19.10 supports 11.4 ... 13.4)" ;;
  esac
done

# Where the executables' CUDA libraries come from at run time.
add_lib_dirs() {
  local d
  for d in "$@"; do [[ -d "$d" ]] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; done
  export LD_LIBRARY_PATH
}

# Time boxes (seconds), together within 8 minutes; each can be overridden.
T_BUILD="${GPU_CHECK_T_BUILD:-300}"      # clean release build incl. nvcc (16 cores)
T_TESTS="${GPU_CHECK_T_TESTS:-60}"       # the agreement test on top of the release build
if [[ "$MODE" == package ]]; then        # a 2-core build machine: ~45 min clean (nvcc ~20)
  T_BUILD="${GPU_CHECK_T_BUILD:-5400}"; T_TESTS="${GPU_CHECK_T_TESTS:-1800}"
fi
T_AGREE="${GPU_CHECK_T_AGREE:-75}"   # encoders, then one FedPuReL round per PEFT kind on both devices
T_BENCH="${GPU_CHECK_T_BENCH:-75}"
FEDPUREL=""
AGREEMENT=""
if [[ "$MODE" == prebuilt ]]; then
  FEDPUREL="$PKG_DIR/fedpurel"
  AGREEMENT="$PKG_DIR/gpu_agreement"
  # The GPU machine's own CUDA 13 libraries: a toolkit, or the nvidia-* wheels of its Python.
  py_cu13="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)"
  add_lib_dirs /usr/local/cuda/lib64 "$py_cu13" "$PKG_DIR/lib"
else
  if [[ -n "$system_nvcc" ]]; then
    cuda_root="$(dirname "$(dirname "$(readlink -f "$system_nvcc")")")"
    export CUDA_HOME="$cuda_root" CUDA_PATH="$cuda_root" NVCC="$system_nvcc"
    export PATH="$cuda_root/bin:$PATH"
    add_lib_dirs "$cuda_root/lib64" "$cuda_root/lib"
    echo "using the system CUDA toolkit at $cuda_root ($system_nvcc)"
    step build "$T_BUILD" cargo build --release --features cuda
  else
    echo "no usable system CUDA toolkit: building with tools/build-cuda.sh (PyPI wheels)"
    step build "$T_BUILD" "$ROOT/tools/build-cuda.sh"
    eval "$("$ROOT/tools/build-cuda.sh" --env)"   # PATH, CUDA_HOME, LD_LIBRARY_PATH, ...
  fi
  # The agreement tests' executable, built with the same (release) artifacts; its path
  # comes from cargo's JSON messages so that it can also be run without cargo.
  step build-tests "$T_TESTS" cargo test --release --features cuda --test gpu_agreement --no-run
  AGREEMENT="$(cargo test --release --features cuda --test gpu_agreement --no-run \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu_agreement" and m.get("executable"):
        print(m["executable"])' | tail -1)"
  FEDPUREL="$CARGO_TARGET_DIR/release/fedpurel"
fi

if [[ "$MODE" == package ]]; then
  mkdir -p "$PKG_DIR"
  cp "$FEDPUREL" "$PKG_DIR/fedpurel"
  cp "$AGREEMENT" "$PKG_DIR/gpu_agreement"
  # Line tables are not needed there, and the device tool carries 64 MiB at most.
  strip --strip-debug "$PKG_DIR/fedpurel" "$PKG_DIR/gpu_agreement"
  ls -la "$PKG_DIR"
  cat "$SUMMARY"
  exit "$FAILED"
fi

# --- 3. CPU-vs-GPU agreement ---------------------------------------------------------------
# The test finds tests/fixtures through CARGO_MANIFEST_DIR (set here for a prebuilt binary).
# --nocapture: the measured differences (and any SKIP) are printed.
export CARGO_MANIFEST_DIR="$ROOT"
if [[ -x "${AGREEMENT:-}" ]]; then
  export FEDPUREL_BIN="$FEDPUREL"   # the executable the round-agreement test runs on both devices
  step gpu-agreement "$T_AGREE" "$AGREEMENT" gpu_agreement --nocapture --test-threads=1
else
  echo "gpu-agreement: no test executable" | tee -a "$SUMMARY"; FAILED=1
fi

# --- 4. Benchmark ------------------------------------------------------------------------------
if [[ -x "${FEDPUREL:-}" ]]; then
  step bench-round "$T_BENCH" "$FEDPUREL" bench round --model random:vit-b16 --device cuda --max-steps 2
else
  echo "bench-round: no fedpurel executable" | tee -a "$SUMMARY"; FAILED=1
fi

echo "=== summary (logs in $LOG_DIR)"
cat "$SUMMARY"
exit "$FAILED"

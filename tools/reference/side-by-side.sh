#!/usr/bin/env bash
# The tiny-workload speed comparison in one sitting: the authors' code through the shared
# reference harness, then `fedpurel bench round` on identical work (tiny fixture CLIP,
# the harness's synthetic CIFAR-100-LT, 20 clients, frac 0.4, seed 1), for each PEFT
# kind given. The reference runs 2 rounds and is projected to 100; ours runs all 100
# (OUR_ROUNDS), so its end-to-end time is measured, overlapped rounds included. Run it
# on an idle machine: a ratio counts only when both sides ran back to back without other
# load (the script prints the load average before each side and the CPU steal during it).
#
#   MIRROR=/work/.mirror/shihaohou+FedPuReL/repo tools/reference/side-by-side.sh lora [prompt adapter]
#
# Environment: MIRROR (required: the `fetch` tool's path for github:shihaohou/FedPuReL),
# HARNESS_DIR (default ../shared/reference-harness), WORK (default /tmp/fedpurel-harness,
# the harness's own default: data and tiny CLIP are made there when missing), VENV
# (default /tmp/refenv; see the harness README to create it), FEDPUREL (default
# target/release/fedpurel), OUT (default runs/side-by-side), OUR_ROUNDS (default 100;
# 2 gives a quick look, projected as the summary line says), and any extra arguments for
# our side in OURS_ARGS (e.g. "--stem-cache-mib 0" for the live LoRA path).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
: "${MIRROR:?set MIRROR to the FedPuReL mirror (fetch github:shihaohou/FedPuReL)}"
HARNESS_DIR=${HARNESS_DIR:-$ROOT/../shared/reference-harness}
WORK=${WORK:-/tmp/fedpurel-harness}
FEDPUREL=${FEDPUREL:-target/release/fedpurel}
OUT=${OUT:-runs/side-by-side}
mkdir -p "$OUT"
[[ $# -gt 0 ]] || set -- prompt lora adapter
# CPU steal (a virtual machine's host running other guests) between two /proc/stat
# readings: the load average does not show it, and it slows either side unseen.
cpu_line() { grep '^cpu ' /proc/stat; }
steal_since() {
  local now
  now=$(cpu_line)
  awk -v a="$1" -v b="$now" 'BEGIN {
    n = split(a, x, " "); split(b, y, " "); total = 0
    for (i = 2; i <= n; i++) total += y[i] - x[i]
    printf "%.1f %%", (total > 0 ? 100 * (y[9] - x[9]) / total : 0) }'
}
for peft in "$@"; do
  echo "== $peft: reference (load: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%H:%M:%S) UTC)"
  start=$(cpu_line)
  PEFT=$peft ROUNDS=2 RUN_NAME="side_$peft" WORK=$WORK MIRROR=$MIRROR \
    bash "$HARNESS_DIR/run_reference.sh" >"$OUT/reference-$peft.log" 2>&1
  echo "   reference done, CPU steal during it: $(steal_since "$start")"
  timings="$WORK/runs/side_$peft/timings.jsonl"
  cp "$timings" "$OUT/reference-$peft-timings.jsonl"
  echo "== $peft: fedpurel (load: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%H:%M:%S) UTC)"
  start=$(cpu_line)
  # shellcheck disable=SC2086
  "$FEDPUREL" bench round --peft "$peft" --root "$WORK/DATA/cifar-100" --rounds "${OUR_ROUNDS:-100}" \
    --reference "$timings" ${OURS_ARGS:-} | tee "$OUT/fedpurel-$peft.txt"
  echo "   fedpurel done ($(date -u +%H:%M:%S) UTC), CPU steal during it: $(steal_since "$start")"
done

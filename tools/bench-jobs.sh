#!/usr/bin/env bash
# The --jobs A/B of docs/perf-notes.md ("Grids: --jobs"), in one sitting, back to back:
# a short LoRA grid of the demo CLIP, then the adapter demo, each with --jobs 1 and 2 and
# with --jobs 2 on candle's full-size element-wise pool (CANDLE_NUM_THREADS = cores, as
# before fedpurel sized it to one cell's share), then a check that every metrics.jsonl is
# the same apart from its timing fields.
#
#   tools/bench-jobs.sh [OUT]      OUT defaults to runs/jobs-ab (wiped first)
#   FEDPUREL=path/to/fedpurel      default target/release/fedpurel
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
B="${FEDPUREL:-target/release/fedpurel}"
O="${1:-runs/jobs-ab}"
[[ -x "$B" ]] || { echo "bench-jobs.sh: no binary at $B (cargo build --release)" >&2; exit 1; }
rm -rf "$O"/lora-j* "$O"/adapter-j*
cores=$(nproc)
mkdir -p "$O"
timed() { # NAME COMMAND...: wall seconds of COMMAND, its output into $O/NAME.log
  local name="$1"; shift
  echo "load before $name: $(cut -d' ' -f1-3 /proc/loadavg)"
  local s e
  s=$(date +%s.%N)
  "$@" >"$O/$name.log" 2>&1
  e=$(date +%s.%N)
  echo "$name: $(echo "$e - $s" | bc) s"
}
lora=(compare --preset demo --peft lora --algorithms promptfl --seeds 1,2 --rounds 2)
for j in 1 2; do
  timed "lora-j$j" "$B" "${lora[@]}" --jobs "$j" --out "$O/lora-j$j"
done
timed lora-j2-candlepool env CANDLE_NUM_THREADS="$cores" "$B" "${lora[@]}" --jobs 2 \
  --out "$O/lora-j2-candlepool"
for j in 1 2; do
  timed "adapter-j$j" "$B" demo --jobs "$j" --out "$O/adapter-j$j"
done
timed adapter-j2-candlepool env CANDLE_NUM_THREADS="$cores" "$B" demo --jobs 2 \
  --out "$O/adapter-j2-candlepool"
python3 - "$O" <<'PY'
import glob, json, sys
out = sys.argv[1]
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if not (k == "seconds" or k.endswith("_seconds"))}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
def lines(path):
    return [strip(json.loads(l)) for l in open(path)]
bad = 0
pairs = [(f"{k}-j1", f"{k}-j2{v}") for k in ("lora", "adapter") for v in ("", "-candlepool")]
for a, b in pairs:
    runs = sorted(glob.glob(f"{out}/{a}/**/metrics.jsonl", recursive=True))
    same = [lines(f) == lines(f.replace(f"/{a}/", f"/{b}/")) for f in runs]
    bad += same.count(False)
    print(f"{a} vs {b}: {len(runs)} runs, {same.count(True)} with identical metrics")
sys.exit(1 if bad or not runs else 0)
PY

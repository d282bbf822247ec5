#!/usr/bin/env bash
# Paper scale, side by side: the authors' code and ours on a random-weight ViT-B/16 CLIP and
# CIFAR-100-LT-shaped data (100 classes, 500/100 images per class, IF 100, 20 clients, frac
# 0.4, batch 32), per phase, with steps, test batches and clients capped so that the whole
# comparison finishes in about 30 minutes on this 2-core CPU; then both sides extrapolated
# with one formula to an 8-client round and a 100-round run (summarize_vit_b16.py).
#
#   MIRROR=/work/.mirror/shihaohou+FedPuReL/repo tools/reference/bench-vit-b16.sh [prompt lora adapter]
#
# Run it on an idle machine: the script prints the load average before each side.
# Environment: MIRROR (required), HARNESS_DIR (default ../shared/reference-harness), WORK
# (default /tmp/fh-vitb16: data, checkpoint and reference tree), VENV (default /tmp/refenv),
# FEDPUREL (default target/release/fedpurel), OUT (default runs/bench-vit-b16), caps
# STEPS (2 local steps per client and stage), CLIENTS (1 client trained), TEST_BATCHES
# (1 reference test batch of 128 images per evaluation pass) and PM_CLIENTS (1 client in the
# reference's personalized test). Our side trains the same one client; with LoRA, for STEPS
# steps per stage and evaluating a 200-image test set (LORA_TEST_PER_CLASS=2), since every
# step and test image runs the image tower; with prompt and adapter, whose steps and
# evaluations run on cached features, for its full epoch and on the full 10 000-image test
# set, so that no fixed cost is charged per step or image. Prompt and adapter read the
# reference's data (`--root`, with the random model's stand-in features): its class names
# are CIFAR-100's, so the prompts are the reference's (CIFAR-100's names take 2-4 tokens;
# the built-in synthetic dataset's `pattern_N` names take 4-5 and made our text-encoder
# steps do more work than the reference's until 2026-12-05).
#
# With prompt and adapter, our side also runs whole rounds as a run does (ROUNDS_MEASURED,
# default 3; 0 skips it): every sampled client, full epochs, the clients at once or the
# stage-1 chain beside the previous round's personalization and evaluation. That is the
# work the capped one-client measurement extrapolates, timed as a user gets it; the
# summary sets each measured round beside the reference extrapolated to its clients and
# steps (about 6 minutes for prompt, less for adapter).
#
# The reference reads a random ViT-B/16 made by the harness' make_tiny_clip.py at
# ViT-B/16's shape; ours uses `--model random:vit-b16` (other random values, the same
# shapes and work) with random frozen features, so our one-off feature extraction is timed
# separately (`bench image-encoder`) and added to the projection by the summary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
: "${MIRROR:?set MIRROR to the FedPuReL mirror (fetch github:shihaohou/FedPuReL)}"
export HARNESS_DIR=${HARNESS_DIR:-$ROOT/../shared/reference-harness}
WORK=${WORK:-/tmp/fh-vitb16}
VENV=${VENV:-/tmp/refenv}
FEDPUREL=${FEDPUREL:-target/release/fedpurel}
OUT=${OUT:-runs/bench-vit-b16}
STEPS=${STEPS:-2}
CLIENTS=${CLIENTS:-1}
TEST_BATCHES=${TEST_BATCHES:-1}
PM_CLIENTS=${PM_CLIENTS:-1}
LORA_TEST_PER_CLASS=${LORA_TEST_PER_CLASS:-2}
ROUNDS_MEASURED=${ROUNDS_MEASURED:-3}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
[[ $# -gt 0 ]] || set -- prompt lora adapter

if [ ! -f "$WORK/vit_b16/tiny_clip_openai.pt" ]; then
  echo "== making a random ViT-B/16 checkpoint in $WORK/vit_b16"
  "$VENV/bin/python" "$HARNESS_DIR/make_tiny_clip.py" --out "$WORK/vit_b16" --no-tokenizer \
    --patch-size 16 --vision-width 768 --vision-layers 12 --text-width 512 --text-layers 12 \
    --embed-dim 512 > "$WORK/make_vit_b16.log"
fi

echo "== fedpurel: matmul peak and the ViT-B/16 image encoder (load: $(cut -d' ' -f1-3 /proc/loadavg))"
"$FEDPUREL" bench --json image-encoder > "$OUT/fedpurel-image-encoder.jsonl"
"$FEDPUREL" bench --json text-encoder --fast-only > "$OUT/fedpurel-text-encoder.jsonl"

for peft in "$@"; do
  echo "== $peft: reference (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  PEFT=$peft ROUNDS=1 NUM_USERS=20 IMB_FACTOR=0.01 DUMP=0 WORK=$WORK MIRROR=$MIRROR VENV=$VENV \
    CLIP_DIR="$WORK/vit_b16" TRAIN_PER_CLASS=500 TEST_PER_CLASS=100 RUN_NAME="vitb16_$peft" \
    MAIN_SCRIPT=tools/reference/ref_capped_main.py CAP_RECORD="$OUT/reference-$peft-caps.json" \
    CAP_CLIENTS=$CLIENTS CAP_STEPS=$STEPS CAP_TEST_BATCHES=$TEST_BATCHES CAP_PM_CLIENTS=$PM_CLIENTS \
    bash tools/reference/record.sh > "$OUT/reference-$peft.log" 2>&1
  cp "$WORK/runs/vitb16_$peft/timings.jsonl" "$OUT/reference-$peft-timings.jsonl"
  cp "$WORK/runs/vitb16_$peft/time.txt" "$OUT/reference-$peft-time.txt"
  echo "== $peft: fedpurel (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  if [ "$peft" = lora ]; then ours=(--max-steps "$STEPS" --test-per-class "$LORA_TEST_PER_CLASS")
  else ours=(--max-steps 0 --root "$WORK/DATA/cifar-100"); fi
  "$FEDPUREL" bench round --model random:vit-b16 --peft "$peft" --rounds 1 \
    --clients "$CLIENTS" "${ours[@]}" \
    --record "$OUT/fedpurel-$peft.json" > "$OUT/fedpurel-$peft.txt"
  if [ "$peft" != lora ] && [ "$ROUNDS_MEASURED" -gt 0 ]; then
    echo "== $peft: fedpurel, $ROUNDS_MEASURED whole rounds (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    "$FEDPUREL" bench round --model random:vit-b16 --peft "$peft" --rounds "$ROUNDS_MEASURED" \
      --root "$WORK/DATA/cifar-100" \
      --record "$OUT/fedpurel-$peft-rounds.json" > "$OUT/fedpurel-$peft-rounds.txt"
  fi
done
"$VENV/bin/python" tools/reference/summarize_vit_b16.py "$OUT" "$@" | tee "$OUT/summary.md"

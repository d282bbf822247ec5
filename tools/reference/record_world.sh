#!/usr/bin/env bash
# Record the authors' FedPuReL (github.com/shihaohou/FedPuReL, 20ce20a) on fedpurel's world task
# (the output of `fedpurel export world --out $WORLD_DIR`) with the demo CLIP, as test fixtures.
# Our adaptation of the shared harness' run_reference.sh: the harness' CPU patch and its
# ref_timed_main.py / ref_dump.py are used from $HARNESS_DIR, plus our run-time hooks
# (world_hooks.py, world_dump.py, ref_world_main.py next to this script). Nothing of the authors'
# code is copied here: it is exported from $MIRROR into $TREE (under /tmp) at every call.
#
#   WORLD_DIR=/tmp/world MIRROR=... tools/reference/record_world.sh
#   FIXTURES=tests/fixtures/reference-run-world WORLD_DIR=... MIRROR=... tools/reference/record_world.sh
#
# Steps: export + patch -> OpenAI-layout safetensors -> .pt -> check_world.py (HF vs reference
# features, tokens, transform, zero-shot) -> 10 rounds of FedPuReL prompt with DUMP -> copy fixtures.
# See tools/reference/README-world.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HARNESS_DIR=${HARNESS_DIR:-/work/shared/reference-harness}
WORLD_DIR=${WORLD_DIR:?set WORLD_DIR to the output of fedpurel export world --out DIR}
WORLD_DIR=$(cd "$WORLD_DIR" && pwd)
WORK=${WORK:-/tmp/fh-world}
MIRROR=${MIRROR:?set MIRROR to a git clone or bare mirror of github.com/shihaohou/FedPuReL}
REF_REV=${REF_REV:-20ce20a}
VENV=${VENV:-/tmp/refenv}
PY="$VENV/bin/python"

ROUNDS=${ROUNDS:-10}
NUM_USERS=${NUM_USERS:-20}
FRAC=${FRAC:-0.4}
SEED=${SEED:-1}
BETA=${BETA:-1.0}
LR=${LR:-0.001}
TRAIN_BATCH=${TRAIN_BATCH:-32}
TEST_BATCH=${TEST_BATCH:-128}
N_CTX=${N_CTX:-4}
FUSION_LOSS_ALPHA=${FUSION_LOSS_ALPHA:-0.99}
NUM_CLASSES=${NUM_CLASSES:-60}
IMAGE_SIZE=${IMAGE_SIZE:-32}
PREC=${PREC:-fp32}
NUM_WORKERS=${NUM_WORKERS:-0}
THREADS=${THREADS:-2}
DUMP=${DUMP:-1}
CHECK=${CHECK:-1}
EXTRA_OPTS=${EXTRA_OPTS:-}
FIXTURES=${FIXTURES:-}
RUN_NAME=${RUN_NAME:-world_prompt_r${ROUNDS}_u${NUM_USERS}_f${FRAC}_s${SEED}}
TREE=${TREE:-$WORK/ref-tree}
if [ -n "$FIXTURES" ]; then mkdir -p "$FIXTURES"; FIXTURES=$(cd "$FIXTURES" && pwd); fi

# 1. fresh export + the harness' CPU patch (under /tmp, never in this repository)
rm -rf "$TREE" && mkdir -p "$TREE"
git -C "$MIRROR" archive "$REF_REV" | tar -x -C "$TREE"
git -C "$TREE" apply --verbose "$HARNESS_DIR/reference-cpu.patch" 2>&1 | sed 's/^/[patch] /'

# 2. the demo CLIP as the plain state dict the trainers' load_clip_to_cpu() reads
OUT="$WORK/runs/$RUN_NAME"
rm -rf "$OUT" && mkdir -p "$OUT"
CLIP_PT="$WORK/world_clip_openai.pt"
"$PY" "$HERE/world_clip.py" topt "$WORLD_DIR/clip/model.safetensors" "$CLIP_PT"

cd "$TREE"
export FEDPUREL_WORLD_DIR="$WORLD_DIR" FEDPUREL_CLIP_PATH="$CLIP_PT" HARNESS_DIR
export HARNESS_THREADS="$THREADS" HARNESS_TIMINGS="$OUT/timings.jsonl"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
export CUDA_VISIBLE_DEVICES=""
export PYTHONWARNINGS="ignore::FutureWarning"

# 3. checks (HF vs reference CLIP, tokens, transform, zero-shot)
if [ "$CHECK" = 1 ]; then
  "$PY" "$HERE/check_world.py" --hf "$HERE/../../assets/demo-clip" --json "$OUT/check_world.json" > "$OUT/check_world.log" 2>&1 \
    || { echo "[check] FAILED, see $OUT/check_world.log"; tail -30 "$OUT/check_world.log"; exit 1; }
  echo "[check] $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d['features']), json.dumps(d['zero_shot_reference']))" "$OUT/check_world.json")"
fi

# 4. run
ARGS=(
  --root "$WORLD_DIR" --model fedavg --trainer FedPuReL --peft_type prompt
  --dataset imagenet_LT --dataset-config-file configs/datasets/imagenet_LT.yaml
  --config-file configs/trainers/FedPuReL/vit_b16.yaml
  --output-dir "$OUT/output" --seed "$SEED" --num_users "$NUM_USERS" --frac "$FRAC"
  --round "$ROUNDS" --lr "$LR" --train_batch_size "$TRAIN_BATCH" --test_batch_size "$TEST_BATCH"
  --partition noniid-labeldir --beta "$BETA" --num_classes "$NUM_CLASSES"
  --n_ctx "$N_CTX" --n_general 0 --csc False --ctx_init False
  --fusion_loss_alpha "$FUSION_LOSS_ALPHA"
  DATALOADER.NUM_WORKERS "$NUM_WORKERS"
  TRAINER.COOP.PREC "$PREC" TRAINER.PROMPTFL.PREC "$PREC" TRAINER.CLIPLORA.PREC "$PREC"
  INPUT.SIZE "($IMAGE_SIZE, $IMAGE_SIZE)"
)
# shellcheck disable=SC2206
[ -n "$EXTRA_OPTS" ] && ARGS+=($EXTRA_OPTS)
if [ "$DUMP" = 1 ]; then export HARNESS_DUMP_DIR="$OUT/fixtures"; else unset HARNESS_DUMP_DIR; fi
printf '%q ' "$PY" "$HERE/ref_world_main.py" "${ARGS[@]}" > "$OUT/cmd.txt"; echo >> "$OUT/cmd.txt"
echo "[run] $RUN_NAME -> $OUT (log: $OUT/log.txt)"
set +e
/usr/bin/time -v -o "$OUT/time.txt" "$PY" "$HERE/ref_world_main.py" "${ARGS[@]}" > "$OUT/log.txt" 2>&1
rc=$?
set -e
echo "[run] exit $rc; $(grep -E 'Elapsed|Maximum resident' "$OUT/time.txt" | sed 's/^\s*//' | paste -sd';')"
grep -E "^Personal test acc|^\* accuracy|^global_test_acc_list|idxs_users" "$OUT/log.txt" | tail -n 4 || true

# 5. fixtures
if [ "$rc" = 0 ] && [ "$DUMP" = 1 ] && [ -n "$FIXTURES" ]; then
  cp "$OUT"/fixtures/* "$FIXTURES"/
  cp "$OUT/timings.jsonl" "$OUT/cmd.txt" "$FIXTURES"/
  [ -f "$OUT/check_world.json" ] && cp "$OUT/check_world.json" "$FIXTURES"/
  [ -f "$WORLD_DIR/world.json" ] && cp "$WORLD_DIR/world.json" "$FIXTURES"/world.json
  grep -vE "^\[harness\]" "$OUT/log.txt" | grep -E "idxs_users|^Personal test (acc|macro)|^\* (total|correct|accuracy)|^global_test_acc_list|Epoch on server|Final avg loss|xe_loss" > "$FIXTURES/log_summary.txt" || true
  echo "[fixtures] $(du -sh "$FIXTURES" | cut -f1) in $FIXTURES"
fi
exit $rc

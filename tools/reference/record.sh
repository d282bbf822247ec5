#!/usr/bin/env bash
# Record a reference run of the authors' FedPuReL code (github.com/shihaohou/FedPuReL, 20ce20a)
# as test fixtures. This is the project's own adaptation of the shared harness' runner
# (/work/shared/reference-harness/run_reference.sh): it keeps using the harness' patch and
# python helpers from $HARNESS_DIR (nothing of the authors' code lives in this repository) and
# adds, compared with run_reference.sh:
#   EXTRA_OPTS   extra yacs options appended to the command line, e.g.
#                EXTRA_OPTS="TRAINER.CLIPLORA.DROPOUT 0.0"
#   DUMP=1 by default, and FIXTURES=<dir>: after a successful run, the dump plus the run's
#                timings.jsonl are copied to <dir> (batch orders of the never-iterated "meta"
#                trainer are dropped; there are none in practice).
#   TRAIN_PER_CLASS / TEST_PER_CLASS: size of the synthetic data made when missing.
#   CLIP_DIR is made with make_tiny_clip.py --no-tokenizer when missing (only
#                tiny_clip_openai.pt is read by the reference).
#   MAIN_SCRIPT  the python entry point (default: the harness' ref_timed_main.py); e.g.
#                tools/reference/ref_capped_main.py, which caps steps, test batches and
#                clients for paper-scale timings (bench-vit-b16.sh).
# The knobs are those of run_reference.sh, but the defaults are the small setting of our
# fixtures (WORK=/tmp/fh-small, 5 clients, IF 10, 2 rounds, REF_REV=20ce20a, DUMP=1); see
# tools/reference/README.md for the exact commands that recorded tests/fixtures/reference-run-*.
set -euo pipefail

HARNESS_DIR=${HARNESS_DIR:-/work/shared/reference-harness}
WORK=${WORK:-/tmp/fh-small}
MIRROR=${MIRROR:?set MIRROR to a git clone or bare mirror of github.com/shihaohou/FedPuReL}
REF_REV=${REF_REV:-20ce20a}
VENV=${VENV:-/tmp/refenv}
PY="$VENV/bin/python"

PEFT=${PEFT:-prompt}                 # prompt | lora | adapter
ROUNDS=${ROUNDS:-2}
NUM_USERS=${NUM_USERS:-5}
FRAC=${FRAC:-0.4}
SEED=${SEED:-1}
BETA=${BETA:-1.0}
IMB_FACTOR=${IMB_FACTOR:-0.1}
LR=${LR:-0.001}
TRAIN_BATCH=${TRAIN_BATCH:-32}
TEST_BATCH=${TEST_BATCH:-128}
N_CTX=${N_CTX:-4}
LORA_RANK=${LORA_RANK:-8}
FUSION_LOSS_ALPHA=${FUSION_LOSS_ALPHA:-0.99}
TRAINER_CFG=${TRAINER_CFG:-vit_b16}
PREC=${PREC:-fp32}
NUM_WORKERS=${NUM_WORKERS:-0}
THREADS=${THREADS:-2}
DUMP=${DUMP:-1}
MAIN_SCRIPT=${MAIN_SCRIPT:-$HARNESS_DIR/ref_timed_main.py}
MAIN_SCRIPT=$(cd "$(dirname "$MAIN_SCRIPT")" && pwd)/$(basename "$MAIN_SCRIPT")   # the run cd's away
EXTRA_OPTS=${EXTRA_OPTS:-}
FIXTURES=${FIXTURES:-}
if [ -n "$FIXTURES" ]; then mkdir -p "$FIXTURES" && FIXTURES=$(cd "$FIXTURES" && pwd); fi   # the run cd's away
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-20}
TEST_PER_CLASS=${TEST_PER_CLASS:-5}
RUN_NAME=${RUN_NAME:-${PEFT}_r${ROUNDS}_u${NUM_USERS}_f${FRAC}_s${SEED}}
TREE=${TREE:-$WORK/ref-tree}
DATA_ROOT=${DATA_ROOT:-$WORK/DATA}
CLIP_DIR=${CLIP_DIR:-$WORK/tiny_clip}

# 1. fresh export + the harness' CPU patch (applied to the export under /tmp, never here)
rm -rf "$TREE" && mkdir -p "$TREE"
git -C "$MIRROR" archive "$REF_REV" | tar -x -C "$TREE"
git -C "$TREE" apply --verbose "$HARNESS_DIR/reference-cpu.patch" 2>&1 | sed 's/^/[patch] /'

# 2. inputs (seeded)
if [ ! -f "$DATA_ROOT/cifar-100/cifar-100-python/train" ]; then
  "$PY" "$HARNESS_DIR/make_cifar_like.py" --out "$DATA_ROOT" \
    --train-per-class "$TRAIN_PER_CLASS" --test-per-class "$TEST_PER_CLASS" > /dev/null
fi
if [ ! -f "$CLIP_DIR/tiny_clip_openai.pt" ]; then
  "$PY" "$HARNESS_DIR/make_tiny_clip.py" --out "$CLIP_DIR" --no-tokenizer > /dev/null
fi

# 3. run
OUT="$WORK/runs/$RUN_NAME"
rm -rf "$OUT" && mkdir -p "$OUT"
ARGS=(
  --root "$DATA_ROOT" --model fedavg --trainer FedPuReL --peft_type "$PEFT"
  --dataset cifar100_LT --dataset-config-file configs/datasets/cifar100_LT.yaml
  --config-file "configs/trainers/FedPuReL/${TRAINER_CFG}.yaml"
  --output-dir "$OUT/output" --seed "$SEED" --num_users "$NUM_USERS" --frac "$FRAC"
  --round "$ROUNDS" --lr "$LR" --train_batch_size "$TRAIN_BATCH" --test_batch_size "$TEST_BATCH"
  --partition noniid-labeldir100_LT --beta "$BETA" --imb_factor "$IMB_FACTOR" --num_classes 100
  --n_ctx "$N_CTX" --n_general 0 --csc False --ctx_init False --lora_rank "$LORA_RANK"
  --fusion_loss_alpha "$FUSION_LOSS_ALPHA"
  DATALOADER.NUM_WORKERS "$NUM_WORKERS"
  TRAINER.COOP.PREC "$PREC" TRAINER.PROMPTFL.PREC "$PREC" TRAINER.CLIPLORA.PREC "$PREC"
)
# shellcheck disable=SC2206
[ -n "$EXTRA_OPTS" ] && ARGS+=($EXTRA_OPTS)
printf '%q ' "$PY" "$MAIN_SCRIPT" "${ARGS[@]}" > "$OUT/cmd.txt"; echo >> "$OUT/cmd.txt"

cd "$TREE"
export FEDPUREL_CLIP_PATH="$CLIP_DIR/tiny_clip_openai.pt"
export FEDPUREL_SKIP_CIFAR_MD5=1
export HARNESS_THREADS="$THREADS" HARNESS_TIMINGS="$OUT/timings.jsonl"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
if [ "$DUMP" = 1 ]; then export HARNESS_DUMP_DIR="$OUT/fixtures"; else unset HARNESS_DUMP_DIR; fi
export CUDA_VISIBLE_DEVICES=""
export PYTHONWARNINGS="ignore::FutureWarning"
echo "[run] $RUN_NAME -> $OUT (log: $OUT/log.txt)"
set +e
/usr/bin/time -v -o "$OUT/time.txt" "$PY" "$MAIN_SCRIPT" "${ARGS[@]}" > "$OUT/log.txt" 2>&1
rc=$?
set -e
echo "[run] exit $rc; $(grep -E 'Elapsed|Maximum resident' "$OUT/time.txt" | sed 's/^\s*//' | paste -sd';')"
"$PY" "$HARNESS_DIR/summarize_timings.py" "$OUT" || true

# 4. fixtures
if [ "$rc" = 0 ] && [ "$DUMP" = 1 ] && [ -n "$FIXTURES" ]; then
  mkdir -p "$FIXTURES"
  for f in partition.json params_init.safetensors "$OUT"/fixtures/params_round*.safetensors \
           "$OUT"/fixtures/metrics_round*.json; do
    cp "$OUT/fixtures/$(basename "$f")" "$FIXTURES/"
  done
  grep -v '"trainer": "meta:' "$OUT/fixtures/batch_orders.jsonl" > "$FIXTURES/batch_orders.jsonl" || true
  cp "$OUT/timings.jsonl" "$FIXTURES/timings.jsonl"
  chmod 644 "$FIXTURES"/*   # safetensors writes 0600 files
  echo "[run] fixtures -> $FIXTURES"
fi
exit $rc

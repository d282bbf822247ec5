#!/usr/bin/env bash
# One rung of the demo-regime sweep (docs/demo-regime.md): zero-shot and PromptFL only,
# seeds 1,2,3, on the demo preset with the given PEFT kind, learning rate, world domain
# and world seed. Resumable (compare's grid skips finished cells).
#   tools/demo-regime/sweep.sh KIND LR [DOMAIN] [WORLD_SEED]
set -euo pipefail
kind=$1 lr=$2 domain=${3:-pretrain} ws=${4:-0}
bin=${FEDPUREL:-target/release/fedpurel}
out=runs/demo-regime/$domain-ws$ws/$kind-lr$lr
"$bin" compare --preset demo --algorithms zeroshot,promptfl --seeds 1,2,3 \
  --peft "$kind" --lr "$lr" --world-domain "$domain" --world-seed "$ws" \
  --out "$out" --cache-dir runs/feature-cache
python3 tools/demo-regime/premise.py "$out/compare.csv" || true

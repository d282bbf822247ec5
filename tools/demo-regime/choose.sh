#!/usr/bin/env bash
# The demo-regime rule for one PEFT kind (docs/demo-regime.md, criteria 2 and 3): climb
# the learning-rate ladder on world seed 0; at the first rung where the premise holds,
# check world seeds 1 and 2; the first rung that holds on all three is the kind's rate.
#   tools/demo-regime/choose.sh KIND [DOMAIN]
set -uo pipefail
kind=$1 domain=${2:-pretrain}
here=$(dirname "$0")
for lr in 1e-3 3e-3 1e-2 3e-2; do
  if bash "$here/sweep.sh" "$kind" "$lr" "$domain" 0 | tail -1 | tee /dev/stderr | grep -q HOLDS; then
    ok=1
    for ws in 1 2; do
      bash "$here/sweep.sh" "$kind" "$lr" "$domain" "$ws" | tail -1 | tee /dev/stderr | grep -q HOLDS || ok=0
    done
    if [ $ok = 1 ]; then
      echo "CHOSEN $kind lr $lr (premise holds on world seeds 0, 1, 2)"
      exit 0
    fi
  fi
done
echo "NONE $kind: the premise holds on no rung for all three world seeds"

#!/usr/bin/env python3
"""The demo-regime premise (docs/demo-regime.md, criterion 2) on one compare.csv:
PromptFL's GM Few below zero-shot's by more than 2 x the larger seed std, and its GM
Many above zero-shot's. Prints the numbers and HOLDS / FAILS; exits 0 when it holds,
1 when it fails."""
import csv
import sys

rows = {r["algorithm"]: r for r in csv.DictReader(open(sys.argv[1]))}
zs, pf = rows["zeroshot"], rows["promptfl"]


def num(row, key):
    v = row.get(key, "")
    return float(v) if v else 0.0


few_gap = num(zs, "gm_few_mean") - num(pf, "gm_few_mean")
sd = max(num(zs, "gm_few_std"), num(pf, "gm_few_std"))
many_gain = num(pf, "gm_many_mean") - num(zs, "gm_many_mean")
holds = few_gap > 2 * sd and many_gain > 0
print(
    f"{sys.argv[1]}: GM All zs {num(zs, 'gm_all_mean'):.2f} pf {num(pf, 'gm_all_mean'):.2f}"
    f" ± {num(pf, 'gm_all_std'):.2f}; GM Few zs {num(zs, 'gm_few_mean'):.2f} pf"
    f" {num(pf, 'gm_few_mean'):.2f} ± {num(pf, 'gm_few_std'):.2f} (gap {few_gap:+.2f},"
    f" 2·sd {2 * sd:.2f}); GM Many zs {num(zs, 'gm_many_mean'):.2f} pf"
    f" {num(pf, 'gm_many_mean'):.2f} ({many_gain:+.2f}) -> premise"
    f" {'HOLDS' if holds else 'FAILS'}"
)
sys.exit(0 if holds else 1)

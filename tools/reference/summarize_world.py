#!/usr/bin/env python3
"""Per-round table of a world reference run's fixtures (metrics_round*.json, timings.jsonl) and
consistency checks of the dump (FedAvg of the Stage-1 contexts with the META trainer's client
sizes == the recorded global context; batch-order lengths == the recorded split sizes).

  python tools/reference/summarize_world.py tests/fixtures/reference-run-world [> summary.md]
"""
import glob
import json
import os
import sys


def main():
    d = sys.argv[1]
    p = json.load(open(os.path.join(d, "partition.json")))
    w = [c["fedavg_weight"] for c in p["clients"]]
    orders = [json.loads(l) for l in open(os.path.join(d, "batch_orders.jsonl"))]
    timings = {}
    tp = os.path.join(d, "timings.jsonl")
    if os.path.exists(tp):
        for line in open(tp):
            r = json.loads(line)
            if r.get("event") == "round":
                timings[r["round"]] = r
    try:
        from safetensors.torch import load_file
    except ImportError:
        load_file = None
    rounds = sorted(int(f.split("metrics_round")[1].split(".")[0]) for f in glob.glob(os.path.join(d, "metrics_round*.json")))
    print(f"train {len(p['lt_train_rows'])} images, test {len(p['global_test_rows'])}; "
          f"head/mid/tail classes {len(p['head_classes'])}/{len(p['mid_classes'])}/{len(p['tail_classes'])}")
    print()
    print("| round | clients | GM acc % | GM macro-F1 % | PM mean acc % | PM mean macro-F1 % | wall s | others' CPU s | FedAvg check |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rounds:
        m = json.load(open(os.path.join(d, f"metrics_round{r}.json")))
        pm = m["personal_per_client"]
        cl = m["clients"]
        chk = ""
        if load_file is not None:
            t = load_file(os.path.join(d, f"params_round{r}.safetensors"))
            tot = sum(w[c] for c in cl)
            avg = sum(t[f"stage1/client{c}/prompt_learner.ctx"] * (w[c] / tot) for c in cl)
            chk = f"{(avg - t['global/prompt_learner.ctx']).abs().max().item():.1e}"
        for o in orders:
            if o["round"] == r:
                c = p["clients"][o["client"]]
                rows = c["train_rows"] if o["trainer"].startswith("global") else c["stage2_train_rows"]
                assert o["n"] == len(rows), (r, o["trainer"], o["client"])
        tm = timings.get(r, {})
        clients = "all" if len(cl) == len(p["clients"]) else " ".join(map(str, cl))
        print(f"| {r} | {clients} | {m['global']['acc']:.2f} | {m['global']['macro_f1']:.2f} | "
              f"{sum(pm['acc']) / len(pm['acc']):.4f} | {sum(pm['macro_f1']) / len(pm['macro_f1']):.4f} | "
              f"{tm.get('round_wall_s', float('nan')):.0f} | {tm.get('other_cpu_s', float('nan')):.0f} | {chk} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Summarize bench-vit-b16.sh: per-phase unit times of both sides, one extrapolation formula
for both to an 8-client round, round 0 and a 100-round run, and the FLOP-bound times.

  summarize_vit_b16.py OUT_DIR [prompt lora adapter]

Inputs in OUT_DIR: reference-<peft>-caps.json (ref_capped_main.py), reference-<peft>-timings.jsonl
(the harness' phase walls and setup), reference-<peft>-time.txt (/usr/bin/time -v),
fedpurel-<peft>.json (`bench round --record`), fedpurel-image-encoder.jsonl and
fedpurel-text-encoder.jsonl (`bench --json`).

The formula, the same for both sides, with the reference's partition counts (20 clients,
their train batches per client, 10 000 test images split over the clients):
  stage k of a round = steps × (seconds per step) + clients × (per-client seconds outside the steps)
  GM eval = 10 000 × (seconds per image) + fixed;  PM eval = 10 000 × (seconds per image) + 20 × per-client fixed
  8-client round: steps = 8 × mean train batches per client;  round 0: all 20 clients, every batch
  100 rounds = setup + round 0 + 99 × 8-client round
Reference step times are the wall time between successive `next()` calls of its training
loop (loading + compute of one batch); its per-client and per-evaluation fixed costs are the
phase wall time minus the steps. Ours has no separate fixed cost: our stage time divided by
our steps charges it to every step (against us), and our evaluation time is charged per image.
Our setup adds the one-off frozen feature extraction of every train and test image at the
`bench image-encoder` forward rate (our random model skips it).
"""
import json
import os
import re
import sys


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ref_side(d, peft):
    caps = json.load(open(os.path.join(d, f"reference-{peft}-caps.json")))
    tim = load_jsonl(os.path.join(d, f"reference-{peft}-timings.jsonl"))
    setup = next(r for r in tim if r["event"] == "setup")
    rnd = next(r for r in tim if r["event"] == "round")
    time_txt = open(os.path.join(d, f"reference-{peft}-time.txt")).read()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_txt).group(1)) / 1024
    walls = {k: p["wall_s"] for k, p in rnd["phases"].items()}
    passes = caps["passes"]

    def steps(phase):
        s = [t for p in passes if p["phase"] == phase for t in p["steps_s"]]
        return s, sum(p["images"] for p in passes if p["phase"] == phase)

    out = {"setup": setup["setup_s"], "peak_mib": rss, "sizes": caps["sizes"]}
    clients = len(caps["clients"])
    for stage, wall_key in (("stage1", "stage1_train"), ("stage2", "stage2_train")):
        s, _ = steps(stage)
        out[stage] = sum(s) / len(s)
        out[stage + "_fixed"] = max(0.0, walls[wall_key] - sum(s)) / clients
    for ev, wall_key, units in (("gm", "global_test", 1), ("pm", "personal_test", caps["caps"]["pm_clients"])):
        s, imgs = steps(ev)
        out[ev] = sum(s) / imgs
        out[ev + "_fixed"] = max(0.0, walls[wall_key] - sum(s)) / units
    out["measured_steps"] = {k: len(steps(k)[0]) for k in ("stage1", "stage2")}
    return out


def our_side(d, peft, extraction_per_image, sizes):
    r = json.load(open(os.path.join(d, f"fedpurel-{peft}.json")))
    rec = r["rounds"][0]["record"]
    # every train and test image of the full task once through the frozen tower
    n_images = sum(sizes["client_train_sizes"]) + sizes["global_test_size"]
    return {
        "setup_measured": r["setup_s"],
        "extraction": extraction_per_image * n_images,
        "setup": r["setup_s"] + extraction_per_image * n_images,
        "stage1": rec["stage1"]["seconds"] / rec["stage1"]["steps"],
        "stage2": rec["stage2"]["seconds"] / rec["stage2"]["steps"],
        "stage1_fixed": 0.0, "stage2_fixed": 0.0,
        "gm": rec["gm_seconds"] / r["global_test_size"], "gm_fixed": 0.0,
        "pm": rec["pm_seconds"] / sum(r["client_test_sizes"]), "pm_fixed": 0.0,
        "peak_mib": max(x["peak_mib"] or 0 for x in r["rounds"]),
        "measured_steps": {"stage1": rec["stage1"]["steps"], "stage2": rec["stage2"]["steps"]},
    }


def our_rounds(d, peft):
    """Our whole rounds as a run runs them (fedpurel-<peft>-rounds.json: `bench round`
    uncapped), or None when the sitting did not measure them."""
    path = os.path.join(d, f"fedpurel-{peft}-rounds.json")
    if not os.path.exists(path):
        return None
    r = json.load(open(path))
    return {
        "setup_measured": r["setup_s"],
        "overlapped": r.get("overlapped", False),
        "rounds": [{"clients": len(x["record"]["clients"]), "steps1": x["record"]["stage1"]["steps"],
                    "steps2": x["record"]["stage2"]["steps"], "wall": x["total_s"]} for x in r["rounds"]],
        "peak_mib": max(x["peak_mib"] or 0 for x in r["rounds"]),
    }


def round_phases(u, sizes, clients, steps1, steps2):
    """One round by the formula of the module doc: `clients` trained, `steps1` / `steps2`
    steps in stages 1 / 2, every test image evaluated."""
    n = len(sizes["client_train_batches"])
    return {
        "stage1": steps1 * u["stage1"] + clients * u["stage1_fixed"],
        "stage2": steps2 * u["stage2"] + clients * u["stage2_fixed"],
        "gm": sizes["global_test_size"] * u["gm"] + u["gm_fixed"],
        "pm": sum(sizes["client_test_sizes"]) * u["pm"] + n * u["pm_fixed"],
    }


def extrapolate(u, sizes):
    n = len(sizes["client_train_batches"])
    mean_batches = sum(sizes["client_train_batches"]) / n
    r8 = round_phases(u, sizes, 8, 8 * mean_batches, 8 * mean_batches)
    total_batches = sum(sizes["client_train_batches"])
    r0 = round_phases(u, sizes, n, total_batches, total_batches)
    total8, total0 = sum(r8.values()), sum(r0.values())
    return r8, total8, total0, u["setup"] + total0 + 99 * total8


def row(cells):
    return "| " + " | ".join(cells) + " |"


def rows_by_name(path):
    return {r["name"]: r for r in load_jsonl(path)}


def text_matmul_readings(d):
    """The 2048³ matmul rates (GFLOP/s) printed by the round benches (fedpurel-*.txt)."""
    readings = []
    for name in sorted(os.listdir(d)):
        if name.startswith("fedpurel-") and name.endswith(".txt"):
            for line in open(os.path.join(d, name)):
                m = re.match(r"matmul/\S+\s.*?([0-9.]+) GFLOP/s", line)
                if m:
                    readings.append(float(m.group(1)))
    return readings


def main():
    d = sys.argv[1]
    pefts = sys.argv[2:] or ["prompt", "lora", "adapter"]
    img = rows_by_name(os.path.join(d, "fedpurel-image-encoder.jsonl"))
    txt = rows_by_name(os.path.join(d, "fedpurel-text-encoder.jsonl"))
    fwd = img["image-encoder/vit-b16/forward"]
    fb = next(v for k, v in img.items() if "forward+lora-backward" in k)
    # The 2048³ matmul reads differently from one run to the next on this machine; the
    # bound uses the best reading of the sitting (each bench measures it once, the round
    # benches' text outputs included), the rate the machine showed it can reach.
    readings = [r["gflops_per_s"] for rows in (img, txt) for k, r in rows.items() if k.startswith("matmul/")]
    readings += text_matmul_readings(d)
    peak = max(readings)
    per_image_fwd = fwd["seconds"] / 32
    tfb = next(v for k, v in txt.items() if k.startswith("text-encoder/fast") and "forward+backward" in k)
    tf = next(v for k, v in txt.items() if k.startswith("text-encoder/fast") and k.endswith("/forward"))
    print(f"# ViT-B/16 side by side (bench-vit-b16.sh)\n")
    print(f"Matmul peak measured by our bench: {peak:.1f} GFLOP/s (the best of "
          f"{', '.join(f'{r:.1f}' for r in readings)} in this sitting). Our ViT-B/16 image forward: "
          f"{per_image_fwd * 1000:.0f} ms per image ({fwd['gflops_per_s']:.1f} GFLOP/s); "
          f"forward + LoRA backward (2 cotangents) of 32 images {fb['seconds']:.1f} s "
          f"({fb['gflops_per_s']:.1f} GFLOP/s).\n")
    # The forward under LoRA without a tape (evaluation, stage 2's global branch: the last
    # block for the class token alone) and with one (every block in full, as training
    # keeps it); older records have neither and count the plain forward for both.
    untaped = img.get("image-encoder/vit-b16/forward-with-lora", fwd)["gflop"]
    taped = img.get("image-encoder/vit-b16/forward-taped-with-lora", fwd)["gflop"]
    lora_b1 = (fb["gflop"] - taped) / 2  # one cotangent's backward (+ LoRA terms)
    text_b1 = (tfb["gflop"] - tf["gflop"]) / 2
    # GFLOP of the necessary work per unit: stage steps (32 images), evaluations per image
    flops = {
        "lora": {"stage1": fb["gflop"], "stage2": untaped + taped + lora_b1,
                 "gm": untaped / 32, "pm": untaped / 32},
        "prompt": {"stage1": tfb["gflop"], "stage2": tf["gflop"] + text_b1},
    }
    for peft in pefts:
        ref = ref_side(d, peft)
        sizes = ref["sizes"]
        ours = our_side(d, peft, per_image_fwd, sizes)
        print(f"## {peft}\n")
        print(f"Measured units (reference: {ref['measured_steps']['stage1']} + "
              f"{ref['measured_steps']['stage2']} timed steps; ours: {ours['measured_steps']['stage1']} + "
              f"{ours['measured_steps']['stage2']}):\n")
        print(row(["unit", "reference", "fedpurel", "ratio", "FLOP-bound (ours' work)", "fedpurel / bound"]))
        print(row(["---"] * 6))
        for k, label, scale, unit in (("stage1", "stage-1 step (32 images)", 1, "s"),
                                      ("stage2", "stage-2 step (32 images)", 1, "s"),
                                      ("gm", "GM eval per test image", 1000, "ms"),
                                      ("pm", "PM eval per test image", 1000, "ms")):
            f = flops.get(peft, {}).get(k)
            bound = f / peak if f else None
            print(row([label, f"{ref[k] * scale:.3g} {unit}", f"{ours[k] * scale:.3g} {unit}",
                       f"{ref[k] / ours[k]:.1f}×",
                       f"{bound * scale:.3g} {unit} ({f:.0f} GFLOP)" if bound else "–",
                       f"{ours[k] / bound:.2f}" if bound else "–"]))
        print(f"\nReference fixed costs outside the steps: {ref['stage1_fixed']:.1f} s / "
              f"{ref['stage2_fixed']:.1f} s per client (stages 1 / 2), GM {ref['gm_fixed']:.1f} s, "
              f"PM {ref['pm_fixed']:.1f} s per client.\n")
        r8r, t8r, t0r, t100r = extrapolate(ref, sizes)
        r8o, t8o, t0o, t100o = extrapolate(ours, sizes)
        print(row(["extrapolated", "reference", "fedpurel", "ratio"]))
        print(row(["---"] * 4))
        print(row(["setup", f"{ref['setup']:.0f} s",
                   f"{ours['setup']:.0f} s ({ours['setup_measured']:.0f} measured + "
                   f"{ours['extraction']:.0f} feature extraction)", f"{ref['setup'] / ours['setup']:.2f}×"]))
        for k in ("stage1", "stage2", "gm", "pm"):
            print(row([f"8-client round: {k}", f"{r8r[k]:.0f} s", f"{r8o[k]:.0f} s", f"{r8r[k] / r8o[k]:.1f}×"]))
        print(row(["8-client round", f"{t8r:.0f} s", f"{t8o:.0f} s", f"**{t8r / t8o:.1f}×**"]))
        print(row(["round 0 (20 clients)", f"{t0r:.0f} s", f"{t0o:.0f} s", f"{t0r / t0o:.1f}×"]))
        print(row(["100 rounds", f"{t100r / 3600:.1f} h", f"{t100o / 3600:.1f} h", f"**{t100r / t100o:.1f}×**"]))
        print(row(["peak RSS", f"{ref['peak_mib']:.0f} MiB", f"{ours['peak_mib']:.0f} MiB", ""]))
        print()
        measured = our_rounds(d, peft)
        if measured:
            print_measured_rounds(ref, ours, measured, sizes, flops.get(peft, {}), peak)


def print_measured_rounds(ref, ours, m, sizes, flops, peak):
    """Our rounds measured whole (clients at once, or the stage-1 chain beside the previous
    round's personalization and evaluation, as a run does) against the reference's
    extrapolation to the very same clients and steps."""
    how = "overlapped with the next round" if m["overlapped"] else "one after another"
    print(f"Our rounds measured whole (`bench round --rounds {len(m['rounds'])}`, no cap; {how}; "
          f"a round's wall is the time since the previous round ended). The reference is "
          f"extrapolated to the same clients and steps by the formula above:\n")
    print(row(["round", "clients", "steps (stage 1 / 2)", "reference", "fedpurel (measured)", "ratio",
               "FLOP bound (training)", "fedpurel / bound"]))
    print(row(["---"] * 8))
    tot_ref = tot_ours = tot_bound = 0.0
    for t, r in enumerate(m["rounds"]):
        theirs = sum(round_phases(ref, sizes, r["clients"], r["steps1"], r["steps2"]).values())
        f = flops.get("stage1", 0) * r["steps1"] + flops.get("stage2", 0) * r["steps2"]
        bound = f / peak if f else None
        tot_ref, tot_ours, tot_bound = tot_ref + theirs, tot_ours + r["wall"], tot_bound + (bound or 0)
        print(row([str(t), str(r["clients"]), f"{r['steps1']} / {r['steps2']}", f"{theirs:.0f} s",
                   f"{r['wall']:.1f} s", f"{theirs / r['wall']:.0f}×",
                   f"{bound:.1f} s" if bound else "–", f"{r['wall'] / bound:.2f}" if bound else "–"]))
    print(row([f"rounds 0–{len(m['rounds']) - 1}", "", "", f"{tot_ref:.0f} s", f"{tot_ours:.1f} s",
               f"**{tot_ref / tot_ours:.0f}×**", f"{tot_bound:.1f} s" if tot_bound else "–",
               f"**{tot_ours / tot_bound:.2f}**" if tot_bound else "–"]))
    # An 8-client round: the rounds that a later round overlapped (1 … R−2), each scaled
    # by its steps to 8 clients of mean size, as the reference's 8-client round.
    n = len(sizes["client_train_batches"])
    steps8 = 8 * sum(sizes["client_train_batches"]) / n
    mid = m["rounds"][1:-1] if m["overlapped"] else m["rounds"][1:]
    if mid:
        r8 = sum(r["wall"] * steps8 / r["steps1"] for r in mid) / len(mid)
        _, t8r, _, t100r = extrapolate(ref, sizes)
        setup = m["setup_measured"] + ours["extraction"]
        t100 = setup + m["rounds"][0]["wall"] + 99 * r8
        print()
        print(row(["from the measured rounds", "reference", "fedpurel", "ratio"]))
        print(row(["---"] * 4))
        print(row([f"8-client round ({steps8:.0f} steps a stage; measured rounds "
                   f"{', '.join(str(t + 1) for t in range(len(mid)))} scaled by steps)",
                   f"{t8r:.0f} s", f"{r8:.1f} s", f"**{t8r / r8:.0f}×**"]))
        print(row(["100 rounds (setup + feature extraction + measured round 0 + 99 × the 8-client round)",
                   f"{t100r / 3600:.1f} h", f"{t100 / 3600:.2f} h", f"**{t100r / t100:.0f}×**"]))
        print(row(["peak RSS", f"{ref['peak_mib']:.0f} MiB", f"{m['peak_mib']:.0f} MiB", ""]))
    print()


if __name__ == "__main__":
    main()

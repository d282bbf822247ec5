#!/usr/bin/env python3
"""A mock of `fedpurel export world --out DIR` (same layout, random pixels) for testing the world
reference pipeline before/without the Rust exporter. Not used for the recorded fixtures.

  python make_world_mock.py --out /tmp/fh-world/mock [--max-per-class 100 --imb 0.01 --test-per-class 10]

Layout written (see tools/reference/README-world.md):
  DIR/ImageNet_LT/{classnames.txt, ImageNet_LT_train.txt, ImageNet_LT_test.txt}
  DIR/train/cNN/tNNNNNN.png, DIR/test/cNN/eNNNNNN.png   (32x32 RGB, uniform noise)
  DIR/clip/{model.safetensors (OpenAI layout, converted from assets/demo-clip), config.json,
            tokenizer.json, vocab.json, merges.txt}
  DIR/world.json
World rows are assigned like a class-interleaved split (row r has class r mod 60); the LT train
list keeps the first int(max * imb^(c/59)) rows of class c.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = ["circle", "square", "triangle", "cross", "star"]
COLOURS = ["red", "green", "blue", "yellow"]
TEXTURES = ["plain", "striped", "dotted"]
NC = 60


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--clip", default=os.path.join(HERE, "..", "..", "assets", "demo-clip"))
    ap.add_argument("--max-per-class", type=int, default=100)
    ap.add_argument("--imb", type=float, default=0.01)
    ap.add_argument("--test-per-class", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    out = a.out
    if os.path.exists(out):
        shutil.rmtree(out)
    names = [f"{TEXTURES[c % 3]} {COLOURS[c % 4]} {SHAPES[c % 5]}" for c in range(NC)]
    os.makedirs(os.path.join(out, "ImageNet_LT"))
    with open(os.path.join(out, "ImageNet_LT", "classnames.txt"), "w") as f:
        for c in range(NC):
            f.write(f"c{c:02d} {names[c]}\n")
    counts = [int(a.max_per_class * a.imb ** (c / (NC - 1))) for c in range(NC)]
    tr_lines, te_lines = [], []
    for c in range(NC):
        os.makedirs(os.path.join(out, "train", f"c{c:02d}"))
        os.makedirs(os.path.join(out, "test", f"c{c:02d}"))
        for k in range(counts[c]):
            row = k * NC + c
            p = f"train/c{c:02d}/t{row:06d}.png"
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(os.path.join(out, p))
            tr_lines.append(f"{p} {c}\n")
        for k in range(a.test_per_class):
            row = k * NC + c
            p = f"test/c{c:02d}/e{row:06d}.png"
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(os.path.join(out, p))
            te_lines.append(f"{p} {c}\n")
    with open(os.path.join(out, "ImageNet_LT", "ImageNet_LT_train.txt"), "w") as f:
        f.writelines(tr_lines)
    with open(os.path.join(out, "ImageNet_LT", "ImageNet_LT_test.txt"), "w") as f:
        f.writelines(sorted(te_lines, key=lambda l: int(l.split()[0][-10:-4])))
    os.makedirs(os.path.join(out, "clip"))
    for fn in ("config.json", "tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copy(os.path.join(a.clip, fn), os.path.join(out, "clip", fn))
    sys.path.insert(0, HERE)
    from safetensors.torch import load_file, save_file
    import world_clip

    save_file(world_clip.hf_to_openai(load_file(os.path.join(a.clip, "model.safetensors"))),
              os.path.join(out, "clip", "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "world.json"), "w") as f:
        json.dump({"mock": True, "seed": a.seed, "class_names": names, "train_counts": counts,
                   "test_per_class": a.test_per_class, "template": "a photo of a {}."}, f, indent=1)
    print(f"mock world export: {out} ({sum(counts)} train, {NC * a.test_per_class} test)")


if __name__ == "__main__":
    main()

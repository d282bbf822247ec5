#!/usr/bin/env python3
"""Seed corpora for the fuzz targets (fuzz/corpus/<target>/), made from the real producers
where there is one: CIFAR pickles by Python's own pickle with numpy arrays (as torchvision's
files are), safetensors written in the format's byte layout, JSON by json, and small
versions of the repository's fixtures. Run from the repository root:

    python3 -m venv /tmp/seedenv && /tmp/seedenv/bin/pip install numpy
    /tmp/seedenv/bin/python fuzz/make_seeds.py

Deterministic: the same files every time. config.toml and partition.json seeds are written
by the fedpurel binary itself (see fuzz/README.md).
"""
import json
import os
import pickle
import struct

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
FIX = os.path.join(ROOT, "tests", "fixtures")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def cifar():
    rng = np.random.default_rng(0)
    n = 2
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    split = {
        "filenames": [f"img_{i}.png" for i in range(n)],
        "batch_label": "training batch 1 of 1",
        "fine_labels": [3, 97],
        "coarse_labels": [8, 19],
        "data": data,
    }
    meta = {
        "fine_label_names": ["apple", "aquarium_fish", "baby", "bear"],
        "coarse_label_names": ["aquatic_mammals", "fish"],
    }
    for proto in (2, 4, 5):
        put("cifar_pickle", f"train_p{proto}", pickle.dumps(split, protocol=proto))
        put("cifar_pickle", f"meta_p{proto}", pickle.dumps(meta, protocol=proto))
    # Python 2's files decode as latin1 bytes keys; protocol 2 with bytes keys mimics them.
    py2 = {k.encode(): v for k, v in split.items()}
    put("cifar_pickle", "train_bytes_keys", pickle.dumps(py2, protocol=2))
    records = b"".join(bytes([c, f]) + row.tobytes() for c, f, row in zip([8, 19], [3, 97], data))
    put("cifar_binary", "train.bin", records)
    put("cifar_binary", "fine_label_names.txt", "apple\naquarium_fish\nbaby\nbear\n")


def lists():
    put("list_files", "imagenet_lt_train.txt", "train/n01440764/n01440764_10026.JPEG 0\ntrain/n01443537/n01443537_2.JPEG 1\n")
    put("list_files", "places_lt_test.txt", "test_256/Places365_val_00000001.jpg 165\n")
    put("list_files", "classnames.txt", "n01440764 tench\nn01443537 goldfish\n")
    put("list_files", "categories_places365.txt", "/a/airfield 0\n/a/airplane_cabin 1\n")


def safetensors_bytes(tensors):
    """tensors: list of (name, shape); f32 data, values from a fixed pattern."""
    header, blobs, offset = {}, [], 0
    for name, shape in tensors:
        count = int(np.prod(shape)) if shape else 1
        blob = (np.arange(count, dtype=np.float32) % 7 / 7.0 - 0.4).astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def checkpoints():
    """The fixture's key sets at a micro size: vocabulary 40, context 8, widths 64 (one
    head, as OpenAI's inference needs width/64), MLP 64, patch 4 on an 8×8 image, one
    layer per tower, embedding 16."""
    dims = {64: 64, 128: 64, 256: 64, 512: 64, 49408: 40, 77: 8, 96: 16, 50: 5, 32: 4, 224: 8}
    for layout in ("hf", "openai"):
        path = os.path.join(FIX, "tiny-clip", layout, "model.safetensors")
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        keep = []
        for name, info in sorted(header.items()):
            if name == "__metadata__":
                continue
            if any(f"layers.{i}." in name or f"resblocks.{i}." in name for i in range(1, 12)):
                continue
            shape = info["shape"]
            qkv = "in_proj" in name
            new = [dims.get(d, d) if not (qkv and i == 0) else 3 * 64 for i, d in enumerate(shape)]
            keep.append((name, new))
        put("checkpoint", f"micro_{layout}.safetensors", safetensors_bytes(keep))
    put("checkpoint", "header_only.safetensors", safetensors_bytes([("logit_scale", [])]))


def configs():
    with open(os.path.join(FIX, "tiny-clip", "hf", "config.json")) as f:
        cfg = json.load(f)
    put("hf_config", "tiny.json", json.dumps(cfg, indent=1))
    cfg["text_config"]["hidden_act"] = "gelu"
    put("hf_config", "gelu.json", json.dumps(cfg))


def tokenizers():
    with open(os.path.join(FIX, "tokens_reference.json")) as f:
        ref = json.load(f)
    prompts = [p["text"] if isinstance(p, dict) else p for p in ref.get("prompts", [])][:40]
    for i, p in enumerate(prompts):
        put("tokenizer_input", f"prompt_{i:02d}", p)
    put("tokenizer_input", "long", "a photo of a " * 40)
    put("tokenizer_input", "unicode", "une photo d'un café — 写真 🙂\t\n")
    with open(os.path.join(FIX, "tiny-clip", "hf", "tokenizer.json")) as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    kept = {t: i for t, i in vocab.items() if i < 400 or t in ("<|startoftext|>", "<|endoftext|>")}
    merges = []
    for m in tj["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ")
        if a in kept and b in kept and (a + b) in kept:
            merges.append(m)
    tj["model"]["vocab"] = kept
    tj["model"]["merges"] = merges
    tj["added_tokens"] = [t for t in tj.get("added_tokens", []) if t["content"] in kept]
    put("tokenizer_files", "micro_tokenizer.json", json.dumps(tj))


if __name__ == "__main__":
    cifar()
    lists()
    checkpoints()
    configs()
    tokenizers()
    print("seeds written under", CORPUS)

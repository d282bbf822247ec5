#!/usr/bin/env python3
"""Write the pixels a Rust replay of a recorded reference run needs, as one safetensors file.

Usage (the venv of tools/reference/README.md, numpy + safetensors):
  python export_cifar_images.py --data /tmp/fh-small/DATA \
      --partition tests/fixtures/reference-run-lora/partition.json \
      --out tests/fixtures/reference-small-cifar/images.safetensors

Tensors (all rows in the CIFAR pickle's layout: 1024 R, 1024 G, 1024 B, each row-major 32x32):
  train_rows    int64 [n_lt]          partition.json's lt_train_rows, same order
  train_images  uint8 [n_lt, 3072]    the train-file rows listed in train_rows, in that order
  train_labels  int64 [n_train_file]  fine labels of every row of the train file
  test_images   uint8 [n_test, 3072]  every test-file row, in file order
  test_labels   int64 [n_test]
"""
import argparse
import json
import os
import pickle

import numpy as np
from safetensors.numpy import save_file


def load(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="the reference's --root (holds cifar-100/cifar-100-python)")
    p.add_argument("--partition", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    d = os.path.join(a.data, "cifar-100", "cifar-100-python")
    tr, te = load(os.path.join(d, "train")), load(os.path.join(d, "test"))
    rows = np.asarray(json.load(open(a.partition))["lt_train_rows"], dtype=np.int64)
    tr_data = np.asarray(tr["data"], dtype=np.uint8)
    te_data = np.asarray(te["data"], dtype=np.uint8)
    assert tr_data.shape[1] == 3072 and te_data.shape[1] == 3072
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    save_file({
        "train_rows": rows,
        "train_images": np.ascontiguousarray(tr_data[rows]),
        "train_labels": np.asarray(tr["fine_labels"], dtype=np.int64),
        "test_images": np.ascontiguousarray(te_data),
        "test_labels": np.asarray(te["fine_labels"], dtype=np.int64),
    }, a.out)
    print(f"{a.out}: {len(rows)} LT train rows of {tr_data.shape[0]}, {te_data.shape[0]} test rows")


if __name__ == "__main__":
    main()

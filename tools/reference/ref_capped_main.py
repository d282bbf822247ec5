#!/usr/bin/env python3
"""Run the authors' federated_main.py through the shared harness' ref_timed_main.py with
*caps* that make a paper-scale model (ViT-B/16) affordable on this CPU, and record what is
needed to extrapolate the capped run to a full round without scaling fixed costs.

Nothing the reference computes per step changes; only how many steps, test batches and
clients it runs:
  CAP_CLIENTS=C      the one timed round samples C clients (as a later round does, with the
                     reference's own np.random draw) instead of round 0's all-clients pass
  CAP_STEPS=S        each training DataLoader pass yields at most S batches
  CAP_TEST_BATCHES=E each test DataLoader pass yields at most E batches
  CAP_PM_CLIENTS=P   the personalized test evaluates only the first P clients
  CAP_RECORD=FILE    where the measurements go (one JSON object)

Each DataLoader pass is recorded with its phase (stage1, stage2, pm, gm), its full length
(batches, images) and the wall time of every step it delivered: a step is the time from one
`next()` call to the next, so it holds loading the batch and everything the training or
test loop does with it, and excludes the per-client work before and after the loop
(loading state dicts, building optimizers): the harness' phase wall times minus the
steps give that.

Run from the root of the exported, CPU-patched reference tree with federated_main's
arguments (bench-vit-b16.sh does this through record.sh's MAIN_SCRIPT).
"""
import argparse
import json
import os
import runpy
import sys
import time

HARNESS = os.environ.get("HARNESS_DIR", "/work/shared/reference-harness")
sys.path.insert(0, os.getcwd())

import torch.utils.data as _data  # noqa: E402
import torch.utils.data.dataloader as _dl  # noqa: E402

CAP_CLIENTS = int(os.environ.get("CAP_CLIENTS", "1"))
CAP_STEPS = int(os.environ.get("CAP_STEPS", "1"))
CAP_TEST_BATCHES = int(os.environ.get("CAP_TEST_BATCHES", "1"))
CAP_PM_CLIENTS = int(os.environ.get("CAP_PM_CLIENTS", "1"))
RECORD = os.environ["CAP_RECORD"]

state = {"phase": "setup", "passes": [], "sizes": None}

_orig_iter = _dl.DataLoader.__iter__
_orig_next = _dl._BaseDataLoaderIter.__next__


def _capped_iter(self):
    it = _orig_iter(self)
    test = isinstance(self.sampler, _data.SequentialSampler)
    it._cap_pass = {
        "phase": state["phase"],
        "kind": "test" if test else "train",
        "full_batches": len(self),
        "full_images": len(self.dataset),
        "images": 0,
        "steps_s": [],
    }
    it._cap = CAP_TEST_BATCHES if test else CAP_STEPS
    it._cap_t = None
    state["passes"].append(it._cap_pass)
    return it


def _capped_next(self):
    rec = getattr(self, "_cap_pass", None)
    if rec is None:
        return _orig_next(self)
    now = time.perf_counter()
    if self._cap_t is not None:
        rec["steps_s"].append(now - self._cap_t)
    self._cap_t = now
    if len(rec["steps_s"]) >= self._cap:
        raise StopIteration
    batch = _orig_next(self)
    if isinstance(batch, dict) and "img" in batch:
        rec["images"] += int(batch["img"].shape[0])
    return batch


_dl.DataLoader.__iter__ = _capped_iter
_dl._BaseDataLoaderIter.__next__ = _capped_next

import federated_main as fm  # noqa: E402  (ref_timed_main imports the same module object)


def _phase(name, f):
    def wrapped(*a, **k):
        state["phase"] = name
        return f(*a, **k)
    return wrapped


_orig_epoch = fm.run_fedpurel_epoch
_orig_aggregate = fm.PeftConfig.aggregate_global_params
_orig_eval_clients = fm.evaluate_clients_local


def _sizes(pc, cfg):
    n = cfg.DATASET.USERS
    lt, gt = pc.local_trainer, pc.global_trainer
    return {
        "client_train_sizes": [len(lt.fed_train_loader_x_dict[i].dataset) for i in range(n)],
        "client_train_batches": [len(gt.fed_train_loader_x_dict[i]) for i in range(n)],
        "client_test_sizes": [len(lt.fed_test_loader_x_dict[i].dataset) for i in range(n)],
        "global_test_size": len(gt.test_loader.dataset),
        "train_batch": gt.fed_train_loader_x_dict[0].batch_size,
        "test_batch": gt.test_loader.batch_size,
    }


def _capped_epoch(peft_config, epoch, args, cfg):
    if state["sizes"] is None:
        state["sizes"] = _sizes(peft_config, cfg)
    capped = argparse.Namespace(**vars(args))
    capped.frac = (CAP_CLIENTS + 0.5) / args.num_users  # int(frac * num_users) == CAP_CLIENTS
    state["phase"] = "stage1"
    # max(epoch, 1): sample clients as a later round does (round 0 trains all of them)
    idxs = _orig_epoch(peft_config, max(epoch, 1), capped, cfg)
    state["clients"] = [int(i) for i in idxs]
    return idxs


def _aggregate_then_stage2(self, *a, **k):
    r = _orig_aggregate(self, *a, **k)
    state["phase"] = "stage2"
    return r


def _pm_clients(all_users, *a, **k):
    return _orig_eval_clients(list(all_users)[:CAP_PM_CLIENTS], *a, **k)


fm.run_fedpurel_epoch = _capped_epoch
fm.PeftConfig.aggregate_global_params = _aggregate_then_stage2
fm.evaluate_clients_local = _pm_clients
fm.run_personal_test = _phase("pm", fm.run_personal_test)
fm.run_global_test = _phase("gm", fm.run_global_test)

try:
    sys.argv = [os.path.join(HARNESS, "ref_timed_main.py")] + sys.argv[1:]
    runpy.run_path(os.path.join(HARNESS, "ref_timed_main.py"), run_name="__main__")
finally:
    caps = {"clients": CAP_CLIENTS, "steps": CAP_STEPS, "test_batches": CAP_TEST_BATCHES,
            "pm_clients": CAP_PM_CLIENTS}
    out = dict(state, caps=caps)
    tmp = RECORD + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, RECORD)

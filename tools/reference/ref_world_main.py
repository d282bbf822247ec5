#!/usr/bin/env python3
"""Run the authors' federated_main.py on the world task: world_hooks.install(), then the shared
harness' ref_timed_main.py (which runs federated_main's own __main__ block with timing probes
and, with HARNESS_DUMP_DIR set, the fixture dump -- here world_dump.Dump).

Run from the root of the exported + CPU-patched reference tree, with federated_main's arguments:
  FEDPUREL_WORLD_DIR=DIR FEDPUREL_CLIP_PATH=.../world_clip_openai.pt \
  python tools/reference/ref_world_main.py --dataset-config-file configs/datasets/imagenet_LT.yaml ...
(record_world.sh does all of this.)
"""
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("HARNESS_DIR", "/work/shared/reference-harness")
sys.path.insert(0, os.getcwd())
sys.path.insert(1, HERE)

import world_hooks  # noqa: E402

world_hooks.install(os.environ["FEDPUREL_WORLD_DIR"])

if os.environ.get("HARNESS_DUMP_DIR"):
    import world_dump  # noqa: E402

    sys.modules["ref_dump"] = world_dump

sys.argv = [os.path.join(HARNESS, "ref_timed_main.py")] + sys.argv[1:]
runpy.run_path(os.path.join(HARNESS, "ref_timed_main.py"), run_name="__main__")

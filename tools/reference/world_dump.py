"""Fixture dump for the world run: the shared harness' ref_dump.Dump, adapted to the
ImageNet-LT reader (ref_dump's own partition hooks are CIFAR-only).

ref_world_main.py registers this module as `ref_dump` in sys.modules before the harness'
ref_timed_main.py runs, so ref_timed_main's `import ref_dump; ref_dump.Dump(S)` gets WorldDump.

Rows are OUR world indices, parsed from the file names the export wrote
(train/cNN/t000123.png -> world train row 123, test/cNN/e000045.png -> world test row 45).

IMPORTANT (a behaviour of the reference, not of this dump): ImageNet_LT's split
(generate_federated_dataset_imagenet + generate_balanced_federated_test) draws from numpy's
global RNG and, unlike the CIFAR path, never re-seeds it. federated_main builds three trainers,
each with its own DataManager, so the three get DIFFERENT client splits of the same data:
  meta   (PromptFL, built first): only len(train) per client is used = FedAvg weights
  global (GradPur):               Stage-1 training loaders (global test = the whole test list)
  local  (PromptFL):              Stage-2 training loaders and the personal test
partition.json therefore records all three (see tests/fixtures/reference-run-world/README.md).
"""
import importlib.util
import json
import os
import re

_HARNESS = os.environ.get("HARNESS_DIR", "/work/shared/reference-harness")
_spec = importlib.util.spec_from_file_location("_harness_ref_dump", os.path.join(_HARNESS, "ref_dump.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)

DIR = _base.DIR
_ROW = re.compile(r"[te](\d+)\.png$")


def row_of(impath):
    m = _ROW.search(os.path.basename(impath))
    assert m, impath
    return int(m.group(1))


class Dump(_base.Dump):
    def __init__(self, stats):
        super().__init__(stats)
        self.world_train = []   # per DataManager: the train Datum list (rows), in reader order
        self.world_fed = []     # per DataManager: per-client train rows
        self.world_test = []    # per DataManager: per-client test rows
        self.world_test_all = []

    def install(self, fm):
        super().install(fm)   # build_trainer, RandomSampler and evaluate_clients_local hooks
        import datasets.imagenet_LT as inlt

        cls = inlt.ImageNet_LT
        orig_fed = cls.generate_federated_dataset_imagenet
        orig_test = cls.generate_balanced_federated_test
        dump = self

        def fed(self_, data_source, *a, **k):
            out, counts = orig_fed(self_, data_source, *a, **k)
            dump.world_train.append([row_of(d.impath) for d in data_source])
            dump.world_fed.append([[row_of(d.impath) for d in lst] for lst in out])
            return out, counts

        def test(self_, test_data, *a, **k):
            out, counts = orig_test(self_, test_data, *a, **k)
            dump.world_test_all.append([row_of(d.impath) for d in test_data])
            dump.world_test.append([[row_of(d.impath) for d in lst] for lst in out])
            return out, counts

        cls.generate_federated_dataset_imagenet = fed
        cls.generate_balanced_federated_test = test

    def before_first_round(self, peft_config):
        for role, (name, t) in zip(("meta", "global", "local"), self.trainers):
            for c, loader in t.fed_train_loader_x_dict.items():
                self.sampler_tag[id(loader.sampler)] = (f"{role}:{name}", int(c))
        assert len(self.world_fed) == 3 and len(self.world_test) == 3, (len(self.world_fed), len(self.world_test))
        lt = self.world_train[0]
        assert all(x == lt for x in self.world_train), "train lists differ between trainers"
        assert all(x == self.world_test_all[0] for x in self.world_test_all)
        # the loaders really hold these lists (same order)
        for (role, (name, t)), fed, tst in zip(zip(("meta", "global", "local"), self.trainers),
                                               self.world_fed, self.world_test):
            for c in range(len(fed)):
                ds = t.fed_train_loader_x_dict[c].dataset.data_source
                assert [row_of(d.impath) for d in ds] == fed[c], (role, c)
                ds = t.fed_test_loader_x_dict[c].dataset.data_source
                assert [row_of(d.impath) for d in ds] == tst[c], (role, c)
        g_test = [row_of(d.impath) for d in self.trainers[1][1].test_loader.dataset.data_source]
        meta = self.trainers[0][1]
        cls_num = [int(x) for x in meta.cls_num_list]
        roles = {}
        for role, fed, tst in zip(("meta", "global", "local"), self.world_fed, self.world_test):
            roles[role] = [{"train_rows": fed[c], "test_rows": tst[c]} for c in range(len(fed))]
        n = len(roles["meta"])
        part = {
            "note": ("rows are world indices parsed from the exported file names (train rows index the "
                     "world train split, test rows the world test split). The reference builds three "
                     "trainers whose splits differ (numpy RNG not re-seeded between them): "
                     "clients[c].train_rows = the GLOBAL trainer's split (Stage 1), "
                     "clients[c].stage2_train_rows = the LOCAL trainer's split (Stage 2), "
                     "clients[c].test_rows = the LOCAL trainer's test split (personal test), "
                     "clients[c].fedavg_weight = len of the META trainer's split (FedAvg weight). "
                     "global_test_rows: the global test set in loader order. trainer_partitions: all three in full."),
            "lt_train_rows": lt,
            "cls_num_list": cls_num,
            "head_classes": [c for c, k in enumerate(cls_num) if k > 100],
            "mid_classes": [c for c, k in enumerate(cls_num) if 20 < k <= 100],
            "tail_classes": [c for c, k in enumerate(cls_num) if k <= 20],
            "global_test_rows": g_test,
            "clients": [{"train_rows": roles["global"][c]["train_rows"],
                         "test_rows": roles["local"][c]["test_rows"],
                         "stage2_train_rows": roles["local"][c]["train_rows"],
                         "fedavg_weight": len(roles["meta"][c]["train_rows"])} for c in range(n)],
            "trainer_partitions": roles,
        }
        with open(os.path.join(DIR, "partition.json"), "w") as f:
            json.dump(part, f)
        self.save("params_init.safetensors", {
            **{f"global/{k}": v for k, v in peft_config.base_global_sd.items() if peft_config.param_filter(k)},
            **{f"local/{k}": v for k, v in peft_config.base_local_sd.items() if peft_config.param_filter(k)},
        })

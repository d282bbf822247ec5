"""Run-time hooks that make the authors' FedPuReL code (github.com/shihaohou/FedPuReL, 20ce20a)
run on fedpurel's synthetic "world" task with the demo CLIP.

Nothing of the authors' code lives here: this module imports their modules (from the exported +
CPU-patched tree, which must be the current directory / on sys.path) and replaces a few names at
run time. `install(world_dir)` must run before the trainers build anything (ref_world_main.py
calls it before the harness' ref_timed_main.py starts federated_main's __main__ block).

`world_dir` is what `fedpurel export world --out DIR` writes (ImageNet-LT list layout):
  DIR/ImageNet_LT/{classnames.txt, ImageNet_LT_train.txt, ImageNet_LT_test.txt}
  DIR/train/cNN/tXXXXXX.png, DIR/test/cNN/eXXXXXX.png      (32x32 RGB)
  DIR/clip/{model.safetensors (OpenAI key layout), config.json (HF style), tokenizer.json, ...}

The hooks (each one is listed, with its reason, in tools/reference/README-world.md):
  H1 heads      clip.model.build_model derives the head counts as width // 64 (96//64 = 1 for the
                vision tower, 64//64 = 1 for the text tower); the demo CLIP has 3 and 2 heads
                (head width 32). We substitute subclasses of clip.model.VisionTransformer and
                clip.model.CLIP whose constructors take the head counts from DIR/clip/config.json.
                Parameter shapes, names and the order of torch RNG draws are unchanged.
  H2 fp32       clip.model.convert_weights (called by build_model) casts every weight to fp16;
                the trainers call .float() afterwards, so the demo CLIP's f32 weights would be
                rounded to fp16 precision. It is made a no-op (the run is fp32 throughout: PREC fp32).
  H3 tokenizer  clip.clip.tokenize / clip.tokenize and SimpleTokenizer.encode use CLIP's 49k BPE;
                they are replaced by the world's tokenizer.json (python `tokenizers`): ids
                [bos 603] + BPE + [eos 604], zero-padded to 77 (eos = the largest id, so the
                reference's argmax pooling finds it). encode() (used only for name_lens) returns
                the ids without the specials.
  H4 transforms Dassl's build_transform (as imported by data_manager) is replaced, for train AND
                test, by ToTensor -> Normalize(CLIP mean/std from cfg.INPUT.PIXEL_MEAN/STD) at the
                native 32 px: no resize, no crop, no flip (fedpurel's `native` transform).
                (INPUT.SIZE is also set to (32, 32) on the command line: the prompt learner
                asserts cfg.INPUT.SIZE[0] == the CLIP's input resolution.)
  H5 data root  datasets/imagenet_LT.py hard-codes root = "/root/autodl-tmp/imagenet"; the
                module's `os` is replaced by a proxy whose os.path.join maps that prefix to
                world_dir (everything else passes through to the real os).
  H6 listing    imagenet_LT's listdir_nohidden(path) is called without sort=True, so the order of
                the training Datum list (which the Dirichlet split consumes) would depend on the
                file system's directory order. We pass sort=True: each class's images in file-name
                order (= ascending world row). The split code itself is unchanged.
"""
import json
import os

HARD_ROOT = "/root/autodl-tmp/imagenet"
INSTALLED = {}


def _load_world_tokenizer(world_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(world_dir, "clip", "tokenizer.json"))
    return tok


def install(world_dir, verbose=True):
    """Install every hook; returns a dict describing them (also kept in INSTALLED)."""
    import torch

    world_dir = os.path.abspath(world_dir)
    with open(os.path.join(world_dir, "clip", "config.json")) as f:
        hf_cfg = json.load(f)
    vision_heads = int(hf_cfg["vision_config"]["num_attention_heads"])
    text_heads = int(hf_cfg["text_config"]["num_attention_heads"])

    # ---- H1 heads ---------------------------------------------------------------------------
    import clip.model as cm

    OrigVT = cm.VisionTransformer
    OrigCLIP = cm.CLIP

    class WorldVisionTransformer(OrigVT):
        def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim,
                     design_details=None):
            super().__init__(input_resolution, patch_size, width, layers, vision_heads,
                             output_dim, design_details)

    class WorldCLIP(OrigCLIP):
        def __init__(self, embed_dim, image_resolution, vision_layers, vision_width,
                     vision_patch_size, context_length, vocab_size, transformer_width,
                     transformer_heads, transformer_layers, design_details):
            super().__init__(embed_dim, image_resolution, vision_layers, vision_width,
                             vision_patch_size, context_length, vocab_size, transformer_width,
                             text_heads, transformer_layers, design_details)

    cm.VisionTransformer = WorldVisionTransformer
    cm.CLIP = WorldCLIP

    # ---- H2 keep f32 weights ----------------------------------------------------------------
    def convert_weights_noop(model):
        return None

    cm.convert_weights = convert_weights_noop

    # ---- H3 tokenizer -----------------------------------------------------------------------
    import clip as clip_pkg
    import clip.clip as cc
    import clip.simple_tokenizer as cst

    tok = _load_world_tokenizer(world_dir)
    vocab_size = tok.get_vocab_size()
    bos = tok.token_to_id("<|startoftext|>")
    eos = tok.token_to_id("<|endoftext|>")
    assert eos == vocab_size - 1, (eos, vocab_size)

    def world_tokenize(texts, context_length=77, truncate=False):
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = tok.encode(t).ids
            assert ids[0] == bos and ids[-1] == eos, (t, ids)
            if len(ids) > context_length:
                if not truncate:
                    raise RuntimeError(f"Input {t} is too long for context length {context_length}")
                ids = ids[:context_length]
                ids[-1] = eos
            out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def world_encode(self, text):
        return list(tok.encode(text, add_special_tokens=False).ids)

    cc.tokenize = world_tokenize
    if hasattr(clip_pkg, "tokenize"):
        clip_pkg.tokenize = world_tokenize
    cst.SimpleTokenizer.encode = world_encode

    # ---- H4 transforms ----------------------------------------------------------------------
    import torchvision.transforms as T
    import Dassl.dassl.data.data_manager as dm

    def world_build_transform(cfg, is_train=True, choices=None):
        print(f"[world-hooks] native transform ({'train' if is_train else 'test'}): "
              f"ToTensor -> Normalize(mean={list(cfg.INPUT.PIXEL_MEAN)}, std={list(cfg.INPUT.PIXEL_STD)})")
        return T.Compose([T.ToTensor(), T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)])

    dm.build_transform = world_build_transform

    # ---- H5 data root, H6 sorted listing -----------------------------------------------------
    import datasets.imagenet_LT as inlt

    class _PathProxy:
        def __getattr__(self, name):
            return getattr(os.path, name)

        @staticmethod
        def join(a, *p):
            if a == HARD_ROOT or a.startswith(HARD_ROOT + "/"):
                a = world_dir + a[len(HARD_ROOT):]
            return os.path.join(a, *p)

    class _OsProxy:
        path = _PathProxy()

        def __getattr__(self, name):
            return getattr(os, name)

    inlt.os = _OsProxy()
    orig_listdir = inlt.listdir_nohidden

    def listdir_sorted(path, sort=False):
        return orig_listdir(path, sort=True)

    inlt.listdir_nohidden = listdir_sorted

    info = {"world_dir": world_dir, "vision_heads": vision_heads, "text_heads": text_heads,
            "bos": bos, "eos": eos, "vocab_size": vocab_size}
    INSTALLED.update(info)
    if verbose:
        print("[world-hooks] installed " + json.dumps(info), flush=True)
    return info

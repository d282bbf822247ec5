#!/usr/bin/env python3
"""Checks of the world hooks (our code), run from the root of the exported + patched reference tree:

  FEDPUREL_WORLD_DIR=DIR FEDPUREL_CLIP_PATH=.../world_clip_openai.pt \
    python tools/reference/check_world.py [--hf assets/demo-clip] [--json out.json]

1. the reference CLIP (trainers/purelPromptGP.load_clip_to_cpu -> clip.build_model, with the
   hooks) vs transformers.CLIPModel on the HF-layout demo CLIP: image/text embeddings and logits
   on world images and prompts, max abs diff;
2. tokenizer: ids of "X X X X {name}." and "a photo of a {name}." (the 4 X's must be 4 single
   tokens), the reference PromptLearner's tokenized prompts and token_prefix/suffix split;
3. the transform: what the reference's DataManager loaders give == (PNG/255 - mean)/std;
4. zero-shot top-1 of the reference model on the whole exported test list ("a photo of a {}.").
"""
import argparse
import json
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.getcwd())
sys.path.insert(1, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import world_hooks  # noqa: E402

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", default=os.path.join(HERE, "..", "..", "assets", "demo-clip"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--n-images", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(2)
    wd = os.environ["FEDPUREL_WORLD_DIR"]
    info = world_hooks.install(wd)
    res = {"hooks": info}

    from clip import clip as cc
    import Dassl.dassl.engine  # noqa: F401  (import order of federated_main; avoids a circular import)
    import trainers.purelPromptGP as gp

    cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(BACKBONE=types.SimpleNamespace(NAME="ViT-B/16")))
    ref = gp.load_clip_to_cpu(cfg).float().eval()
    res["ref_arch"] = {"vision_heads": ref.visual.transformer.resblocks[0].attn.num_heads,
                       "text_heads": ref.transformer.resblocks[0].attn.num_heads,
                       "dtype": str(ref.dtype), "input_resolution": ref.visual.input_resolution,
                       "logit_scale": float(ref.logit_scale), "logit_scale_exp": float(ref.logit_scale.exp())}

    # names and lists
    names = []
    with open(os.path.join(wd, "ImageNet_LT", "classnames.txt")) as f:
        for line in f:
            p = line.strip().split(" ")
            names.append(" ".join(p[1:]))
    test = []
    with open(os.path.join(wd, "ImageNet_LT", "ImageNet_LT_test.txt")) as f:
        for line in f:
            p, l = line.split()
            test.append((os.path.join(wd, p), int(l)))

    def native(path):
        x = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
        return torch.from_numpy(x.transpose(2, 0, 1).copy())

    # 3. transform: the hooked build_transform (what DataManager uses) vs our formula
    import Dassl.dassl.data.data_manager as dm
    tcfg = types.SimpleNamespace(INPUT=types.SimpleNamespace(PIXEL_MEAN=list(MEAN), PIXEL_STD=list(STD)))
    tf = dm.build_transform(tcfg, is_train=True)
    d = max((tf(Image.open(p).convert("RGB")) - native(p)).abs().max().item() for p, _ in test[:8])
    res["transform_max_abs_diff"] = d

    # 2. tokenizer
    def ids(t):
        r = cc.tokenize(t)[0]
        return [int(i) for i in r[: int(r.argmax()) + 1]]

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(wd, "clip", "tokenizer.json"))
    res["tokens"] = {
        "X": tok.encode("X", add_special_tokens=False).ids,
        "X_token_string": tok.encode("X", add_special_tokens=False).tokens,
        "x": tok.encode("x", add_special_tokens=False).ids,
        "X X X X {names[0]}.".replace("{names[0]}", names[0]): ids(f"X X X X {names[0]}."),
        f"a photo of a {names[0]}.": ids(f"a photo of a {names[0]}."),
    }
    xid = tok.encode("X", add_special_tokens=False).ids
    assert len(xid) == 1, xid
    ok = True
    for n in names:
        t = ids(f"X X X X {n}.")
        ok &= t[1:5] == xid * 4 and t[0] == info["bos"] and t[-1] == info["eos"]
    res["tokens"]["all_60_prompts_have_4_single_X"] = bool(ok)
    assert ok

    # the reference PromptLearner (PromptFL = local trainer) on the world names
    import trainers.purelPrompt as pp
    pcfg = types.SimpleNamespace(
        TRAINER=types.SimpleNamespace(PROMPTFL=types.SimpleNamespace(N_CTX=4, CSC=False, CTX_INIT=False, PREC="fp32",
                                                                      CLASS_TOKEN_POSITION="end", n_general=0)),
        INPUT=types.SimpleNamespace(SIZE=(32, 32)))
    try:
        pl = pp.PromptLearner(pcfg, names, ref)
        tp = pl.tokenized_prompts
        res["prompt_learner"] = {"tokenized_prompt_class0": [int(i) for i in tp[0][: int(tp[0].argmax()) + 1]],
                                 "n_cls": int(tp.shape[0]), "prefix_shape": list(pl.token_prefix.shape),
                                 "suffix_shape": list(pl.token_suffix.shape)}
    except Exception as e:  # report, do not fail the feature check
        res["prompt_learner"] = {"error": repr(e)}

    # 1. features: reference vs HF
    from transformers import CLIPModel
    hf = CLIPModel.from_pretrained(a.hf).float().eval()
    step = max(1, len(test) // a.n_images)
    pix = torch.stack([native(p) for p, _ in test[::step][: a.n_images]])
    prompts = [f"a photo of a {n}." for n in names] + [f"X X X X {n}." for n in names[:8]]
    toks = cc.tokenize(prompts)
    with torch.no_grad():
        ri = ref.encode_image(pix)
        rt = ref.encode_text(toks)
        hi = hf.get_image_features(pixel_values=pix)
        ht = hf.get_text_features(input_ids=toks)
        hi = hi if torch.is_tensor(hi) else hi.pooler_output
        ht = ht if torch.is_tensor(ht) else ht.pooler_output
        rin, rtn = ri / ri.norm(dim=-1, keepdim=True), rt / rt.norm(dim=-1, keepdim=True)
        hin, htn = hi / hi.norm(dim=-1, keepdim=True), ht / ht.norm(dim=-1, keepdim=True)
        rl = ref.logit_scale.exp() * rin @ rtn.t()
        hl = hf.logit_scale.exp() * hin @ htn.t()
    res["features"] = {
        "n_images": int(pix.shape[0]), "n_prompts": len(prompts),
        "image_embeds_max_abs_diff": (ri - hi).abs().max().item(),
        "image_embeds_abs_max": ri.abs().max().item(),
        "text_embeds_max_abs_diff": (rt - ht).abs().max().item(),
        "text_embeds_abs_max": rt.abs().max().item(),
        "image_normalized_max_abs_diff": (rin - hin).abs().max().item(),
        "text_normalized_max_abs_diff": (rtn - htn).abs().max().item(),
        "logits_max_abs_diff": (rl - hl).abs().max().item(),
        "logits_abs_max": rl.abs().max().item(),
        "argmax_equal": bool((rl.argmax(1) == hl.argmax(1)).all()),
    }

    # 4. zero-shot of the reference model on the exported test list
    with torch.no_grad():
        tf_ = ref.encode_text(cc.tokenize([f"a photo of a {n}." for n in names]))
        tf_ = tf_ / tf_.norm(dim=-1, keepdim=True)
        correct = 0
        for i in range(0, len(test), 256):
            chunk = test[i:i + 256]
            x = torch.stack([native(p) for p, _ in chunk])
            f_ = ref.encode_image(x)
            f_ = f_ / f_.norm(dim=-1, keepdim=True)
            pred = (f_ @ tf_.t()).argmax(1)
            correct += int((pred == torch.tensor([l for _, l in chunk])).sum())
    res["zero_shot_reference"] = {"images": len(test), "correct": correct, "top1": 100.0 * correct / len(test)}
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

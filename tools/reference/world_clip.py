#!/usr/bin/env python3
"""Demo-CLIP checkpoint conversions for the world reference run (our own code).

  hf2openai  HF CLIPModel safetensors -> OpenAI-layout safetensors (only for the mock export;
             `fedpurel export world` writes DIR/clip/model.safetensors in OpenAI layout itself)
  topt       OpenAI-layout safetensors -> the plain state-dict .pt that the trainers'
             load_clip_to_cpu() reads through clip._download() -> $FEDPUREL_CLIP_PATH
             (torch.jit.load fails on it, torch.load succeeds, then clip.build_model)

Key mapping: /work/shared/reference-harness/README.md ("OpenAI -> Hugging Face names").
"""
import argparse
import re
import sys


def hf_to_openai(hf):
    import torch

    out = {}
    for tower, pre in (("text_model.encoder.layers", "transformer.resblocks"),
                       ("vision_model.encoder.layers", "visual.transformer.resblocks")):
        layers = sorted({int(m.group(1)) for k in hf for m in [re.match(re.escape(tower) + r"\.(\d+)\.", k)] if m})
        for i in layers:
            s, d = f"{tower}.{i}.", f"{pre}.{i}."
            out[d + "attn.in_proj_weight"] = torch.cat([hf[s + f"self_attn.{x}_proj.weight"] for x in "qkv"], 0)
            out[d + "attn.in_proj_bias"] = torch.cat([hf[s + f"self_attn.{x}_proj.bias"] for x in "qkv"], 0)
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"), ("ln_2", "layer_norm2")):
                for w in ("weight", "bias"):
                    out[d + f"{a}.{w}"] = hf[s + f"{b}.{w}"]
    simple = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "logit_scale": "logit_scale",
    }
    for a, b in simple.items():
        out[a] = hf[b]
    out["text_projection"] = hf["text_projection.weight"].t()
    out["visual.proj"] = hf["visual_projection.weight"].t()
    used = set(simple.values()) | {"text_projection.weight", "visual_projection.weight"}
    left = [k for k in hf if k not in used and ".encoder.layers." not in k and "position_ids" not in k]
    assert not left, left
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf2openai")
    a.add_argument("src")
    a.add_argument("dst")
    b = sub.add_parser("topt")
    b.add_argument("src")
    b.add_argument("dst")
    args = ap.parse_args()
    import torch
    from safetensors.torch import load_file, save_file

    if args.cmd == "hf2openai":
        sd = hf_to_openai(load_file(args.src))
        save_file(sd, args.dst, metadata={"format": "pt"})
    else:
        sd = load_file(args.src)
        torch.save({k: v.float().contiguous() for k, v in sd.items()}, args.dst)
    print(f"{args.cmd}: {args.src} -> {args.dst} ({len(sd)} tensors)", file=sys.stderr)


if __name__ == "__main__":
    main()

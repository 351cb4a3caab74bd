#!/usr/bin/env python3
"""Regenerates tests/goldens/hf/: logits of HF transformers on shardlm's tiny models.

For each tiny model below, `shardlm make-tiny-model` writes the checkpoint (seeded, the same bytes
on any machine), HF transformers loads it on the CPU in float64 (bf16/f16 weights are upcast
exactly, so the reference is the exact math of those weights) and decodes greedily with its own
KV cache. We keep, per prompt, the generated ids and the logits row that chose each of them.
The C++ test tests/goldens/hf_golden_test.cpp regenerates each model, checks its bytes (FNV-1a
64 of model.safetensors) and compares shardlm's logits with these.

Usage: python3 scripts/make-goldens.py [--shardlm build/bin/shardlm] [--out tests/goldens/hf]
Needs: pip install torch transformers safetensors numpy (CI does not: the goldens are committed).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

VOCAB = 256
STEPS = 8
PROMPTS = [
    [1, 17, 42, 99, 3],
    [5, 200, 31, 31, 7, 128, 64, 250, 2, 9, 77],
]
# name -> make-tiny-model arguments (vocab and seed added below).
MODELS = {
    "llama-8h-2kv": dict(arch="llama", layers=2, hidden=64, heads=8, kv_heads=2, intermediate=128, seed=1),
    "llama-9h-3kv": dict(arch="llama", layers=2, hidden=72, heads=9, kv_heads=3, intermediate=160, seed=2),
    "llama-4h-1kv": dict(arch="llama", layers=2, hidden=64, heads=4, kv_heads=1, intermediate=96, seed=3),
    "qwen2-bias": dict(arch="qwen2", layers=2, hidden=64, heads=8, kv_heads=2, intermediate=128, seed=4),
    "mistral-swa": dict(arch="mistral", layers=2, hidden=64, heads=8, kv_heads=4, intermediate=128, seed=5),
    "llama-bf16": dict(arch="llama", layers=2, hidden=64, heads=8, kv_heads=2, intermediate=128, seed=6, dtype="bf16"),
    "llama-f16": dict(arch="llama", layers=2, hidden=64, heads=8, kv_heads=2, intermediate=128, seed=7, dtype="f16"),
    "llama-tied": dict(arch="llama", layers=2, hidden=64, heads=8, kv_heads=2, intermediate=128, seed=8, tie_embeddings=True),
    # Issue 15's families (TinyModelConfig switches each family's features on).
    "qwen3-hd24": dict(arch="qwen3", layers=2, hidden=64, heads=4, kv_heads=2, intermediate=96, head_dim=24, seed=9),
    "gemma3": dict(arch="gemma3", layers=4, hidden=64, heads=4, kv_heads=1, intermediate=128, seed=10),
    "phi3-longrope": dict(arch="phi3", layers=2, hidden=72, heads=9, kv_heads=3, intermediate=96, seed=11),
    "glm": dict(arch="glm", layers=2, hidden=64, heads=4, kv_heads=2, intermediate=96, seed=12),
    "glm4": dict(arch="glm4", layers=2, hidden=64, heads=4, kv_heads=2, intermediate=96, seed=13),
    # Issue 16: mixtures of experts (4 experts top-2 renormalised; 6 experts top-3 not
    # renormalised, the last layer dense).
    "mixtral": dict(arch="mixtral", layers=2, hidden=64, heads=4, kv_heads=2, intermediate=96, seed=14),
    "qwen3-moe": dict(arch="qwen3_moe", layers=3, hidden=64, heads=4, kv_heads=2, intermediate=96, seed=15),
}


def fnv1a64(path):
    h = 0xCBF29CE484222325
    data = open(path, "rb").read()
    # Vectorised FNV-1a is awkward; files are small (< 1 MiB), a plain loop is fine.
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def make_args(spec):
    args = ["--vocab", str(VOCAB)]
    for key, value in spec.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        else:
            args += [flag, str(value)]
    return args


def hf_greedy(model, torch, prompt):
    """Greedy decode with HF's own KV cache; returns (ids, logits rows as float64)."""
    from transformers import DynamicCache

    ids, rows = [], []
    cache = DynamicCache(config=model.config)
    inp = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        for _ in range(STEPS):
            out = model(input_ids=inp, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            row = out.logits[0, -1].double()
            nxt = int(torch.argmax(row))
            rows.append(row.numpy())
            ids.append(nxt)
            inp = torch.tensor([[nxt]], dtype=torch.long)
    return ids, np.stack(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardlm", default="build/bin/shardlm")
    ap.add_argument("--out", default="tests/goldens/hf")
    ap.add_argument("--only", default="",
                    help="comma-separated model names: regenerate just these, keep the others' entries")
    opts = ap.parse_args()
    only = [n for n in opts.only.split(",") if n]

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    os.makedirs(opts.out, exist_ok=True)
    old = {}
    manifest_path = os.path.join(opts.out, "manifest.json")
    if only and os.path.exists(manifest_path):
        old = {m["name"]: m for m in json.load(open(manifest_path))["models"]}
    manifest = {
        "generator": "scripts/make-goldens.py",
        "reference": "HF transformers %s, torch %s, CPU, float64, eager attention" % (
            transformers.__version__, torch.__version__.split("+")[0]),
        "steps": STEPS,
        "prompts": PROMPTS,
        "models": [],
    }
    for name, spec in MODELS.items():
        if only and name not in only:
            if name in old:
                manifest["models"].append(old[name])
            continue
        with tempfile.TemporaryDirectory() as tmp:
            args = make_args(spec)
            subprocess.run([opts.shardlm, "make-tiny-model", "--out", tmp] + args, check=True,
                           stdout=subprocess.DEVNULL)
            model = AutoModelForCausalLM.from_pretrained(
                tmp, dtype=torch.float64, attn_implementation="eager", **({"experts_implementation": "eager"} if spec["arch"] in ("mixtral", "qwen3_moe") else {}))
            model.eval()
            entry = {"name": name, "make_tiny_model_args": args,
                     "reference": "HF transformers %s, torch %s" % (
                         transformers.__version__, torch.__version__.split("+")[0]),
                     "safetensors_fnv1a64": fnv1a64(os.path.join(tmp, "model.safetensors")),
                     "logits_file": name + ".logits.f32", "outputs": []}
            all_rows = []
            for prompt in PROMPTS:
                ids, rows = hf_greedy(model, torch, prompt)
                entry["outputs"].append({"ids": ids,
                                         "max_abs_logit": float(np.abs(rows).max())})
                all_rows.append(rows)
            logits = np.concatenate(all_rows).astype("<f4")
            logits.tofile(os.path.join(opts.out, entry["logits_file"]))
            manifest["models"].append(entry)
            print("%-14s ids %s" % (name, [o["ids"] for o in entry["outputs"]]), file=sys.stderr)
    with open(os.path.join(opts.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

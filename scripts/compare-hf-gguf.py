#!/usr/bin/env python3
"""A second, exact reference for SmolLM2 Q4_1: HF transformers loads the GGUF (dequantizing every
tensor to float32 with the `gguf` package) and runs the same teacher-forced sequences as
tests/goldens/llamacpp/smollm2.json. Writes tests/goldens/llamacpp/smollm2_hf.json: per prompt and
step, HF's logits at llama.cpp's top-32 ids and HF's own top-1. llamacpp_test requires shardlm to
match these closely; the gap to llama.cpp itself is llama.cpp's own rounding.

Usage: python3 scripts/compare-hf-gguf.py   (needs: pip install torch transformers gguf accelerate)
"""
import json

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

GOLDEN = "tests/goldens/llamacpp/smollm2.json"
OUT = "tests/goldens/llamacpp/smollm2_hf.json"


def main():
    golden = json.load(open(GOLDEN))
    model = AutoModelForCausalLM.from_pretrained("models", gguf_file=golden["model"],
                                                 dtype=torch.float32)
    model.eval()
    out = {"generator": "scripts/compare-hf-gguf.py",
           "reference": "HF transformers %s on the dequantized GGUF, float32, CPU" %
                        transformers.__version__,
           "prompts": []}
    for p in golden["prompts"]:
        seq = p["prompt_ids"] + p["generated_ids"][:-1]
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0].double().numpy()
        steps = []
        for k, top in enumerate(p["top"]):
            row = logits[len(p["prompt_ids"]) - 1 + k]
            steps.append({"top1": int(np.argmax(row)),
                          "logits": [round(float(row[i]), 5) for i in top["ids"]]})
        out["prompts"].append({"steps": steps})
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()

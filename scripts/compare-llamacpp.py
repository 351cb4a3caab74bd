#!/usr/bin/env python3
"""Pins shardlm to llama.cpp on the default GGUF (SmolLM2-135M-Instruct Q4_1).

Runs llama-cpp-python (pip) greedily on 4 prompts for 32 steps with all logits, and writes
tests/goldens/llamacpp/smollm2.json: for each prompt its text, llama.cpp's prompt token ids, the 32
generated ids, and for each generated position the top-32 (id, logit) pairs of llama.cpp's logits
(compact: the full rows would be 25 MB). tests/goldens/llamacpp_test.cpp feeds shardlm the same
token sequences (teacher forcing), requires top-1 agreement on >= 99% of positions, reports the
max and mean |logit diff| over those top-32 entries, and checks shardlm's tokenizer gives the same
prompt ids.

Usage: python3 scripts/compare-llamacpp.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
Needs: pip install llama-cpp-python numpy (CI does not: the result is committed).
"""
import argparse
import json
import os

import numpy as np

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>user\nWhat is 17 times 23?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village near the mountains, there lived",
]
STEPS = 32
TOP = 32


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="tests/goldens/llamacpp/smollm2.json")
    ap.add_argument("--threads", type=int, default=2)
    opts = ap.parse_args()

    import llama_cpp

    # f32 KV cache (llama.cpp's default is f16): keeps the reference's own rounding down to its
    # Q8 activation quantization, which is inherent to its quantized matmuls.
    llm = llama_cpp.Llama(model_path=opts.model, n_ctx=512, n_threads=opts.threads,
                          n_batch=512, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    result = {
        "generator": "scripts/compare-llamacpp.py",
        "reference": "llama-cpp-python %s, CPU, %d threads, f32 KV cache" % (
            llama_cpp.__version__, opts.threads),
        "model": os.path.basename(opts.model),
        "steps": STEPS,
        "top": TOP,
        "prompts": [],
    }
    for text in PROMPTS:
        # special=True: the chat markers in the third prompt are parsed as special tokens.
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        generated, tops = [], []
        for _ in range(STEPS):
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            nxt = int(np.argmax(row))
            order = np.argsort(-row, kind="stable")[:TOP]
            tops.append({"ids": [int(i) for i in order],
                         "logits": [round(float(row[i]), 5) for i in order]})
            generated.append(nxt)
            llm.eval([nxt])
        result["prompts"].append({"text": text, "prompt_ids": list(map(int, ids)),
                                  "generated_ids": generated, "top": tops})
        print(repr(text[:40]), "->", llm.detokenize(generated).decode("utf-8", "replace")[:60])
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(result, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()

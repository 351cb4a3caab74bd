#!/usr/bin/env python3
"""Decode tok/s at batch 1 and prefill tok/s for a 512-token prompt: shardlm vs llama-cpp-python
on the same GGUF with the same thread count, in one run (alternating, best of --repeats).

  python3 bench/compare_llamacpp.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
      [--shardlm build/bin/shardlm] [--threads 2] [--prompt-len 512] [--decode 64] [--repeats 3]

Needs: pip install llama-cpp-python numpy. Prints a table and one JSON line for bench/RESULTS.md.
"""
import argparse
import json
import re
import subprocess
import time

import numpy as np


def run_shardlm(opts, ids):
    cmd = [opts.shardlm, "generate", "--model", opts.model, "--threads", str(opts.threads),
           "--prompt-ids", ",".join(map(str, ids)), "--max-new-tokens", str(opts.decode + 1),
           "--ignore-eos"]
    err = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    prefill = float(re.search(r"prefill: \d+ tokens in [\d.]+ ms \(([\d.]+) tok/s\)", err).group(1))
    decode = float(re.search(r"decode: \d+ tokens in [\d.]+ ms \(([\d.]+) tok/s\)", err).group(1))
    return prefill, decode


def run_llamacpp(llm, ids, decode):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill = len(ids) / (time.perf_counter() - t0)
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t0 = time.perf_counter()
    for _ in range(decode):
        llm.eval([nxt])
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return prefill, decode / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--shardlm", default="build/bin/shardlm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    opts = ap.parse_args()

    import llama_cpp

    ctx = opts.prompt_len + opts.decode + 8
    # logits_all=False as a server runs (only the last row of logits is computed); n_batch = n_ctx
    # because llama-cpp-python then keeps n_batch rows of scores, indexed by position.
    llm = llama_cpp.Llama(model_path=opts.model, n_ctx=ctx, n_threads=opts.threads,
                          n_threads_batch=opts.threads, n_batch=ctx,
                          logits_all=False, verbose=False)
    rng = np.random.default_rng(0)
    ids = [1] + [int(x) for x in rng.integers(100, 40000, size=opts.prompt_len - 1)]
    best = {"shardlm": [0, 0], "llama.cpp": [0, 0]}
    for _ in range(opts.repeats):
        for name, fn in (("shardlm", lambda: run_shardlm(opts, ids)),
                         ("llama.cpp", lambda: run_llamacpp(llm, ids, opts.decode))):
            p, d = fn()
            best[name] = [max(best[name][0], p), max(best[name][1], d)]
    s, l = best["shardlm"], best["llama.cpp"]
    print("%-10s %14s %14s" % ("", "prefill tok/s", "decode tok/s"))
    print("%-10s %14.1f %14.1f" % ("shardlm", s[0], s[1]))
    print("%-10s %14.1f %14.1f" % ("llama.cpp", l[0], l[1]))
    print("%-10s %13.2fx %13.2fx" % ("ratio", s[0] / l[0], s[1] / l[1]))
    print(json.dumps({"model": opts.model, "threads": opts.threads, "prompt_len": opts.prompt_len,
                      "decode_tokens": opts.decode, "llama_cpp_python": llama_cpp.__version__,
                      "shardlm_prefill": round(s[0], 1), "shardlm_decode": round(s[1], 1),
                      "llamacpp_prefill": round(l[0], 1), "llamacpp_decode": round(l[1], 1)}))


if __name__ == "__main__":
    main()

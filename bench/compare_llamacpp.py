#!/usr/bin/env python3
"""Single-sequence speed: shardlm vs llama.cpp's own `llama-bench` on the same GGUF with the same
thread count, alternating runs, best and median of --repeats.

- llama-bench (built by scripts/build-llamacpp.sh): `-m MODEL -t T -p 512 -n 128 -d 0,D -r 1
  -o json` per repeat: pp512 (prefill of 512 tokens on an empty context), tg128 (128 decode
  steps at batch 1 from an empty context) and tg128 @ depth D (the same after D tokens of
  context; -d 0 alone with --depth 0). llama-bench warms up before each test.
- shardlm: `shardlm generate --threads T --ignore-eos` (one process, tp=1):
    a prompt of 512 ids, 128 decoded tokens -> pp512 (its prefill tok/s) and tg128 @ 512;
    a prompt of 1 id, 128 decoded tokens    -> tg128 (context 1..129, as llama-bench's 0..128).
  Each run is a fresh process: no warm-up beyond loading.

  Prompts start as llama-bench's do: with BOS when the vocabulary adds one (Gemma 3), else id 1
  (SmolLM2); the rest are random ids.

  python3 bench/compare_llamacpp.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
      [--shardlm build/bin/shardlm] [--llama-bench PATH] [--threads 2] [--prompt-len 512]
      [--gen-len 128] [--depth 512] [--repeats 3]
Prints a table (ratio = shardlm tok/s / llama-bench tok/s) and one JSON line (the last line).
Any GGUF shardlm runs works, e.g. --model models/gemma-3-270m-q4_k_m.gguf
(scripts/get-model.sh gemma3).
"""
import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_LLAMACPP = os.path.join(ROOT, "scripts", "build-llamacpp.sh")


def run_shardlm(opts, ids, decode):
    """(prefill tok/s, decode tok/s) of one `shardlm generate`: len(ids) prompt tokens, then
    `decode` decode steps (the first new token comes from the prefill)."""
    cmd = [opts.shardlm, "generate", "--model", opts.model, "--threads", str(opts.threads),
           "--prompt-ids", ",".join(map(str, ids)), "--max-new-tokens", str(decode + 1),
           "--ignore-eos"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed: {out.stderr[-2000:]}")
    prefill = re.search(r"prefill: \d+ tokens in [\d.]+ ms \(([\d.]+) tok/s\)", out.stderr)
    dec = re.search(r"decode: (\d+) tokens in [\d.]+ ms \(([\d.]+) tok/s\)", out.stderr)
    if not prefill or not dec or int(dec.group(1)) != decode:
        raise RuntimeError(f"unexpected shardlm generate output: {out.stderr[-1000:]}")
    return float(prefill.group(1)), float(dec.group(2))


def first_token(opts):
    """The id a prompt starts with: BOS when the vocabulary adds one (what `shardlm tokenize`
    writes for empty text), as llama-bench does; else 1."""
    out = subprocess.run([opts.shardlm, "tokenize", "--model", opts.model], input="",
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{opts.shardlm} tokenize --model {opts.model} failed: "
                           f"{out.stderr[-2000:]}")
    ids = out.stdout.split()
    return int(ids[0]) if ids else 1


def run_llama_bench(opts):
    """{(n_prompt, n_gen, n_depth): tok/s} and the build info of one llama-bench run."""
    depths = "0" if opts.depth == 0 else f"0,{opts.depth}"
    cmd = [opts.llama_bench, "-m", opts.model, "-t", str(opts.threads), "-p",
           str(opts.prompt_len), "-n", str(opts.gen_len), "-d", depths, "-r", "1", "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    tests = json.loads(out.stdout)
    figures = {(t["n_prompt"], t["n_gen"], t.get("n_depth", 0)): t["avg_ts"] for t in tests}
    info = {k: tests[0].get(k) for k in ("build_commit", "build_number", "cpu_info", "backends",
                                         "type_k", "type_v", "n_batch", "n_ubatch",
                                         "flash_attn")}
    return figures, info, " ".join(cmd[1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models",
                                                    "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--shardlm", default=os.path.join(ROOT, "build", "bin", "shardlm"))
    ap.add_argument("--llama-bench", help="llama-bench binary (default: scripts/build-llamacpp.sh)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--depth", type=int, default=512,
                    help="also decode after this many tokens of context (0: no)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    opts = ap.parse_args()

    version = ""
    if not opts.llama_bench:
        out = subprocess.run([BUILD_LLAMACPP], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{BUILD_LLAMACPP} failed: {out.stderr[-2000:]}")
        opts.llama_bench = out.stdout.strip().splitlines()[-1]
        version = subprocess.run([BUILD_LLAMACPP, "--print-version"], capture_output=True,
                                 text=True).stdout.strip()

    rng = random.Random(opts.seed)
    first = first_token(opts)
    long_prompt = [first] + [rng.randrange(100, 40000) for _ in range(opts.prompt_len - 1)]
    pp, tg, tgd = f"pp{opts.prompt_len}", f"tg{opts.gen_len}", f"tg{opts.gen_len} @ d{opts.depth}"
    keys = {pp: (opts.prompt_len, 0, 0), tg: (0, opts.gen_len, 0)}
    if opts.depth:
        keys[tgd] = (0, opts.gen_len, opts.depth)
    samples = {"shardlm": {k: [] for k in keys}, "llama-bench": {k: [] for k in keys}}
    info, lb_cmd = {}, ""
    for i in range(opts.repeats):
        # Alternate which goes first, so that drift on a shared machine hits both alike.
        order = ("llama-bench", "shardlm") if i % 2 == 0 else ("shardlm", "llama-bench")
        for name in order:
            if name == "llama-bench":
                figures, info, lb_cmd = run_llama_bench(opts)
                for k, key in keys.items():
                    samples[name][k].append(figures[key])
            else:
                p, d = run_shardlm(opts, [first], opts.gen_len)
                samples[name][tg].append(d)
                # The long prompt's decode runs after prompt_len tokens of context.
                p, d = run_shardlm(opts, long_prompt, opts.gen_len)
                samples[name][pp].append(p)
                if opts.depth == opts.prompt_len:
                    samples[name][tgd].append(d)
        print(f"repeat {i + 1}/{opts.repeats}: " + ", ".join(
            f"{k} {samples['shardlm'][k][-1]:.1f} vs {samples['llama-bench'][k][-1]:.1f}"
            for k in keys if samples["shardlm"][k]), file=sys.stderr, flush=True)

    print(f"\n{opts.model}, {opts.threads} threads, best (median) of {opts.repeats}; "
          f"llama.cpp {version or info.get('build_commit')}")
    print("\n| test | shardlm tok/s | llama-bench tok/s | ratio best | ratio median |")
    print("| --- | --- | --- | --- | --- |")
    result = {"model": os.path.basename(opts.model), "threads": opts.threads,
              "repeats": opts.repeats, "llama_cpp": version, "llama_bench_info": info,
              "llama_bench_command": lb_cmd}
    for k in keys:
        s, l = samples["shardlm"][k], samples["llama-bench"][k]
        if not s:  # tg @ depth needs --depth == --prompt-len on the shardlm side
            continue
        sb, sm, lbb, lbm = max(s), statistics.median(s), max(l), statistics.median(l)
        print(f"| {k} | {sb:.1f} ({sm:.1f}) | {lbb:.1f} ({lbm:.1f}) | {sb / lbb:.2f}x | "
              f"{sm / lbm:.2f}x |")
        result[k] = {"shardlm_best": round(sb, 1), "shardlm_median": round(sm, 1),
                     "llama_bench_best": round(lbb, 1), "llama_bench_median": round(lbm, 1),
                     "ratio_best": round(sb / lbb, 3), "ratio_median": round(sm / lbm, 3),
                     "shardlm_samples": s, "llama_bench_samples": [round(x, 2) for x in l]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()

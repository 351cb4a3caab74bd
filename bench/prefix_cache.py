#!/usr/bin/env python3
"""Time to first token with automatic prefix caching on vs off (--no-prefix-caching).

N requests (default 32) share a prefix of P token ids (default 1,024) and then differ by D ids
each (default 32); all are sent at once over the HTTP front door (/v1/completions, the prompt
as token ids, stream=true, O new tokens, greedy). TTFT is the time from sending a request to
its first streamed chunk. The first request pays for the prefix; with caching on, the others
find its blocks cached and prefill only their own D ids (and the prefix's last partial block).

  python3 bench/prefix_cache.py [--requests 32 --prefix-len 1024 --suffix-len 32 --tp 1]
Prints one line per setting and the ratio of the TTFT p50s.
"""
import argparse
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_server import ROOT, free_port, percentile, start_shardlm, stop, wait_serving  # noqa: E402


def completion(port, ids, max_tokens, results, i):
    try:
        results[i] = timed_completion(port, ids, max_tokens)
    except Exception as e:  # reported by run()
        results[i] = e


def timed_completion(port, ids, max_tokens):
    body = json.dumps({"prompt": ids, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "ignore_eos": True})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    first = None
    for line in resp:
        if line.startswith(b"data:") and first is None:
            first = time.perf_counter() - start
        if line.strip() == b"data: [DONE]":
            break
    conn.close()
    return first, time.perf_counter() - start


def run(args, caching):
    port = free_port()
    extra = ["--http-listen", f"127.0.0.1:{port}"] + ([] if caching else ["--no-prefix-caching"])
    coord, workers, addr = start_shardlm(args.binary_dir, args.tp, args.threads // args.tp, extra)
    try:
        wait_serving(args.binary_dir, addr)
        rng = random.Random(args.seed)
        prefix = [rng.randrange(100, 10000) for _ in range(args.prefix_len)]
        prompts = [prefix + [rng.randrange(100, 10000) for _ in range(args.suffix_len)]
                   for _ in range(args.requests)]
        results = [None] * len(prompts)
        threads = [threading.Thread(target=completion, args=(port, p, args.output_len, results, i))
                   for i, p in enumerate(prompts)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        stop(workers, coord)
    failed = [r for r in results if not isinstance(r, tuple)]
    if failed:
        raise RuntimeError(f"{len(failed)} request(s) failed, e.g. {failed[0]!r}")
    ttft = [r[0] for r in results]
    return {"prefix_caching": caching, "requests": len(prompts), "wall_s": wall,
            "ttft_p50_s": statistics.median(ttft), "ttft_p90_s": percentile(ttft, 90),
            "ttft_max_s": max(ttft)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary-dir", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="cores in all")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--prefix-len", type=int, default=1024)
    ap.add_argument("--suffix-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    rows = [run(args, True), run(args, False)]
    for r in rows:
        print(json.dumps(r))
    print(f"TTFT p50: {rows[0]['ttft_p50_s'] * 1000:.0f} ms with prefix caching, "
          f"{rows[1]['ttft_p50_s'] * 1000:.0f} ms without: "
          f"{rows[1]['ttft_p50_s'] / rows[0]['ttft_p50_s']:.1f}x lower")


if __name__ == "__main__":
    main()

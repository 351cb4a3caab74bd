#!/usr/bin/env python3
"""Serving throughput of shardlm (coordinator + mpirun workers) vs llama.cpp's server
(llama-cpp-python's OpenAI-compatible server) on the same GGUF and the same cores.

For each concurrency C: N requests with C in flight, prompts of L tokens, O generated tokens each
(greedy, end-of-generation ignored), and the same metrics for both: output tok/s, TTFT and
inter-token latency p50/p99. shardlm is driven by `shardlm bench`; llama.cpp by an equivalent
streaming client here (its /v1/completions with stream=true; the prompt is the text of the same
random token ids, and EOS is suppressed with logit_bias).

  python3 bench/compare_server.py --tp 1 2 --concurrency 1 8 32 --requests 32 \
      --input-len 128 --output-len 64 [--skip-llamacpp]
Prints a Markdown table and writes JSON lines to --out (default /tmp/compare_server.jsonl).
Needs: pip install llama-cpp-python fastapi uvicorn sse-starlette starlette-context
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def prompts(n, length, seed):
    rng = random.Random(seed)
    return [[rng.randrange(100, 1000) for _ in range(length)] for _ in range(n)]


def worker_secret_file():
    """A fresh random worker attach secret (mode 600) in a private temp folder."""
    folder = tempfile.mkdtemp(prefix="shardlm-bench-secret-")
    path = os.path.join(folder, "worker.secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(24).hex() + "\n")
    return path


def start_shardlm(binary_dir, tp, threads_per_rank, extra_args=()):
    secret = worker_secret_file()
    coord = subprocess.Popen(
        [os.path.join(binary_dir, "shardlm-coordinator"), "--listen", "127.0.0.1:0",
         "--worker-listen", "127.0.0.1:0", "--worker-secret-file", secret, "--model",
         MODEL, "--tp", str(tp), "--max-batch-tokens", "512", "--kv-cache-memory", "512MiB",
         "--threads", str(threads_per_rank), *extra_args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    line = coord.stdout.readline()
    worker_line = coord.stdout.readline()
    m = re.search(r"listening on (\S+)", line)
    w = re.search(r"worker attach on (\S+)", worker_line)
    if not m or not w:
        coord.kill()
        raise RuntimeError(f"coordinator did not start: {line!r} {worker_line!r}")
    addr = m.group(1)
    workers = subprocess.Popen(
        ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(tp),
         os.path.join(binary_dir, "shardlm-worker"), "--coordinator", w.group(1),
         "--worker-secret-file", secret],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **MPI_ENV},
        start_new_session=True)
    # Both have read the file (the worker's rank 0 once it dials): it need not stay on disk
    # beyond this run; removed when the job is stopped.
    workers.secret_dir = os.path.dirname(secret)
    return coord, workers, addr


def stop(*procs):
    for p in procs:
        if p and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        if p:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
            secret_dir = getattr(p, "secret_dir", None)
            if secret_dir:
                shutil.rmtree(secret_dir, ignore_errors=True)


def wait_serving(binary_dir, addr, timeout=180):
    """Until one tiny generation succeeds (the workers attached and loaded)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run([os.path.join(binary_dir, "shardlm"), "generate", "--server", addr,
                            "--prompt-ids", "1", "--max-new-tokens", "1"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"shardlm at {addr} did not start serving in {timeout} s")


def shardlm_bench(binary_dir, addr, c, n, l, o):
    out = subprocess.run(
        [os.path.join(binary_dir, "shardlm"), "bench", "--server", addr, "--concurrency", str(c),
         "--requests", str(n), "--input-len", str(l), "--output-len", str(o)],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def detokenize(binary_dir, ids):
    out = subprocess.run([os.path.join(binary_dir, "shardlm"), "detokenize", "--model", MODEL,
                          "--ids", ",".join(map(str, ids))], capture_output=True, text=True,
                         check=True)
    return out.stdout


def llamacpp_request(port, text, o, eos_bias):
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    req = {"prompt": text, "max_tokens": o, "temperature": 0, "stream": True}
    if eos_bias:
        req["logit_bias"] = eos_bias
    body = json.dumps(req)
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    times = []
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[5:])
        if chunk["choices"][0].get("text"):
            times.append(time.perf_counter())
    conn.close()
    return t0, times


def llamacpp_bench(port, texts, c, o, eos_bias):
    lock = threading.Lock()
    results, queue = [], list(texts)

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                text = queue.pop()
            r = llamacpp_request(port, text, o, eos_bias)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.perf_counter() - t0
    ttft, itl, tokens = [], [], 0
    for start, times in results:
        if times:
            ttft.append((times[0] - start) * 1000)
            itl += [(b - a) * 1000 for a, b in zip(times, times[1:])]
        tokens += len(times)
    return {"requests": len(texts), "concurrency": c, "total_s": round(total, 3),
            "output_tok_s": round(tokens / total, 2),
            "ttft_p50_ms": round(percentile(ttft, 50), 3), "ttft_p99_ms": round(percentile(ttft, 99), 3),
            "itl_p50_ms": round(percentile(itl, 50), 3), "itl_p99_ms": round(percentile(itl, 99), 3),
            "output_tokens": tokens}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary-dir", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="cores for each system")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--skip-shardlm", action="store_true")
    ap.add_argument("--no-eos-bias", action="store_true",
                    help="do not suppress EOS in llama.cpp (its logit_bias runs as a Python "
                         "logits processor, which slows every token)")
    ap.add_argument("--out", default="/tmp/compare_server.jsonl")
    a = ap.parse_args()
    rows = []
    for tp in ([] if a.skip_shardlm else a.tp):
        coord, workers, addr = start_shardlm(a.binary_dir, tp, max(1, a.threads // tp))
        try:
            wait_serving(a.binary_dir, addr)
            for c in a.concurrency:
                n = max(a.requests, c)
                r = shardlm_bench(a.binary_dir, addr, c, n, a.input_len, a.output_len)
                r.update(system=f"shardlm tp={tp}")
                rows.append(r)
                print(json.dumps(r), flush=True)
        finally:
            stop(workers, coord)
    if not a.skip_llamacpp:
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", MODEL, "--n_threads",
             str(a.threads), "--n_ctx", "4096", "--port", str(port), "--host", "127.0.0.1",
             # By default the server interrupts a running request when a new one arrives.
             "--interrupt_requests", "False", "--logits_all", "False"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            for _ in range(600):
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                    c.request("GET", "/v1/models")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    time.sleep(0.2)
            # <|endoftext|>, <|im_end|> of SmolLM2
            eos_bias = {} if a.no_eos_bias else {"0": -100.0, "2": -100.0}
            for c in a.concurrency:
                n = max(a.requests, c)
                texts = [detokenize(a.binary_dir, p) for p in prompts(n, a.input_len, 1)]
                r = llamacpp_bench(port, texts, c, a.output_len, eos_bias)
                r.update(system="llama.cpp server" + ("" if eos_bias else " (no EOS bias)"),
                         input_len=a.input_len, output_len=a.output_len)
                rows.append(r)
                print(json.dumps(r), flush=True)
        finally:
            stop(server)
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print("\n| system | concurrency | output tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['system']} | {r['concurrency']} | {r['output_tok_s']:.1f} | "
              f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | "
              f"{r['itl_p50_ms']:.1f} / {r['itl_p99_ms']:.1f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Serving throughput of shardlm (coordinator + mpirun workers) vs llama.cpp's C++ `llama-server`
(continuous batching) on the same GGUF and the same cores.

For each concurrency C: N requests with C in flight, prompts of L random token ids drawn
uniformly from [100, 1000), O new tokens each (greedy, end-of-generation ignored), and the same
metrics for both: output tok/s, TTFT p50/p99 and inter-token latency (ITL) p50/p99.

- llama-server (built by scripts/build-llamacpp.sh) is started for each C with
  `-m MODEL -t T -tb T -np C -c C*(L+O+16) -cb`, and driven by the streaming client here: each
  prompt is a token-id array on its native /completion endpoint with n_predict=O,
  ignore_eos, stream and cache_prompt=false.
- shardlm (`shardlm-coordinator` + `mpirun -np TP shardlm-worker`, T/TP threads per rank) is
  driven by `shardlm bench` over gRPC. Its prompts come from the same distribution with the same
  length (its own seeded generator, so not the same ids; the work per request does not depend on
  the ids). Each C uses a different seed on both sides, so that no prompt repeats across runs and
  shardlm's prefix cache (on by default) finds no hit, as llama-server's cache_prompt=false.

Both clients time the same events: TTFT is send -> first streamed message carrying a token; ITL
is the gap between consecutive messages (a message with k tokens adds k-1 zeros).

  python3 bench/compare_server.py --tp 1 --concurrency 1 8 32 --requests 32 \
      --input-len 128 --output-len 64 [--llama-server PATH] [--skip-shardlm] [--skip-llamacpp]
Prints a Markdown table (ratio: shardlm output tok/s over llama-server's at the same C) and
writes JSON lines to --out (default /tmp/compare_server.jsonl).
`--llama-cpp-python` adds the old reference, llama-cpp-python's Python server (one request at a
time), as a footnote figure (needs: pip install 'llama-cpp-python[server]').
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
BUILD_LLAMACPP = os.path.join(ROOT, "scripts", "build-llamacpp.sh")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, q):
    """Linear interpolation between closest ranks, as `shardlm bench` computes it."""
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def prompts(n, length, seed):
    """n prompts of `length` ids from [100, 1000), the range `shardlm bench` draws from."""
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


def start_shardlm(binary_dir, tp, threads_per_rank, extra_args=(), model=None, pp=1):
    secret = worker_secret_file()
    coord = subprocess.Popen(
        [os.path.join(binary_dir, "shardlm-coordinator"), "--listen", "127.0.0.1:0",
         "--worker-listen", "127.0.0.1:0", "--worker-secret-file", secret, "--model",
         model or MODEL, "--tp", str(tp), "--pp", str(pp), "--max-batch-tokens", "512", "--kv-cache-memory",
         "512MiB", "--threads", str(threads_per_rank), *extra_args],
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
        ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(tp * pp),
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
                p.wait()
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


def shardlm_bench(binary_dir, addr, c, n, l, o, seed=1234):
    out = subprocess.run(
        [os.path.join(binary_dir, "shardlm"), "bench", "--server", addr, "--concurrency", str(c),
         "--requests", str(n), "--input-len", str(l), "--output-len", str(o),
         "--seed", str(seed)],
        capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"shardlm bench failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- llama.cpp's C++ llama-server -------------------------------------------------------------

def find_llamacpp_binaries():
    """(llama-server, llama-bench) from scripts/build-llamacpp.sh (a no-op once built)."""
    out = subprocess.run([BUILD_LLAMACPP], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{BUILD_LLAMACPP} failed: {out.stderr[-2000:]}")
    lines = out.stdout.strip().splitlines()
    return lines[-2], lines[-1]


def llamacpp_version():
    out = subprocess.run([BUILD_LLAMACPP, "--print-version"], capture_output=True, text=True)
    return out.stdout.strip()


def http_json(port, method, path, body=None, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, None if body is None else json.dumps(body),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def start_llama_server(binary, model, threads, c, ctx, extra_args=(), timeout=180):
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
    cmd = [binary, "-m", model, "-t", str(threads), "-tb", str(threads), "-np", str(c),
           "-c", str(ctx), "-cb", "--host", "127.0.0.1", "--port", str(port), *extra_args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log.name
    proc.cmd = cmd
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            with open(log.name, errors="replace") as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f"llama-server exited with {proc.returncode}: {tail}")
        try:
            status, _ = http_json(port, "GET", "/health", timeout=1)
            if status == 200:  # 503 while the model loads
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"llama-server did not become healthy in {timeout} s (log {log.name})")


def llama_server_request(port, ids, o):
    """One streamed /completion: (send time, [(arrival time, tokens in the message)], final)."""
    body = json.dumps({"prompt": ids, "n_predict": o, "ignore_eos": True, "stream": True,
                       "cache_prompt": False, "temperature": 0})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/completion", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"llama-server /completion: HTTP {resp.status}: {resp.read()[:300]!r}")
    events, final, seen = [], None, 0
    for raw in resp:
        if not raw.startswith(b"data:"):
            continue
        now = time.perf_counter()
        msg = json.loads(raw[5:])
        if "error" in msg:
            raise RuntimeError(f"llama-server /completion: {msg['error']}")
        # A token whose text ends inside a UTF-8 character is not streamed on its own: it comes
        # with the next message, whose "tokens" names only the newest id. "tokens_predicted"
        # counts every token generated so far, so its increase is what the message delivered
        # (the final message, stop=true, may deliver the last ones).
        predicted = msg.get("tokens_predicted", seen)
        if predicted > seen:
            events.append((now, predicted - seen))
            seen = predicted
        if msg.get("stop"):
            final = msg
            break
    conn.close()
    return t0, events, final


def run_clients(fn, items, c):
    """Runs fn(item) for every item with c client threads; (results, wall seconds)."""
    lock = threading.Lock()
    results, queue = [], list(enumerate(items))

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                i, item = queue.pop(0)
            try:
                r = fn(item)
            except Exception as e:  # counted as an error below
                r = e
            with lock:
                results.append((i, r))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(min(c, len(items)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for _, r in sorted(results, key=lambda x: x[0])], time.perf_counter() - t0


def summarize(results, total_s, c, l, o):
    """The metrics `shardlm bench` prints, from (start, [(time, n)], final) per request."""
    ttft, itl, e2e, errors, first_error = [], [], [], 0, None
    in_tokens = out_tokens = 0
    for r in results:
        if isinstance(r, Exception) or sum(n for _, n in r[1]) != o:
            errors += 1
            if first_error is None:
                first_error = r if isinstance(r, Exception) else \
                    f"{sum(n for _, n in r[1])} tokens streamed, expected {o}"
            continue
        start, events, _ = r
        ttft.append((events[0][0] - start) * 1000)
        itl.extend([0.0] * (events[0][1] - 1))
        for (a, _), (b, n) in zip(events, events[1:]):
            itl.append((b - a) * 1000)
            itl.extend([0.0] * (n - 1))
        e2e.append((events[-1][0] - start) * 1000)
        in_tokens += l
        out_tokens += o
    if first_error is not None:
        print(f"llama-server: {errors} request(s) failed, e.g. {first_error}", file=sys.stderr)
    r3 = lambda x: round(x, 3)  # noqa: E731
    return {"requests": len(results), "concurrency": c, "input_len": l, "output_len": o,
            "total_s": r3(total_s), "output_tok_s": round(out_tokens / total_s, 2),
            "total_tok_s": round((in_tokens + out_tokens) / total_s, 2),
            "ttft_p50_ms": r3(percentile(ttft, 50)), "ttft_p99_ms": r3(percentile(ttft, 99)),
            "itl_p50_ms": r3(percentile(itl, 50)), "itl_p99_ms": r3(percentile(itl, 99)),
            "e2e_p50_ms": r3(percentile(e2e, 50)), "errors": errors}


def llama_server_bench(a, binary, c, n, seed):
    ctx = c * (a.input_len + a.output_len + 16)
    proc, port = start_llama_server(binary, a.model, a.threads, c, ctx, a.llama_server_args)
    try:
        # One warm-up request (thread pool, first-touch of buffers), as wait_serving is for shardlm.
        llama_server_request(port, prompts(1, a.input_len, seed + 100000)[0], 4)
        results, total = run_clients(lambda ids: llama_server_request(port, ids, a.output_len),
                                     prompts(n, a.input_len, seed), c)
    finally:
        stop(proc)
    r = summarize(results, total, c, a.input_len, a.output_len)
    r.update(system="llama-server", seed=seed, command=" ".join(proc.cmd[1:]))
    if r["errors"] == 0:
        os.unlink(proc.log_path)
    else:
        r["log"] = proc.log_path
    return r


# ---- footnote: llama-cpp-python's Python server (one request at a time) -----------------------

def detokenize(binary_dir, ids, model):
    out = subprocess.run([os.path.join(binary_dir, "shardlm"), "detokenize", "--model", model,
                          "--ids", ",".join(map(str, ids))], capture_output=True, text=True,
                         check=True)
    return out.stdout


def llama_cpp_python_request(port, text, o):
    """Its /v1/completions takes text; EOS (<|endoftext|>, <|im_end|> of SmolLM2) suppressed by
    logit_bias. Text chunks stand for tokens (one per chunk in its stream)."""
    body = json.dumps({"prompt": text, "max_tokens": o, "temperature": 0, "stream": True,
                       "logit_bias": {"0": -100.0, "2": -100.0}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    events = []
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        if json.loads(line[5:])["choices"][0].get("text"):
            events.append((time.perf_counter(), 1))
    conn.close()
    return t0, events, None


def llama_cpp_python_bench(a, c, n, seed):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", a.model, "--n_threads",
         str(a.threads), "--n_ctx", "4096", "--port", str(port), "--host", "127.0.0.1",
         # By default the server interrupts a running request when a new one arrives.
         "--interrupt_requests", "False", "--logits_all", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(600):
            try:
                if http_json(port, "GET", "/v1/models", timeout=1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        texts = [detokenize(a.binary_dir, p, a.model) for p in prompts(n, a.input_len, seed)]
        results, total = run_clients(lambda t: llama_cpp_python_request(port, t, a.output_len),
                                     texts, c)
    finally:
        stop(server)
    # Its text chunks may merge or drop tokens: count what streamed rather than require O.
    ok = [r for r in results if not isinstance(r, Exception) and r[1]]
    o = a.output_len
    r = summarize([(s, e, f) for s, e, f in ok if sum(n for _, n in e) == o], total, c,
                  a.input_len, o)
    r.update(system="llama-cpp-python server (footnote)", seed=seed)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary-dir", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--tp", type=int, nargs="+", default=[1])
    ap.add_argument("--pp", type=int, default=1,
                    help="pipeline stages of each shardlm run (ranks = tp x pp, cores split)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="cores for each system")
    ap.add_argument("--seed", type=int, default=1234, help="prompts of concurrency C: seed + C")
    ap.add_argument("--llama-server", help="llama-server binary (default: scripts/build-llamacpp.sh)")
    ap.add_argument("--llama-server-args", nargs=argparse.REMAINDER, default=[],
                    help="extra llama-server arguments (must come last)")
    ap.add_argument("--shardlm-args", default="",
                    help="extra shardlm-coordinator arguments, one string")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--skip-shardlm", action="store_true")
    ap.add_argument("--llama-cpp-python", action="store_true",
                    help="also measure llama-cpp-python's Python server (a footnote figure)")
    ap.add_argument("--out", default="/tmp/compare_server.jsonl")
    a = ap.parse_args()

    binary = None
    version = None
    if not a.skip_llamacpp:
        binary = a.llama_server or find_llamacpp_binaries()[0]
        version = llamacpp_version()
        print(f"llama-server: {binary} ({version})", file=sys.stderr)

    rows = []
    with open(a.out, "w") as out:
        def emit(r):
            r.update(model=os.path.basename(a.model), threads=a.threads)
            if version and r["system"] == "llama-server":
                r["llama_cpp"] = version
            rows.append(r)
            print(json.dumps(r), flush=True)
            out.write(json.dumps(r) + "\n")
            out.flush()

        # One concurrency at a time, both systems back to back, so that a slow patch of a shared
        # machine hits both figures of a ratio alike.
        for c in a.concurrency:
            n = max(a.requests, c)
            seed = a.seed + c
            if binary:
                emit(llama_server_bench(a, binary, c, n, seed))
            for tp in ([] if a.skip_shardlm else a.tp):
                coord, workers, addr = start_shardlm(a.binary_dir, tp,
                                                     max(1, a.threads // (tp * a.pp)),
                                                     a.shardlm_args.split(), a.model, a.pp)
                try:
                    wait_serving(a.binary_dir, addr)
                    r = shardlm_bench(a.binary_dir, addr, c, n, a.input_len, a.output_len, seed)
                finally:
                    stop(workers, coord)
                r.update(system=f"shardlm tp={tp}" + (f" pp={a.pp}" if a.pp > 1 else ""), seed=seed)
                emit(r)
            if a.llama_cpp_python:
                emit(llama_cpp_python_bench(a, c, n, seed))

    ref = {r["concurrency"]: r["output_tok_s"] for r in rows if r["system"] == "llama-server"}
    print(f"\n{a.requests} requests (at least C), {a.input_len} prompt + {a.output_len} new "
          f"tokens, {a.threads} cores each; ratio = output tok/s / llama-server's")
    print("\n| C | system | output tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        base = ref.get(r["concurrency"])
        ratio = "" if r["system"] == "llama-server" or not base else \
            f"{r['output_tok_s'] / base:.2f}x"
        print(f"| {r['concurrency']} | {r['system']} | {r['output_tok_s']:.1f} | "
              f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | "
              f"{r['itl_p50_ms']:.1f} / {r['itl_p99_ms']:.1f} | {ratio} |"
              + (f" ({r['errors']} errors)" if r.get("errors") else ""))


if __name__ == "__main__":
    main()

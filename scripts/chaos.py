#!/usr/bin/env python3
"""Fault drills against a real one-node deployment: launch/one-node.sh (the coordinator and a
supervised mpirun worker job) serving a model, driven through the public gRPC API.

    scripts/chaos.sh [--model PATH] [--tp 2] [--cases kill-rank1,hang-rank1,...] [--out FILE]

Cases (all by default, in this order):
  kill-rank1   kill -9 of worker rank 1 while streams run; the supervise loop relaunches the job
  kill-rank0   the same for rank 0 (the rank that holds the coordinator stream)
  hang-rank1   SIGSTOP of rank 1: the job stays connected but never answers; the step deadline
               (--step-timeout, given below) declares it hung and it is aborted and relaunched
  slow-step    a 30 s step (the sleep fault) at the default step deadline: nothing may drop
  fake-attach  attach attempts by a stranger: a wrong secret, a silent hello, a second job
  long-prompt  a 6,000-token prompt at default flags (minutes on 2 cores)

For each fault case the streams that run through it are compared with an undisturbed run of the
same requests: greedy and seeded requests must give exactly the same ids. Reported: detection
time (fault -> the coordinator reports the job gone), resume time (fault -> the next token of a
held stream), the requests resumed and identical, and the worker processes of the faulted job
still alive afterwards. Assumes no other shardlm worker job runs on this machine.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from shardlm_client import Client, ShardlmError  # noqa: E402
from shardlm_client import _proto  # noqa: E402

ALL_CASES = ["kill-rank1", "kill-rank0", "hang-rank1", "slow-step", "fake-attach", "long-prompt"]


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def worker_pids():
    """{world rank: pid} of the shardlm-worker processes on this machine."""
    ranks = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            if not cmd or not cmd[0].endswith(b"shardlm-worker"):
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                continue
            ranks[int(env.get(b"OMPI_COMM_WORLD_RANK", b"-1"))] = int(pid)
        except (OSError, ValueError):
            continue
    return ranks


def alive(pids):
    left = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    left.append(pid)
        except OSError:
            pass
    return left


class Deployment:
    """launch/one-node.sh in its own process group; `addr` once it says "serving on"."""

    def __init__(self, args, logs, coordinator_flags=(), worker_flags=()):
        os.makedirs(logs, exist_ok=True)
        self.secret_file = os.path.join(logs, "worker.secret")
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(24).hex() + "\n")
        cmd = [os.path.join(ROOT, "launch", "one-node.sh"), "--model", args.model, "--tp",
               str(args.tp), "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
               "--worker-listen", "127.0.0.1:0",
               "--worker-secret-file", self.secret_file, "--logs", logs, "--bin", args.bin,
               "--", *coordinator_flags]
        env = dict(os.environ)
        if worker_flags:
            env["WORKER_ARGS"] = " ".join(worker_flags)
        self.logs = logs
        with open(os.path.join(logs, "one-node.err"), "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                         start_new_session=True, env=env)
        self.addr = None
        deadline = time.monotonic() + 300
        for line in self.proc.stdout:
            m = re.match(r"serving on (\S+)", line)
            if m:
                self.addr = m.group(1)
                break
            if time.monotonic() > deadline:
                break
        if self.addr is None:
            self.stop()
            raise RuntimeError(f"one-node.sh did not start; see {logs}")
        self.client = Client(self.addr)
        with open(os.path.join(logs, "coordinator.out")) as f:
            m = re.search(r"^worker attach on (\S+)", f.read(), re.M)
        self.worker_addr = m.group(1) if m else None

    def serving(self):
        try:
            info = self.client.model_info(timeout=2)
            return info["workers_expected"] > 0 and \
                info["workers_attached"] == info["workers_expected"]
        except ShardlmError:
            return False

    def wait(self, want, timeout, poll=0.02):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.serving() == want:
                return time.monotonic()
            time.sleep(poll)
        return None

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "client", None):
            self.client.close()


# The requests every fault case runs: greedy and seeded, token-id prompts so that no tokenizer
# detail matters.
def requests(vocab, n_tokens):
    base = [(7 * i + 3) % vocab for i in range(24)]
    return [
        dict(token_ids=base, max_new_tokens=n_tokens, ignore_eos=True, temperature=0),
        dict(token_ids=base[::-1], max_new_tokens=n_tokens, ignore_eos=True, temperature=0.9,
             seed=11),
        dict(token_ids=[(x * 5 + 1) % vocab for x in base], max_new_tokens=n_tokens,
             ignore_eos=True, temperature=0.7, top_p=0.9, seed=5),
    ]


class Stream(threading.Thread):
    """Runs one request to its end, recording when each token arrived."""

    def __init__(self, client, req):
        super().__init__(daemon=True)
        self.client, self.req = client, req
        self.ids, self.times, self.finish, self.error = [], [], None, None

    def run(self):
        try:
            for c in self.client.generate(timeout=600, **self.req):
                now = time.monotonic()
                self.ids += c.token_ids
                self.times += [now] * len(c.token_ids)
                if c.finish_reason:
                    self.finish, self.error = c.finish_reason, c.error
        except ShardlmError as e:
            self.error = str(e)


def run_streams(dep, reqs):
    streams = [Stream(dep.client, r) for r in reqs]
    for s in streams:
        s.start()
    return streams


def fault_case(name, dep, baseline, reqs, inject, relaunched_by_supervisor=True):
    """Starts the streams, injects the fault once each has a few tokens, then measures."""
    streams = run_streams(dep, reqs)
    deadline = time.monotonic() + 120
    while any(len(s.ids) < 4 for s in streams) and time.monotonic() < deadline:
        time.sleep(0.01)
    old = worker_pids()
    t_fault = time.monotonic()
    inject(old)
    t_gone = dep.wait(False, 180)
    t_back = dep.wait(True, 300) if relaunched_by_supervisor else None
    for s in streams:
        s.join(600)
    # First token that arrived after the fault, per stream still running at the fault.
    resumed = [next((t for t in s.times if t > (t_gone or t_fault)), None) for s in streams]
    time.sleep(2)
    left = alive(old.values())
    same = sum(s.ids == b for s, b in zip(streams, baseline))
    row = dict(
        case=name,
        detect_s=round(t_gone - t_fault, 3) if t_gone else None,
        serving_again_s=round(t_back - t_fault, 2) if t_back else None,
        first_token_after_s=round(max(r for r in resumed if r) - t_fault, 2)
        if any(resumed) else None,
        requests=len(streams),
        completed=sum(s.finish in ("length", "stop", "eos") for s in streams),
        identical_to_undisturbed=same,
        errors=[s.error for s in streams if s.error],
        old_processes_left=len(left),
    )
    log(json.dumps(row))
    return row


def case_fake_attach(dep, secret_file):
    """A stranger dials the worker port: wrong secret, silent hello, second job."""
    pb2, _ = _proto.load()
    import grpc
    import importlib
    wpb2 = importlib.import_module("shardlm.v1.worker_pb2")
    wgrpc = importlib.import_module("shardlm.v1.worker_pb2_grpc")
    waddr = dep.worker_addr
    out = {"case": "fake-attach"}
    with grpc.insecure_channel(waddr) as ch:
        stub = wgrpc.WorkerControlStub(ch)

        def attempt(messages, wait_s):
            t0 = time.monotonic()
            try:
                for _ in stub.Attach(iter(messages), timeout=wait_s):
                    pass
                return "OK", time.monotonic() - t0
            except grpc.RpcError as e:
                return e.code().name, time.monotonic() - t0

        hello = wpb2.WorkerMessage(hello=wpb2.WorkerHello(world_size=dep.np, hostname="stranger",
                                                          pid=1, secret="not-the-secret-0000"))
        code, _ = attempt([hello], 10)
        out["wrong_secret"] = code

        def silent():
            time.sleep(30)
            yield hello  # never reached within the server's hello deadline
        code, secs = attempt(silent(), 40)
        out["silent_hello"] = f"{code} after {secs:.1f} s"
        with open(secret_file) as f:
            secret = f.read().rstrip("\n")
        good = wpb2.WorkerMessage(hello=wpb2.WorkerHello(world_size=dep.np, hostname="second",
                                                         pid=2, secret=secret))
        code, _ = attempt([good], 10)
        out["second_job"] = code
    out["still_serving"] = dep.serving()
    log(json.dumps(out))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models",
                                                    "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--cases", default=",".join(ALL_CASES))
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per request")
    ap.add_argument("--step-timeout", default="5",
                    help="--step-timeout of the hang case (seconds; 0: automatic)")
    ap.add_argument("--logs", default=os.path.join(ROOT, "logs", "chaos"))
    ap.add_argument("--out", help="append the results as JSON lines here")
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in ALL_CASES:
            ap.error(f"unknown case {c!r} (known: {', '.join(ALL_CASES)})")
    if os.geteuid() == 0:
        os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    if worker_pids():
        sys.exit("chaos: shardlm-worker processes already run on this machine; stop them first")
    rows = []

    def deploy(tag, coordinator_flags=(), worker_flags=()):
        dep = Deployment(args, os.path.join(args.logs, tag), coordinator_flags, worker_flags)
        dep.np = args.tp
        info = dep.client.wait_ready(300)
        dep.vocab = info["vocab_size"]
        return dep

    fault_cases = [c for c in cases if c.startswith(("kill-", "hang-"))]
    if fault_cases or "fake-attach" in cases:
        dep = deploy("faults", ["--step-timeout", args.step_timeout])
        try:
            reqs = requests(dep.vocab, args.tokens)
            base = run_streams(dep, reqs)
            for s in base:
                s.join(600)
            baseline = [s.ids for s in base]
            log(f"undisturbed run: {[len(b) for b in baseline]} tokens")
            for c in fault_cases:
                rank = int(c[-1])
                sig = signal.SIGKILL if c.startswith("kill-") else signal.SIGSTOP
                rows.append(fault_case(c, dep, baseline, reqs,
                                       lambda pids, r=rank, s=sig: os.kill(pids[r], s)))
            if "fake-attach" in cases:
                rows.append(case_fake_attach(dep, dep.secret_file))
        finally:
            dep.stop()
    if "slow-step" in cases:
        # The fault sleeps in one call of Linear on every rank, after the load is done.
        dep = deploy("slow-step", worker_flags=["--inject-fault", "Linear:400:*:sleep=30"])
        try:
            t0 = time.monotonic()
            s = run_streams(dep, requests(dep.vocab, 16)[:1])[0]
            s.join(600)
            gaps = [b - a for a, b in zip(s.times, s.times[1:])]
            row = dict(case="slow-step", completed=s.finish == "length", error=s.error,
                       longest_gap_s=round(max(gaps), 1) if gaps else None,
                       total_s=round(time.monotonic() - t0, 1), still_serving=dep.serving())
            log(json.dumps(row))
            rows.append(row)
        finally:
            dep.stop()
    if "long-prompt" in cases:
        dep = deploy("long-prompt")
        try:
            ids = [(13 * i + 7) % dep.vocab for i in range(6000)]
            t0 = time.monotonic()
            s = run_streams(dep, [dict(token_ids=ids, max_new_tokens=8, ignore_eos=True,
                                       temperature=0)])[0]
            s.join(1800)
            row = dict(case="long-prompt", prompt_tokens=len(ids), completed=s.finish == "length",
                       error=s.error, ttft_s=round(s.times[0] - t0, 1) if s.times else None,
                       still_serving=dep.serving())
            log(json.dumps(row))
            rows.append(row)
        finally:
            dep.stop()
    left = worker_pids()
    print(json.dumps({"results": rows, "worker_processes_left": len(left)}, indent=1))
    if args.out:
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A stand-in Generation server for testing clients without a model, coordinator or workers.

    python3 clients/python/fake_server.py [--listen 127.0.0.1:0] [--token-delay-ms 5]

prints `listening on HOST:PORT` (like shardlm-coordinator) and serves the same API with a
made-up model: text is tokenized as its UTF-8 bytes (id = byte + 3, BOS = 1), greedy generation
emits ids (vocabulary 2048) that depend only on the prompt and the position (and the seed when temperature > 0),
id 2 is EOS, the text of id i >= 3 is chr(i - 3) for printable ASCII. Messages carry 1 or 2 ids.
It checks request fields like the real server (INVALID_ARGUMENT naming the field) and honours
Abort, stop strings, ignore_eos, logprobs and client cancellation. Not a model of the scheduler.
"""
import argparse
import os
import sys
import threading
import time
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402

from shardlm_client import pb2, pb2_grpc  # noqa: E402

VOCAB = 2048
EOS = 2


def tok_text(i):
    c = i - 3
    return chr(c) if 32 <= c < 127 else ""


def render_chat(msgs):
    return "".join(f"<|{m.role}|>{m.content}\n" for m in msgs) + "<|assistant|>"


def tokenize(text):
    return [1] + [b + 3 for b in text.encode("utf-8")]


class FakeGeneration(pb2_grpc.GenerationServicer):
    def __init__(self, token_delay_s, eos_after):
        self.delay = token_delay_s
        self.eos_after = eos_after
        self.lock = threading.Lock()
        self.live = {}  # request id -> threading.Event (set: abort)
        self.next_id = 0

    def _check(self, req, context):
        def bad(msg):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, msg)
        if req.max_new_tokens <= 0:
            bad(f"max_new_tokens: {req.max_new_tokens}, expected > 0")
        s = req.sampling
        if s.HasField("temperature") and s.temperature < 0:
            bad(f"sampling.temperature: {s.temperature}, expected >= 0")
        if s.HasField("top_p") and not 0 < s.top_p <= 1:
            bad(f"sampling.top_p: {s.top_p}, expected in (0, 1]")
        if not 0 <= req.logprobs <= 20:
            bad(f"logprobs: {req.logprobs}, expected in [0, 20]")
        which = req.WhichOneof("prompt")
        if which is None:
            bad("prompt: expected one of text, token_ids, chat")
        if which == "token_ids":
            ids = list(req.token_ids.ids)
            if not ids:
                bad("token_ids: empty prompt")
            for n, i in enumerate(ids):
                if not 0 <= i < VOCAB:
                    bad(f"token_ids: element {n} is {i}, expected 0 <= id < {VOCAB}")
            return ids
        if which == "chat":
            return tokenize(render_chat(req.chat.messages))
        return tokenize(req.text)

    def Generate(self, req, context):
        t0 = time.monotonic()
        prompt = self._check(req, context)
        with self.lock:
            rid = req.request_id
            if not rid:
                self.next_id += 1
                rid = f"fake-{self.next_id}"
            if rid in self.live:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"request_id {rid!r} is live")
            aborted = self.live[rid] = threading.Event()
        try:
            yield from self._generate(req, rid, prompt, aborted, context, t0)
        finally:
            with self.lock:
                self.live.pop(rid, None)

    def _generate(self, req, rid, prompt, aborted, context, t0):
        s = req.sampling
        seed = s.seed if s.HasField("temperature") and s.temperature > 0 else 0
        base = (sum(prompt) * 31 + seed * 17) % 95
        out, text, ttft = [], "", None
        finish = pb2.FINISH_REASON_LENGTH
        pending = pb2.GenerateResponse(request_id=rid)
        stops = set(req.stop_token_ids)
        while len(out) < req.max_new_tokens:
            if aborted.is_set() or not context.is_active():
                finish = pb2.FINISH_REASON_CANCELLED
                break
            time.sleep(self.delay)
            n = len(out)
            tok = EOS if (self.eos_after and n == self.eos_after) else 3 + 32 + (base + 7 * n) % 95
            if tok == EOS and not req.ignore_eos:
                finish = pb2.FINISH_REASON_EOS
                break
            out.append(tok)
            if ttft is None:
                ttft = (time.monotonic() - t0) * 1000
            pending.token_ids.append(tok)
            piece = tok_text(tok)
            text += piece
            pending.text += piece
            if req.logprobs:
                lp = pending.logprobs.add()
                lp.chosen.id, lp.chosen.logprob, lp.chosen.text = tok, -0.5, piece
                for k in range(req.logprobs):
                    t = lp.top.add()
                    t.id = tok if k == 0 else 3 + (tok + k) % 256
                    t.logprob, t.text = -0.5 - k, tok_text(t.id)
            if tok in stops:
                finish = pb2.FINISH_REASON_STOP
                break
            hit = next((st for st in req.stop if st and st in text), None)
            if hit:
                finish = pb2.FINISH_REASON_STOP
                pending.text = pending.text[: max(0, len(pending.text) - (len(text) - text.index(hit)))]
                break
            if len(pending.token_ids) == 1 + n % 2:  # messages of 1 or 2 ids
                yield pending
                pending = pb2.GenerateResponse(request_id=rid)
        pending.finish_reason = finish
        total = (time.monotonic() - t0) * 1000
        pending.usage.CopyFrom(pb2.Usage(prompt_tokens=len(prompt), completion_tokens=len(out),
                                         queue_ms=0.0, ttft_ms=ttft or total, total_ms=total))
        yield pending

    def Tokenize(self, req, context):
        if req.WhichOneof("input") == "chat":
            return pb2.TokenizeResponse(ids=tokenize(render_chat(req.chat.messages)))
        ids = tokenize(req.text)
        return pb2.TokenizeResponse(ids=ids if req.add_special else ids[1:])

    def GetModelInfo(self, req, context):
        with self.lock:
            running = len(self.live)
        return pb2.ModelInfo(model="fake", architecture="llama", tp=1, pp=1,
                             context_length=4096, vocab_size=VOCAB, kv_block_size=16,
                             kv_blocks_total=1024, kv_blocks_free=1024, workers_attached=1,
                             workers_expected=1, requests_running=running)

    def Abort(self, req, context):
        with self.lock:
            ev = self.live.get(req.request_id)
        if ev is not None:
            ev.set()
        return pb2.AbortResponse(found=ev is not None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--token-delay-ms", type=float, default=5.0)
    ap.add_argument("--eos-after", type=int, default=0,
                    help="emit EOS as the N-th generated token (0: never)")
    args = ap.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=128))
    pb2_grpc.add_GenerationServicer_to_server(
        FakeGeneration(args.token_delay_ms / 1000, args.eos_after), server)
    port = server.add_insecure_port(args.listen)
    host = args.listen.rsplit(":", 1)[0]
    print(f"listening on {host}:{port}", flush=True)
    server.start()
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(1)


if __name__ == "__main__":
    main()

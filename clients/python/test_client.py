#!/usr/bin/env python3
"""End-to-end test of a running shardlm server through the Python client.

    SHARDLM_SERVER=127.0.0.1:50051 python3 clients/python/test_client.py

A secured server: SHARDLM_TLS_CA (PEM file: TLS trusting it), SHARDLM_TLS_CERT and
SHARDLM_TLS_KEY (a client certificate), SHARDLM_AUTH_TOKEN_FILE (the bearer token); then it also
checks that a client without the token, with a wrong one, or without TLS is refused.

Exit codes: 0 passed, 1 failed, 77 skipped (ctest SKIP_RETURN_CODE; tests/e2e/service_test.cpp
reports it as a skip): without SHARDLM_SERVER, or when a Python package the client needs (grpcio,
grpcio-tools for the stubs, protobuf) is not installed. It waits up to
SHARDLM_READY_TIMEOUT seconds (default 120) for every worker rank, then checks streaming
(ids, text, finish reason, usage), greedy and seeded determinism, concurrent requests,
Tokenize, GetModelInfo, Abort, deadlines and argument errors.
"""
import os
import sys
import threading
import unittest

SKIP = 77
SERVER = os.environ.get("SHARDLM_SERVER", "")

if __name__ == "__main__" and not SERVER:
    print("test_client: SHARDLM_SERVER is not set (host:port of a running coordinator); skipping")
    sys.exit(SKIP)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from shardlm_client import Client, ShardlmError  # noqa: E402
    import grpc  # noqa: E402
except (ImportError, RuntimeError) as e:  # pragma: no cover
    # A missing package is a skip; anything else (stubs that do not generate) is a failure.
    missing = isinstance(e, ImportError) or isinstance(e.__cause__, ImportError)
    print(f"test_client: {e}" + (": python3 -m pip install grpcio grpcio-tools protobuf "
                                 "(scripts/install-deps.sh); skipping" if missing else ""),
          file=sys.stderr)
    if __name__ == "__main__":
        sys.exit(SKIP if missing else 1)
    raise


def _env(name):
    return os.environ.get(name) or None


SECURITY = dict(tls_ca=_env("SHARDLM_TLS_CA"), tls_cert=_env("SHARDLM_TLS_CERT"),
                tls_key=_env("SHARDLM_TLS_KEY"), auth_token_file=_env("SHARDLM_AUTH_TOKEN_FILE"))


class ClientTest(unittest.TestCase):
    client: Client
    info: dict

    @classmethod
    def setUpClass(cls):
        cls.client = Client(SERVER, timeout=300, **SECURITY)
        cls.info = cls.client.wait_ready(float(os.environ.get("SHARDLM_READY_TIMEOUT", "120")))
        # A model without a tokenizer (tiny test models) takes token ids only.
        try:
            cls.prompt = cls.client.tokenize("The quick brown fox")
            cls.has_tokenizer = True
        except ShardlmError as e:
            if "FAILED_PRECONDITION" not in str(e):
                raise
            cls.prompt = [1, 5, 9, 13, 17]
            cls.has_tokenizer = False

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def test_model_info(self):
        info = self.info
        self.assertGreater(info["tp"], 0)
        self.assertGreater(info["pp"], 0)
        self.assertEqual(info["workers_expected"], info["tp"] * info["pp"])
        self.assertEqual(info["workers_attached"], info["workers_expected"])
        self.assertGreater(info["vocab_size"], 0)
        self.assertGreater(info["context_length"], 0)
        self.assertGreater(info["kv_blocks_total"], 0)
        self.assertTrue(info["model"])

    def test_tokenize(self):
        if not self.has_tokenizer:
            self.skipTest("the model has no tokenizer")
        self.assertGreater(len(self.prompt), 0)
        for i in self.prompt:
            self.assertTrue(0 <= i < self.info["vocab_size"], i)
        chat = self.client.tokenize(chat=[{"role": "user", "content": "Hi"}])
        self.assertGreater(len(chat), len(self.client.tokenize("Hi", add_special=False)))

    def test_stream_length(self):
        n = 12
        chunks = list(self.client.generate(token_ids=self.prompt, max_new_tokens=n,
                                           ignore_eos=True, temperature=0))
        self.assertGreater(len(chunks), 0)
        ids = [i for c in chunks for i in c.token_ids]
        self.assertEqual(len(ids), n)
        for i in ids:
            self.assertTrue(0 <= i < self.info["vocab_size"], i)
        for c in chunks[:-1]:
            self.assertIsNone(c.finish_reason)
            self.assertIsNone(c.usage)
        last = chunks[-1]
        self.assertEqual(last.finish_reason, "length", last.error)
        self.assertIsNotNone(last.usage)
        self.assertEqual(last.usage.prompt_tokens, len(self.prompt))
        self.assertEqual(last.usage.completion_tokens, n)
        self.assertGreater(last.usage.ttft_ms, 0)
        self.assertGreaterEqual(last.usage.total_ms, last.usage.ttft_ms)
        self.assertTrue(all(c.request_id == chunks[0].request_id for c in chunks))
        # The same greedy request again gives the same ids.
        again = self.client.generate_all(token_ids=self.prompt, max_new_tokens=n,
                                         ignore_eos=True, temperature=0)
        self.assertEqual(again.token_ids, ids)

    def test_text_prompt_and_chat(self):
        if not self.has_tokenizer:
            self.skipTest("the model has no tokenizer")
        r = self.client.generate_all("The capital of France is", max_new_tokens=8, temperature=0)
        self.assertIn(r.finish_reason, ("length", "eos"))
        self.assertEqual(r.usage.completion_tokens, len(r.token_ids))
        self.assertIsInstance(r.text, str)
        if r.finish_reason == "length":
            self.assertEqual(len(r.token_ids), 8)
        r = self.client.generate_all(chat=[("user", "What is the capital of France?")],
                                     max_new_tokens=24, temperature=0)
        self.assertIn(r.finish_reason, ("length", "eos"))
        self.assertGreater(len(r.token_ids), 0)

    def test_seeded_sampling_is_reproducible(self):
        kw = dict(token_ids=self.prompt, max_new_tokens=10, ignore_eos=True, temperature=0.9,
                  top_p=0.95, seed=1234)
        a = self.client.generate_all(**kw)
        b = self.client.generate_all(**kw)
        self.assertEqual(a.finish_reason, "length")
        self.assertEqual(a.token_ids, b.token_ids)

    def test_concurrent_requests_match_single(self):
        n = 8
        want = self.client.generate_all(token_ids=self.prompt, max_new_tokens=n, ignore_eos=True,
                                        temperature=0).token_ids
        got = [None] * 4
        errors = []

        def run(k):
            try:
                got[k] = self.client.generate_all(token_ids=self.prompt, max_new_tokens=n,
                                                  ignore_eos=True, temperature=0).token_ids
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(got))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        for g in got:
            self.assertEqual(g, want)

    def test_abort(self):
        limit = int(min(2000, self.info["context_length"] - len(self.prompt) - 1))
        rid = self.client.new_request_id()
        stream = self.client.generate(token_ids=self.prompt, max_new_tokens=limit,
                                      ignore_eos=True, temperature=0, request_id=rid)
        first = next(stream)
        self.assertEqual(first.request_id, rid)
        self.assertTrue(self.client.abort(rid))
        rest = list(stream)
        last = rest[-1] if rest else first
        self.assertEqual(last.finish_reason, "cancelled")
        total = len(first.token_ids) + sum(len(c.token_ids) for c in rest)
        self.assertLess(total, limit)
        self.assertFalse(self.client.abort(rid))
        self.assertFalse(self.client.abort("no-such-request"))

    def test_invalid_arguments(self):
        with self.assertRaises(ShardlmError) as e:
            self.client.generate_all(token_ids=self.prompt, max_new_tokens=0)
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("max_new_tokens", e.exception.details)
        with self.assertRaises(ShardlmError) as e:
            self.client.generate_all(token_ids=self.prompt, max_new_tokens=4, temperature=-1)
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("temperature", e.exception.details)
        with self.assertRaises(ShardlmError) as e:
            self.client.generate_all(token_ids=[self.info["vocab_size"] + 5], max_new_tokens=4)
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_deadline(self):
        limit = int(min(2000, self.info["context_length"] - len(self.prompt) - 1))
        try:
            r = self.client.generate_all(token_ids=self.prompt, max_new_tokens=limit,
                                         ignore_eos=True, temperature=0, timeout=0.3)
        except ShardlmError as e:
            self.assertEqual(e.code, grpc.StatusCode.DEADLINE_EXCEEDED, e)
        else:  # the server saw the deadline first and ended the stream itself
            self.assertEqual(r.finish_reason, "cancelled")

    def test_wrong_credentials_are_refused(self):
        tls = {k: v for k, v in SECURITY.items() if k != "auth_token_file"}
        if SECURITY["auth_token_file"]:
            for token in (None, "not-the-token-0123456789"):
                with Client(SERVER, timeout=10, auth_token=token, **tls) as c:
                    with self.assertRaises(ShardlmError) as e:
                        c.model_info()
                    self.assertEqual(e.exception.code, grpc.StatusCode.UNAUTHENTICATED)
                    with self.assertRaises(ShardlmError) as e:
                        c.generate_all(token_ids=self.prompt, max_new_tokens=2)
                    self.assertEqual(e.exception.code, grpc.StatusCode.UNAUTHENTICATED)
        if SECURITY["tls_ca"]:
            with Client(SERVER, timeout=10, auth_token_file=SECURITY["auth_token_file"]) as c:
                with self.assertRaises(ShardlmError) as e:
                    c.model_info()
                self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)
        if not SECURITY["auth_token_file"] and not SECURITY["tls_ca"]:
            self.skipTest("a plaintext server without a token refuses nobody")


if __name__ == "__main__":
    unittest.main(verbosity=2)

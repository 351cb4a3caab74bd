"""The coordinator's OpenAI-compatible HTTP API through the official `openai` client.

Run by tests/e2e/openai_test.cpp, which starts the servers and sets the environment:
  SHARDLM_OPENAI_MODE   serve (a worker job on SmolLM2 attached), token or tls (no workers)
  SHARDLM_HTTP          http(s)://HOST:PORT of the coordinator's --http-listen
  SHARDLM_MODEL         the --model path
  SHARDLM_TOKEN_FILE    (token) the --auth-token-file
  SHARDLM_CERTS         (tls) the folder of tests/tls/make-test-certs.sh
Exit codes: 0 passed, 1 failed, 77 skipped (the openai package is missing).
"""
import json
import os
import ssl
import sys
import unittest
import urllib.error
import urllib.request

try:
    import openai
except ImportError as e:  # pragma: no cover
    print(f"skipped: the openai package is not importable ({e}); "
          "scripts/install-deps.sh installs it")
    sys.exit(77)

MODE = os.environ.get("SHARDLM_OPENAI_MODE", "serve")
BASE = os.environ.get("SHARDLM_HTTP", "")
MODEL = os.environ.get("SHARDLM_MODEL", "")
MODEL_NAME = os.path.basename(MODEL.rstrip("/"))


def client(**kwargs):
    kwargs.setdefault("api_key", "unused")
    return openai.OpenAI(base_url=BASE + "/v1", max_retries=0, timeout=60, **kwargs)


def raw(method, path, body=None, headers=None, context=None):
    """(status, parsed JSON body) of a plain HTTP call."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60, context=context) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def error_of(exc):
    """The {"message", "type", "param", "code"} object of an APIStatusError."""
    body = exc.body
    if isinstance(body, dict) and "error" in body:
        body = body["error"]
    return body


@unittest.skipUnless(MODE == "serve", "needs the serving coordinator")
class ServeTest(unittest.TestCase):
    c = None

    @classmethod
    def setUpClass(cls):
        cls.c = client()

    def complete(self, **kw):
        kw.setdefault("model", MODEL_NAME)
        kw.setdefault("prompt", "The capital of France is")
        kw.setdefault("max_tokens", 8)
        kw.setdefault("temperature", 0)
        return self.c.completions.create(**kw)

    def chat(self, **kw):
        kw.setdefault("model", MODEL)
        kw.setdefault("messages", [{"role": "user", "content": "Name a colour."}])
        kw.setdefault("max_tokens", 8)
        kw.setdefault("temperature", 0)
        return self.c.chat.completions.create(**kw)

    def test_models_lists_the_model(self):
        ids = [m.id for m in self.c.models.list().data]
        self.assertEqual(ids, [MODEL])

    def test_completion_usage_and_finish_reason(self):
        r = self.complete()
        self.assertTrue(r.id.startswith("cmpl-"))
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(len(r.choices), 1)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertTrue(r.choices[0].text)
        self.assertEqual(r.usage.completion_tokens, 8)
        self.assertGreater(r.usage.prompt_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + 8)

    def test_greedy_is_deterministic_and_streamed_equals_whole(self):
        a = self.complete().choices[0].text
        b = self.complete().choices[0].text
        self.assertEqual(a, b)
        chunks = list(self.complete(stream=True, stream_options={"include_usage": True}))
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        self.assertEqual(text, a)
        finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
        self.assertEqual(finishes[-1], "length")
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 8)

    def test_chat_whole_and_streamed(self):
        r = self.chat()
        self.assertTrue(r.id.startswith("chatcmpl-"))
        self.assertEqual(r.object, "chat.completion")
        msg = r.choices[0].message
        self.assertEqual(msg.role, "assistant")
        self.assertTrue(msg.content)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        chunks = list(self.chat(stream=True))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual(chunks[0].object, "chat.completion.chunk")
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        self.assertEqual(text, msg.content)
        self.assertEqual(chunks[-1].choices[0].finish_reason, r.choices[0].finish_reason)

    def test_n_samples(self):
        r = self.complete(n=2, temperature=1.0, seed=7, max_tokens=6, extra_body={"ignore_eos": True})
        self.assertEqual(sorted(c.index for c in r.choices), [0, 1])
        self.assertEqual(r.usage.completion_tokens, 12)
        again = self.complete(n=2, temperature=1.0, seed=7, max_tokens=6,
                              extra_body={"ignore_eos": True})
        self.assertEqual([c.text for c in r.choices], [c.text for c in again.choices])
        streamed = {0: "", 1: ""}
        for ch in self.complete(n=2, temperature=1.0, seed=7, max_tokens=6, stream=True,
                                extra_body={"ignore_eos": True}):
            for c in ch.choices:
                streamed[c.index] += c.text
        self.assertEqual([streamed[0], streamed[1]], [c.text for c in r.choices])

    def test_stop_string(self):
        full = self.complete(max_tokens=16, extra_body={"ignore_eos": True}).choices[0].text
        self.assertGreaterEqual(len(full), 4, full)
        stop = full[len(full) // 2:len(full) // 2 + 2]
        r = self.complete(max_tokens=16, stop=[stop], extra_body={"ignore_eos": True})
        self.assertEqual(r.choices[0].text, full[:full.find(stop)])
        self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_logprobs(self):
        r = self.complete(logprobs=2)
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 8)
        self.assertEqual(len(lp.token_logprobs), 8)
        self.assertEqual(len(lp.text_offset), 8)
        for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
            self.assertLessEqual(chosen, 0.0)
            self.assertTrue(1 <= len(top) <= 2, top)
            # Greedy: the chosen token is the likeliest.
            self.assertAlmostEqual(max(top.values()), chosen, places=4)
        c = self.chat(logprobs=True, top_logprobs=3)
        content = c.choices[0].logprobs.content
        self.assertEqual(len(content), c.usage.completion_tokens)
        for t in content:
            self.assertEqual(len(t.top_logprobs), 3)
            self.assertEqual(bytes(t.bytes).decode("utf-8", "replace"), t.token)

    def test_bad_fields_get_400_naming_them(self):
        for kw, param in [({"temperature": -1}, "temperature"),
                          ({"max_tokens": 0}, "max_tokens"),
                          ({"top_p": 0}, "top_p"),
                          ({"max_tokens": "x"}, "max_tokens"),
                          ({"logprobs": 50}, "logprobs"),
                          ({"prompt": ["a", "b"]}, "prompt")]:
            with self.assertRaises(openai.BadRequestError, msg=str(kw)) as cm:
                self.complete(**kw)
            self.assertEqual(cm.exception.status_code, 400)
            err = error_of(cm.exception)
            self.assertEqual(err["param"], param, err)
            self.assertEqual(err["code"], 400)
            self.assertIn(param, err["message"])
        with self.assertRaises(openai.BadRequestError) as cm:
            self.chat(messages=[])
        self.assertEqual(error_of(cm.exception)["param"], "messages")

    def test_unknown_model_and_route_get_404(self):
        with self.assertRaises(openai.NotFoundError) as cm:
            self.complete(model="no-such-model")
        self.assertEqual(error_of(cm.exception)["param"], "model")
        status, body = raw("GET", "/v1/no-such-route")
        self.assertEqual(status, 404)
        self.assertEqual(body["error"]["code"], 404)

    def test_health(self):
        status, _ = raw("GET", "/health")
        self.assertEqual(status, 200)

    def test_metrics_count_the_tokens_served(self):
        try:
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError:
            self.skipTest("prometheus_client is not installed (scripts/install-deps.sh)")

        def scrape():
            req = urllib.request.Request(BASE + "/metrics")
            with urllib.request.urlopen(req, timeout=60) as r:
                self.assertEqual(r.status, 200)
                self.assertTrue(r.headers["Content-Type"].startswith("text/plain"))
                text = r.read().decode()
            samples = {}
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    samples[(s.name, s.labels.get("finished_reason", ""))] = s.value
            return samples

        before = scrape()
        r = self.complete(max_tokens=5)
        after = scrape()

        def moved(name, reason=""):
            return after[(name, reason)] - before.get((name, reason), 0)

        self.assertEqual(moved("shardlm:prompt_tokens_total"), r.usage.prompt_tokens)
        self.assertEqual(moved("shardlm:generation_tokens_total"), 5)
        self.assertEqual(moved("shardlm:request_success_total", "length"), 1)
        self.assertEqual(moved("shardlm:e2e_request_latency_seconds_count"), 1)
        self.assertEqual(after[("shardlm:workers_attached", "")], 1)
        self.assertEqual(after[("shardlm:num_requests_running", "")], 0)

    def test_tokenize_detokenize_round_trip(self):
        text = "Hello world, shardlm!"
        status, body = raw("POST", "/tokenize", {"prompt": text, "add_special_tokens": False})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["count"], len(body["tokens"]))
        self.assertGreater(body["count"], 0)
        self.assertGreater(body["max_model_len"], 0)
        status, back = raw("POST", "/detokenize", {"tokens": body["tokens"]})
        self.assertEqual(status, 200, back)
        self.assertEqual(back["prompt"], text)
        status, chat = raw("POST", "/tokenize",
                           {"messages": [{"role": "user", "content": "Name a colour."}]})
        self.assertEqual(status, 200, chat)
        # The chat prompt's length is what a chat completion reports as its prompt.
        self.assertEqual(chat["count"], self.chat(max_tokens=1).usage.prompt_tokens)
        status, bad = raw("POST", "/detokenize", {"tokens": [-1]})
        self.assertEqual(status, 400)
        self.assertEqual(bad["error"]["param"], "tokens")


@unittest.skipUnless(MODE == "token", "needs the coordinator with --auth-token-file")
class TokenTest(unittest.TestCase):
    def setUp(self):
        with open(os.environ["SHARDLM_TOKEN_FILE"]) as f:
            self.token = f.read().rstrip("\n")

    def test_wrong_or_missing_token_is_refused(self):
        with self.assertRaises(openai.AuthenticationError) as cm:
            client(api_key="wrong-token").models.list()
        self.assertEqual(error_of(cm.exception)["code"], 401)
        with self.assertRaises(openai.AuthenticationError):
            client(api_key=self.token + "x").completions.create(model=MODEL, prompt="hi",
                                                                max_tokens=1)
        status, body = raw("GET", "/v1/models")
        self.assertEqual(status, 401)
        self.assertEqual(body["error"]["code"], 401)
        status, _ = raw("POST", "/tokenize", {"prompt": "hi"})
        self.assertEqual(status, 401)

    def test_right_token_is_served(self):
        ids = [m.id for m in client(api_key=self.token).models.list().data]
        self.assertEqual(ids, [MODEL])
        status, body = raw("POST", "/tokenize", {"prompt": "hi"},
                           {"Authorization": "Bearer " + self.token})
        self.assertNotEqual(status, 401, body)

    def test_health_needs_no_token(self):
        status, _ = raw("GET", "/health")
        self.assertEqual(status, 503)  # not 401: no worker job is attached


@unittest.skipUnless(MODE == "tls", "needs the coordinator with --tls-cert")
class TlsTest(unittest.TestCase):
    def context(self, ca="ca", cert=None):
        certs = os.environ["SHARDLM_CERTS"]
        ctx = ssl.create_default_context(cafile=os.path.join(certs, ca + ".pem"))
        if cert is not None:
            ctx.load_cert_chain(os.path.join(certs, cert + ".pem"),
                                os.path.join(certs, cert + ".key"))
        return ctx

    def tls_client(self, ctx, base=None):
        return openai.OpenAI(base_url=(base or BASE) + "/v1", api_key="unused", max_retries=0,
                             timeout=30, http_client=openai.DefaultHttpxClient(verify=ctx))

    def test_client_certificate_of_the_ca_is_served(self):
        ids = [m.id for m in self.tls_client(self.context(cert="client")).models.list().data]
        self.assertEqual(ids, [MODEL])

    def test_other_clients_are_refused(self):
        refused = {
            "a client certificate of another CA": self.context(cert="other-client"),
            "no client certificate": self.context(),
            "a client that does not trust the server": self.context(ca="other-ca", cert="client"),
        }
        for what, ctx in refused.items():
            with self.assertRaises(openai.APIConnectionError, msg=what):
                self.tls_client(ctx).models.list()
        with self.assertRaises(openai.APIConnectionError, msg="plaintext"):
            openai.OpenAI(base_url=BASE.replace("https://", "http://") + "/v1", api_key="unused",
                          max_retries=0, timeout=30).models.list()


if __name__ == "__main__":
    if not BASE:
        print("skipped: SHARDLM_HTTP is not set (tests/e2e/openai_test.cpp sets it)")
        sys.exit(77)
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() else 1)

#!/usr/bin/env python3
"""Streams one answer from a running shardlm coordinator.

    python3 clients/python/example.py --server 127.0.0.1:50051 "What is the capital of France?"
    python3 clients/python/example.py --server ADDR --prompt "Once upon a time" --temperature 0.8 --seed 1
    python3 clients/python/example.py --server ADDR --info
    python3 clients/python/example.py --server localhost:50051 --tls-ca ca.pem \
        --auth-token-file token --info          # a server with TLS and a bearer token
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardlm_client import Client, ShardlmError  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description="shardlm Python client example")
    ap.add_argument("--server", default=os.environ.get("SHARDLM_SERVER", "127.0.0.1:50051"))
    ap.add_argument("message", nargs="?", help="a user message (wrapped in the chat template)")
    ap.add_argument("--prompt", help="raw prompt text instead of a chat message")
    ap.add_argument("--system", help="a system message before the user message")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--stop", action="append", default=[])
    ap.add_argument("--info", action="store_true", help="print the model info and exit")
    ap.add_argument("--wait", type=float, default=0, help="wait up to S seconds for the workers")
    ap.add_argument("--tls-ca", help="PEM CA certificates: connect over TLS, trusting them")
    ap.add_argument("--tls-cert", help="PEM client certificate (mTLS; with --tls-key)")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    ap.add_argument("--auth-token-file", help="file holding the server's bearer token")
    args = ap.parse_args()

    try:
        client = Client(args.server, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                        tls_key=args.tls_key, auth_token_file=args.auth_token_file)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with client:
        try:
            if args.wait > 0:
                client.wait_ready(args.wait)
            if args.info:
                print(json.dumps(client.model_info(), indent=2))
                return 0
            if (args.message is None) == (args.prompt is None):
                ap.error("give a message or --prompt")
            kw = dict(max_new_tokens=args.max_new_tokens, stop=args.stop,
                      temperature=args.temperature, top_p=args.top_p, seed=args.seed)
            if args.prompt is not None:
                stream = client.generate(args.prompt, **kw)
            else:
                chat = [("system", args.system)] if args.system else []
                stream = client.generate(chat=chat + [("user", args.message)], **kw)
            last = None
            for chunk in stream:
                print(chunk.text, end="", flush=True)
                last = chunk
            print()
            u = last.usage
            print(f"[{last.finish_reason}] prompt {u.prompt_tokens} tokens, completion "
                  f"{u.completion_tokens} tokens, TTFT {u.ttft_ms:.1f} ms, total {u.total_ms:.1f} ms",
                  file=sys.stderr)
            if last.finish_reason == "error":
                print(f"error: {last.error}", file=sys.stderr)
                return 1
        except ShardlmError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

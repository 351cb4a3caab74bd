#!/usr/bin/env python3
"""Pins shardlm to llama.cpp on a real GGUF: SmolLM2-135M-Instruct Q4_1 (the default) or the base
Gemma 3 270M Q4_K_M (--set gemma3; scripts/get-model.sh gemma3).

Runs llama-cpp-python (pip) greedily on 4 prompts for 32 steps with all logits, and writes
tests/goldens/llamacpp/<set>.json: for each prompt its text, llama.cpp's prompt token ids, the 32
generated ids, and for each generated position the top-32 (id, logit) pairs of llama.cpp's logits
(compact: the full rows would be 25 MB). tests/goldens/llamacpp_test.cpp feeds shardlm the same
token sequences (teacher forcing), requires top-1 agreement on >= 95% of positions and wherever
llama.cpp's own top-1/top-2 margin is >= 0.5, reports the max and mean |logit diff| over those
top-32 entries, and checks shardlm's tokenizer gives the same prompt ids.

For gemma3 it also writes tests/goldens/llamacpp/gemma3_tokenizer.json: llama.cpp's ids for a
varied corpus (English, code, whitespace runs, newlines, CJK, emoji, characters only byte
fallback can spell, special-token text) with and without BOS and special-token parsing, and
llama.cpp's text for each id list (special tokens rendered); tests/tokenizer/
tokenizer_gemma3_test.cpp checks shardlm's tokenizer against it.

Usage: python3 scripts/compare-llamacpp.py [--set smollm2|gemma3] [--model PATH] [--out PATH]
Needs: pip install llama-cpp-python numpy (CI does not: the result is committed).
"""
import argparse
import json
import os

import numpy as np

STEPS = 32
TOP = 32

SETS = {
    "smollm2": {
        "model": "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "out": "tests/goldens/llamacpp/smollm2.json",
        "prompts": [
            "The capital of France is",
            "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
            "<|im_start|>user\nWhat is 17 times 23?<|im_end|>\n<|im_start|>assistant\n",
            "Once upon a time, in a small village near the mountains, there lived",
        ],
    },
    # A base model: plain continuations, no chat turns.
    "gemma3": {
        "model": "models/gemma-3-270m-q4_k_m.gguf",
        "out": "tests/goldens/llamacpp/gemma3.json",
        "tokenizer_out": "tests/goldens/llamacpp/gemma3_tokenizer.json",
        "prompts": [
            "The capital of France is",
            "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
            "Once upon a time, in a small village near the mountains, there lived",
            "Water boils at 100 degrees Celsius. The boiling point of water",
        ],
    },
}

# Strings for the tokenizer comparison: each is tokenized with (add_special, parse_special) in
# all four combinations.
TOKENIZER_CORPUS = [
    "",
    " ",
    "Hello world",
    " Hello world",
    "Hello  world   with    runs     of      spaces",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure it's fine, isn't it? \"Quoted\" and 'single' - dash -- em\u2014dash...",
    "trailing spaces   ",
    "   leading spaces",
    "line one\nline two\n\nparagraph\n\n\n\nfour newlines\n",
    "\n",
    "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
    "windows\r\nline\r\nendings\r\n",
    "\ttab\t\ttwo tabs\t\t\t\tfour",
    " \t \n \t\n",
    " " * 40 + "forty spaces",
    "12345 3.14159 1,000,000 2024-01-31 0x1F 1e-9 -42",
    "def f(x):\n    return x ** 2  # comment\n\nclass A:\n\tpass\n",
    "#include <stdio.h>\nint main(void) {\n  printf(\"%d\\n\", 42);\n  return 0;\n}\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "{\"key\": [1, 2, {\"nested\": null}], \"ok\": true}",
    "<div class=\"main\"><span>text</span></div>\n<ul><li>item</li></ul>",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "https://example.com/path?query=1&lang=en#anchor user@example.org",
    "na\u00efve caf\u00e9 r\u00e9sum\u00e9 \u00fcber Stra\u00dfe \u00e5ngstr\u00f6m",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002\u6771\u4eac\u306f\u5927\u304d\u3044\u3002",
    "\u4e2d\u6587\u6d4b\u8bd5\uff1a\u4eba\u5de5\u667a\u80fd\u6b63\u5728\u6539\u53d8\u4e16\u754c\u3002",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4.",
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442 \u0438 "
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea "
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u0e44\u0e17\u0e22",
    "emoji \U0001f600\U0001f680\U0001f999 \u2764\ufe0f \U0001f44d\U0001f3fd "
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1eb\U0001f1f7",
    "math \u2211\u222b\u221a\u221e \u2260 \u2264 \u03c0r\u00b2 \u2192 \u2200x\u2203y",
    # Characters the vocabulary lacks: byte fallback only.
    "\u00a0nbsp\u00a0and\u2028line separator",
    "\U0001fae8 \U00020000\U0002a6d6 \U00013000 \U000e0001 \U0010ffff",
    "ctrl \x00\x04\x07\x0b\x0c\x0e\x1c\x1f end",
    "\u2581 lower one eighth block \u2581\u2581",
    "<0x41> <unk> written out",
    # Special-token text inside ordinary text.
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after bos<eos>",
    "a<pad>b<mask>c<unk>d",
    "<start_of_image> picture <end_of_image>",
    "[multimodal] and <unused0> and <unused6241>",
    "no space<start_of_turn>joined<end_of_turn>text",
    " <start_of_turn> spaced <end_of_turn> ",
    "<start_of_turn without close <end_of_turn",
    "<<start_of_turn>>",
    "<bos><bos><eos>",
    "Mixed \U0001f600 text<end_of_turn>\n\n\n<start_of_turn>model\n  indented\tcode",
]


def token_pieces(llm, ids):
    """llama.cpp's text for `ids`: the concatenated llama_token_to_piece of each id, special
    tokens rendered (Llama.detokenize has a 32-byte piece buffer and drops a space after BOS)."""
    import ctypes

    import llama_cpp

    out = b""
    buf = ctypes.create_string_buffer(1024)
    for i in ids:
        n = llama_cpp.llama_token_to_piece(llm._model.vocab, i, buf, len(buf), 0, True)
        assert 0 <= n <= len(buf), (i, n)
        out += buf.raw[:n]
    return out.decode("utf-8")


def tokenizer_vectors(llm, opts, version):
    cases = []
    for text in TOKENIZER_CORPUS:
        for add_special in (True, False):
            for parse_special in (True, False):
                ids = llm.tokenize(text.encode("utf-8"), add_bos=add_special,
                                   special=parse_special)
                cases.append({"text": text, "add_special": add_special,
                              "parse_special": parse_special, "ids": list(map(int, ids)),
                              "pieces": token_pieces(llm, ids)})
    return {
        "generator": "scripts/compare-llamacpp.py --set gemma3",
        "reference": "llama-cpp-python %s: Llama.tokenize(text, add_bos, special); pieces: "
                     "llama_token_to_piece(id, special=True) of each id, concatenated" % version,
        "model": os.path.basename(opts.model),
        "cases": cases,
    }


def write_tokenizer_vectors(vectors, path):
    """The json with one case per line, so that a diff shows which string changed."""
    head = {k: v for k, v in vectors.items() if k != "cases"}
    with open(path, "w") as f:
        f.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in vectors["cases"]))
        f.write("\n]}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=sorted(SETS), default="smollm2")
    ap.add_argument("--model", help="default: the set's GGUF under models/")
    ap.add_argument("--out", help="default: tests/goldens/llamacpp/<set>.json")
    ap.add_argument("--threads", type=int, default=2)
    opts = ap.parse_args()
    spec = SETS[opts.set]
    opts.model = opts.model or spec["model"]
    opts.out = opts.out or spec["out"]

    import llama_cpp

    # f32 KV cache (llama.cpp's default is f16): keeps the reference's own rounding down to its
    # Q8 activation quantization, which is inherent to its quantized matmuls.
    llm = llama_cpp.Llama(model_path=opts.model, n_ctx=512, n_threads=opts.threads,
                          n_batch=512, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    result = {
        "generator": "scripts/compare-llamacpp.py",
        "reference": "llama-cpp-python %s, CPU, %d threads, f32 KV cache" % (
            llama_cpp.__version__, opts.threads),
        "model": os.path.basename(opts.model),
        "steps": STEPS,
        "top": TOP,
        "prompts": [],
    }
    if opts.set != "smollm2":
        result["generator"] += " --set " + opts.set
    for text in spec["prompts"]:
        # special=True: chat markers in a prompt are parsed as special tokens.
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        generated, tops = [], []
        for _ in range(STEPS):
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            nxt = int(np.argmax(row))
            order = np.argsort(-row, kind="stable")[:TOP]
            tops.append({"ids": [int(i) for i in order],
                         "logits": [round(float(row[i]), 5) for i in order]})
            generated.append(nxt)
            llm.eval([nxt])
        result["prompts"].append({"text": text, "prompt_ids": list(map(int, ids)),
                                  "generated_ids": generated, "top": tops})
        print(repr(text[:40]), "->", llm.detokenize(generated).decode("utf-8", "replace")[:60])
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(result, f, separators=(",", ":"))
        f.write("\n")

    if "tokenizer_out" in spec:
        vectors = tokenizer_vectors(llm, opts, llama_cpp.__version__)
        write_tokenizer_vectors(vectors, spec["tokenizer_out"])
        print("%s: %d cases, %d ids" % (spec["tokenizer_out"], len(vectors["cases"]),
                                        sum(len(c["ids"]) for c in vectors["cases"])))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""HF transformers baseline for bench/gpu_decode: the same model shape on the same GPU.

A LlamaForCausalLM with the Llama-2-7B shape (hidden 4096, intermediate 11008, 32 layers, 32 heads,
32 KV heads, vocab 32000, RMSNorm eps 1e-5, RoPE theta 10000), random weights (seed 0, normal
std 0.02 -- HF's own init with initializer_range 0.02, never zeros), bf16 on cuda:0, sdpa (or eager)
attention, KV cache on. Measures:

  batch-1 decode tok/s: a manual loop of forward() calls on a DynamicCache after a separate
      prefill of a --prompt-token random prompt, greedy (argmax on the GPU, no host sync per
      step), --gen steps, after a warm-up; best of 2. (A loop rather than generate(N) minus
      generate(1): it times exactly the decode steps, with no difference of two noisy totals.)
  throughput per batch size: generate() of exactly --gen new tokens (min_new_tokens =
      max_new_tokens, greedy, no EOS) after random --prompt-token prompts; output_tok_s =
      batch * gen / total_s; prefill_s from a generate(max_new_tokens=1) and decode_step_ms =
      (total_s - prefill_s) / (gen - 1). One timed run per batch, after a short warm-up run.
      CUDA out-of-memory is recorded as {"batch": b, "error": "oom"} (larger batches are then
      skipped the same way); batches that would overrun --time-budget are skipped.

  python3 bench/compare_hf.py [--layers 32] [--batches 1,2,4,...,256] [--prompt 128] [--gen 128]
      [--attn sdpa|eager] [--time-budget 100] [--json FILE]

Writes the keys of gpu_decode's JSON that apply ({"gpu", "model", "dtype", "weight_bytes",
"batch1_decode_tok_s", "throughput": [{"batch", "prompt", "gen", "output_tok_s", "total_s",
"decode_step_ms"}]}) plus "transformers", "torch" and how it measured; the file is rewritten after
each batch, so a run cut short leaves what it had. Exits 77 without torch, transformers or CUDA.
--smoke runs a tiny model (on the CPU when there is no GPU) to test this script.
"""
import argparse
import gc
import json
import sys
import time
import warnings

SKIP = 77


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--time-budget", type=float, default=100.0,
                    help="seconds for the whole run; batches that would overrun it are skipped")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model (hidden 256, 2 layers), CPU if no GPU: tests this script")
    a = ap.parse_args()
    try:
        a.batches = [int(b) for b in a.batches.split(",") if b.strip()]
    except ValueError:
        ap.error(f"--batches: comma-separated integers, got '{a.batches}'")
    if not a.batches or min(a.batches) < 1 or a.layers < 1 or a.prompt < 1 or a.gen < 2:
        ap.error("--batches, --layers, --prompt must be >= 1 and --gen >= 2")
    return a


def main():
    a = parse_args()
    # transformers 5.x deprecates past_key_values= in favour of cache= (not in every 5.x yet).
    warnings.filterwarnings("ignore", category=FutureWarning)
    t_start = time.perf_counter()
    try:
        import torch
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        print(f"compare_hf: skipped: needs torch and transformers ({e})", file=sys.stderr)
        return SKIP
    if torch.cuda.is_available():
        device = torch.device("cuda", 0)
        gpu = torch.cuda.get_device_name(0)
    elif a.smoke:
        device, gpu = torch.device("cpu"), "none (cpu smoke test)"
    else:
        print(f"compare_hf: skipped: torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return SKIP

    shape = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000)
    if a.smoke:
        shape = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=1000)
        a.layers = min(a.layers, 2)
    config = LlamaConfig(**shape, num_hidden_layers=a.layers, rms_norm_eps=1e-5,
                         rope_theta=10000.0, max_position_embeddings=4096, hidden_act="silu",
                         tie_word_embeddings=False, initializer_range=0.02, use_cache=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config._attn_implementation = a.attn

    torch.manual_seed(0)
    t0 = time.perf_counter()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:  # parameters are created (and initialised) on the GPU: seconds, not minutes
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    model = model.to(device=device, dtype=torch.bfloat16).eval()
    # HF's init draws normal(0, 0.02) for every linear and the embedding; check it did (never zeros).
    with torch.no_grad():
        init_std = float(model.model.layers[0].mlp.down_proj.weight.float().std())
        if init_std < 1e-3:
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.02)
                else:
                    p.fill_(1.0)  # RMSNorm weights
            init_std = float(model.model.layers[0].mlp.down_proj.weight.float().std())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gc_ = model.generation_config
    gc_.eos_token_id = None
    gc_.pad_token_id = 0
    gc_.do_sample = False
    init_s = time.perf_counter() - t0
    print(f"compare_hf: {gpu}; transformers {transformers.__version__}, torch {torch.__version__}; "
          f"{a.layers} layers, {weight_bytes / 1e9:.2f} GB of bf16 weights, attn {a.attn}; "
          f"weight std {init_std:.4f}; built in {init_s:.1f}s", flush=True)

    result = {
        "gpu": gpu,
        "model": "llama-2-7b shape" if not a.smoke else "smoke (tiny llama)",
        "layers": a.layers,
        "dtype": "bf16",
        "weight_bytes": weight_bytes,
        "attn_implementation": a.attn,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "batch1_method": "prefill, then a timed loop of forward(1 token, DynamicCache) + argmax",
        "throughput_method": "generate(min_new_tokens=max_new_tokens=gen, greedy, no eos)",
        "batch1_decode_tok_s": None,
        "throughput": [],
    }

    def save():
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=1)
                f.write("\n")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    gen_cpu = torch.Generator().manual_seed(1)

    def prompts(batch):
        ids = torch.randint(3, config.vocab_size, (batch, a.prompt), generator=gen_cpu)
        return ids.to(device), torch.ones_like(ids, device=device)

    # --- batch-1 decode: prefill, then a loop of single-token forward() calls -----------------
    from transformers import DynamicCache

    @torch.inference_mode()
    def decode_loop(steps):
        ids, _ = prompts(1)
        cache = DynamicCache(config=config) if _takes_config(DynamicCache) else DynamicCache()
        sync()
        t = time.perf_counter()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        sync()
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
        sync()
        return prefill, time.perf_counter() - t

    decode_loop(8)  # warm-up
    runs = [decode_loop(a.gen) for _ in range(2)]
    prefill_s, decode_s = min(runs, key=lambda r: r[1])
    result["batch1_decode_tok_s"] = a.gen / decode_s
    result["batch1_decode_step_ms"] = 1e3 * decode_s / a.gen
    result["batch1_prefill_ms"] = 1e3 * prefill_s
    print(f"compare_hf: batch 1 decode {a.gen / decode_s:.1f} tok/s "
          f"({1e3 * decode_s / a.gen:.2f} ms/step; prefill {1e3 * prefill_s:.1f} ms)", flush=True)
    save()

    # --- throughput per batch size: generate exactly gen new tokens -----------------------------
    @torch.inference_mode()
    def generate(ids, mask, new):
        sync()
        t = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, eos_token_id=None,
                             pad_token_id=0, use_cache=True)
        sync()
        return out, time.perf_counter() - t

    oom_errors = (getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError,)
    oom_at = None
    last_cost = None  # seconds the previous batch took, all runs included
    for b in sorted(a.batches):
        row = {"batch": b, "prompt": a.prompt, "gen": a.gen}
        elapsed = time.perf_counter() - t_start
        if oom_at is not None:
            row.update(error="oom", note=f"skipped: batch {oom_at} ran out of memory")
        elif last_cost is not None and elapsed + 2.0 * last_cost > a.time_budget:
            row.update(error="skipped", note=f"--time-budget {a.time_budget:.0f}s")
        else:
            t_b = time.perf_counter()
            try:
                ids, mask = prompts(b)
                generate(ids, mask, 2)  # warm-up: prefill and decode shapes of this batch
                _, prefill = generate(ids, mask, 1)
                out, total = generate(ids, mask, a.gen)
                got = out.shape[1] - a.prompt
                row.update(output_tok_s=b * a.gen / total, total_s=total, prefill_s=prefill,
                           decode_step_ms=1e3 * max(total - prefill, 0.0) / (a.gen - 1))
                if got != a.gen:
                    row["warning"] = f"generated {got} tokens, not {a.gen}"
                del out
            except (RuntimeError,) + oom_errors as e:  # cuBLAS/cuDNN OOMs are RuntimeErrors
                if not isinstance(e, oom_errors) and "out of memory" not in str(e).lower() \
                        and "ALLOC_FAILED" not in str(e):
                    raise
                row.update(error="oom")
                oom_at = b
                e = None
                ids = mask = None
            last_cost = time.perf_counter() - t_b
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        result["throughput"].append(row)
        if "output_tok_s" in row:
            print(f"compare_hf: batch {b:4d}: {row['output_tok_s']:9.1f} out tok/s, total "
                  f"{row['total_s']:.2f}s, prefill {row['prefill_s']:.3f}s, "
                  f"{row['decode_step_ms']:.2f} ms/step", flush=True)
        else:
            print(f"compare_hf: batch {b:4d}: {row['error']} {row.get('note', '')}", flush=True)
        save()
    if device.type == "cuda":
        result["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
    result["wall_s"] = time.perf_counter() - t_start
    save()
    print(f"compare_hf: done in {result['wall_s']:.0f}s" + (f"; wrote {a.json}" if a.json else ""))
    return 0


def _takes_config(cls):
    import inspect
    try:
        return "config" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())

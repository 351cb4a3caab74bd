#!/usr/bin/env bash
# Expert parallelism on one node: the same mixture of experts (8 experts, top 2, bf16) serving a
# batch of 32 sequences as one rank with 2 threads, as tp 2 with every expert sliced over both
# ranks (ep 1), and as tp 2 ep 2 (4 whole experts per rank, tokens exchanged by all-to-all), on
# the same 2 cores; prints each and the speed ratios against ep 1.
#   bench/moe_ep.sh [extra moe_ep flags, e.g. --sequences 64 --hidden 2048]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin/moe_ep}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --bind-to none)
one=$("${MPIRUN[@]}" -np 1 "$BIN" --tp 1 --threads 2 "$@" | tail -3)
tp=$("${MPIRUN[@]}" -np 2 "$BIN" --tp 2 --ep 1 --threads 1 "$@" | tail -3)
ep=$("${MPIRUN[@]}" -np 2 "$BIN" --tp 2 --ep 2 --threads 1 "$@" | tail -3)
printf '%s\n' "$one" "$tp" "$ep" | grep -v '^{'
python3 - "$(tail -1 <<<"$one")" "$(tail -1 <<<"$tp")" "$(tail -1 <<<"$ep")" <<'PY'
import json, sys
one, tp, ep = (json.loads(a) for a in sys.argv[1:])
print(f"ep=2 vs ep=1 (both tp=2, 1 thread/rank): prefill {ep['prefill_tok_s'] / tp['prefill_tok_s']:.2f}x, "
      f"decode {ep['decode_tok_s'] / tp['decode_tok_s']:.2f}x")
print(f"ep=2 vs one rank (2 threads): prefill {ep['prefill_tok_s'] / one['prefill_tok_s']:.2f}x, "
      f"decode {ep['decode_tok_s'] / one['decode_tok_s']:.2f}x")
PY

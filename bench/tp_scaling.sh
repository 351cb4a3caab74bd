#!/usr/bin/env bash
# The cost of tensor parallelism on one node: the same shape as tp=1 with 2 threads and as tp=2
# with 1 thread per rank, on the same 2 cores; prints both and the ratio tp2/tp1.
#   bench/tp_scaling.sh [extra tp_scaling flags, e.g. --hidden 4096 --layers 8 --dtype bf16]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin/tp_scaling}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --bind-to none)
one=$("${MPIRUN[@]}" -np 1 "$BIN" --tp 1 --threads 2 "$@" | tail -1)
two=$("${MPIRUN[@]}" -np 2 "$BIN" --tp 2 --threads 1 "$@" | tail -1)
echo "$one"
echo "$two"
python3 - "$one" "$two" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"tp=1 (2 threads): prefill {a['prefill_tok_s']:.1f} tok/s, decode {a['decode_ms_per_token']:.1f} ms/token")
print(f"tp=2 (1 thread/rank): prefill {b['prefill_tok_s']:.1f} tok/s, decode {b['decode_ms_per_token']:.1f} ms/token")
print(f"ratio tp2/tp1 (speed): prefill {b['prefill_tok_s'] / a['prefill_tok_s']:.2f}x, "
      f"decode {a['decode_ms_per_token'] / b['decode_ms_per_token']:.2f}x")
PY

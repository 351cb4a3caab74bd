#!/usr/bin/env bash
# Pipeline stages across two simulated nodes vs on one node: bench/tp_scaling --tp 1 --pp 2 (1
# thread per rank) placed three ways, the placements alternating for ROUNDS rounds (default 3):
#   one-node-shm  plain local mpirun (shared memory between the stages);
#   one-node-tcp  both ranks in node1's namespace, TCP over its loopback (btl tcp,self);
#   two-nodes     stage 0 on node1, stage 1 on node2: TCP across the veths and the bridge.
# then bench/mpi_hop (a ping-pong without a model) in the same three placements, for the one-way
# time of a hand-over of each of MPI_HOP_SIZES bytes (default 8,8192,262144: a token id, one
# token's f32 hidden state at hidden 2048, a 32-token prefill's). ROUNDS=0 runs mpi_hop alone.
# Brings the cluster up (scripts/netns-cluster.sh; its NETNS_* variables apply) and always down.
# Needs root. Prints each run's JSON line, then per placement the best prefill tok/s and decode
# ms/token over the rounds and the difference to one-node-shm, then mpi_hop's tables.
#   bench/netns_pp.sh [tp_scaling flags, e.g. --hidden 2048 --layers 8 --intermediate 5632]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin/tp_scaling}
HOP=${HOP:-build/bin/mpi_hop}
MPI_HOP_SIZES=${MPI_HOP_SIZES:-8,8192,262144}
ROUNDS=${ROUNDS:-3}
export NETNS_PREFIX=${NETNS_PREFIX:-node} NETNS_BRIDGE=${NETNS_BRIDGE:-shlm-br0}
export NETNS_SUBNET=${NETNS_SUBNET:-198.18.0} NODES=2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for b in "$BIN" "$HOP"; do
  [ -x "$b" ] || { echo "netns_pp: $b not found (cmake --build build --target tp_scaling mpi_hop)" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shardlm-netns-pp.XXXXXX")
trap 'bash scripts/netns-cluster.sh down; rm -rf "$WORK"' EXIT
bash scripts/netns-cluster.sh up >/dev/null
printf '%s slots=1\n' "$NETNS_SUBNET.1" "$NETNS_SUBNET.2" >"$WORK/two-nodes"
echo "$NETNS_SUBNET.1 slots=2" >"$WORK/one-node-tcp"
# shellcheck disable=SC2054  # tcp,self is one MCA value
# rtc_hwloc_vmhole none: see scripts/netns-mpi-test.sh (an orted crash in hwloc's shmem topology).
NET=(--mca rtc_hwloc_vmhole none --mca plm_rsh_agent "$PWD/launch/netns-rsh.sh" --mca btl tcp,self
  --mca btl_tcp_if_include "$NETNS_SUBNET.0/24" --mca oob_tcp_if_include "$NETNS_SUBNET.0/24")
RUN=("$BIN" --tp 1 --pp 2 --threads 1 "$@")
placed() {  # placement: the mpirun flags that place 2 ranks so
  case $1 in
    one-node-shm) echo --oversubscribe ;;
    *) echo --hostfile "$WORK/$1" "${NET[@]}" ;;
  esac
}
for _ in $(seq 1 "$ROUNDS"); do
  for where in one-node-shm one-node-tcp two-nodes; do
    read -r -a args <<<"$(placed "$where")"
    line=$(mpirun -np 2 --bind-to none "${args[@]}" "${RUN[@]}" 2>/dev/null | tail -n 1)
    echo "$where $line" | tee -a "$WORK/runs"
  done
done
for where in one-node-shm one-node-tcp two-nodes; do
  read -r -a args <<<"$(placed "$where")"
  echo "mpi_hop, $where:"
  mpirun -np 2 --bind-to none "${args[@]}" "$HOP" --sizes "$MPI_HOP_SIZES" --iters 500 | sed '$d'
done
[ "$ROUNDS" -gt 0 ] || exit 0
python3 - "$WORK/runs" <<'PY'
import json, sys
best = {}
for line in open(sys.argv[1]):
    where, js = line.split(" ", 1)
    r = json.loads(js)
    b = best.setdefault(where, [0.0, 1e30])
    b[0] = max(b[0], r["prefill_tok_s"])
    b[1] = min(b[1], r["decode_ms_per_token"])
base = best["one-node-shm"]
for where, (pre, dec) in best.items():
    print(f"{where:13s} prefill {pre:8.1f} tok/s  decode {dec:7.2f} ms/token  "
          f"(decode {dec - base[1]:+.2f} ms/token vs one-node-shm)")
PY

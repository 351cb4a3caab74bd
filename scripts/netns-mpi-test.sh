#!/usr/bin/env bash
# mpirun across two simulated nodes (network namespaces, scripts/netns-cluster.sh), without Slurm:
# Open MPI starts its daemons through launch/netns-rsh.sh, and the ranks talk over TCP across the
# bridge. Checks, on a tiny Llama:
#   - the placement: rank 0 on node1 (address .1), rank 1 on node2 (.2);
#   - offline: `shardlm generate` with --pp 2 (stage 0 on node1, stage 1 on node2) and --tp 2 (one
#     rank per node) gives the single-process ids, for a short and a long prompt;
#   - the service: shardlm-coordinator in the root namespace on the head address (API and worker
#     attach, a worker secret), the worker job `mpirun ... shardlm-worker` across the two nodes at
#     pp=2 and at tp=2, and a greedy `shardlm generate --server` that gives the same ids;
#   - at the end (also after a failure): everything it started is stopped, the cluster is down, and
#     no namespace, link or process of it is left.
# Exit 77 (skip) when not root or network namespaces cannot be made here. Environment: BUILD_DIR
# (default build), KEEP_WORK=1 keeps the work folder (logs), and netns-cluster.sh's NETNS_PREFIX,
# NETNS_BRIDGE, NETNS_SUBNET.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${BUILD_DIR:-$ROOT/build}" && pwd)/bin
CLUSTER=$ROOT/scripts/netns-cluster.sh
AGENT=$ROOT/launch/netns-rsh.sh
export NETNS_PREFIX=${NETNS_PREFIX:-node} NETNS_BRIDGE=${NETNS_BRIDGE:-shlm-br0}
export NETNS_SUBNET=${NETNS_SUBNET:-198.18.0}
export NODES=2
HEAD=$NETNS_SUBNET.254

log() { echo "netns-mpi-test: $*" >&2; }
skip() { log "skip: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"
command -v ip >/dev/null || skip "needs iproute2"
command -v mpirun >/dev/null || skip "needs Open MPI's mpirun"
unshare --net true 2>/dev/null || skip "network namespaces are not permitted here (unshare --net)"
for b in shardlm shardlm-coordinator shardlm-worker; do
  [ -x "$BIN/$b" ] || { log "$BIN/$b not found (build first, or BUILD_DIR)"; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shardlm-netns-mpi.XXXXXX")
COORD_PID="" JOB_PID=""
stop_group() {  # pid signal: the process group led by pid; KILL after 10 s
  local pid=$1
  [ -n "$pid" ] || return 0
  kill "-$2" -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? leftover="" ns
  trap - EXIT INT TERM
  stop_group "$JOB_PID" TERM
  stop_group "$COORD_PID" TERM
  bash "$CLUSTER" down || true
  # Nothing of the cluster may be left: namespaces, the bridge, the veths, processes.
  for ns in "${NETNS_PREFIX}1" "${NETNS_PREFIX}2"; do
    if ip netns list | grep -qw "^$ns"; then leftover+=" namespace $ns"; fi
    if ip link show "veth-$ns" >/dev/null 2>&1; then leftover+=" link veth-$ns"; fi
  done
  if ip link show "$NETNS_BRIDGE" >/dev/null 2>&1; then leftover+=" bridge $NETNS_BRIDGE"; fi
  # Every command this test started names its work folder (model, secret) or the agent.
  local procs
  procs=$(pgrep -f -- "$WORK|$AGENT" || true)
  if [ -n "$procs" ]; then leftover+=" processes ${procs//$'\n'/ }"; fi
  if [ -n "$leftover" ]; then
    log "FAILED: left behind:$leftover"
    rc=1
  fi
  if [ "$rc" = 0 ] && [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; else log "logs in $WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "$CLUSTER" up >"$WORK/cluster.log"
printf '%s slots=1\n' "$NETNS_SUBNET.1" "$NETNS_SUBNET.2" >"$WORK/hosts"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The daemons start through the agent; ranks talk TCP on the cluster's subnet only (no shared
# memory between nodes; the root namespace's other interfaces are not theirs), as do the daemons.
# rtc_hwloc_vmhole none: a daemon does not map the hardware topology into shared memory at a
# guessed hole of its address space; in CI an orted crashed doing that once (a segfault in
# hwloc_shmem_topology_write while other MPI jobs ran), and the daemons lose nothing by it.
# shellcheck disable=SC2054  # tcp,self is one MCA value
MPIRUN=(mpirun -np 2 --hostfile "$WORK/hosts" --bind-to none
  --mca rtc_hwloc_vmhole none
  --mca plm_rsh_agent "$AGENT"
  --mca btl tcp,self
  --mca btl_tcp_if_include "$NETNS_SUBNET.0/24"
  --mca oob_tcp_if_include "$NETNS_SUBNET.0/24")

# Placement: rank r on node r+1, seen from inside the rank.
# shellcheck disable=SC2016  # expanded by the rank's shell
placement=$(timeout 30 "${MPIRUN[@]}" sh -c \
  'echo "$OMPI_COMM_WORLD_RANK $OMPI_COMM_WORLD_LOCAL_SIZE $(ip -4 -o addr show eth0 | awk "{print \$4}")"' |
  sort)
want=$(printf '0 1 %s/24\n1 1 %s/24' "$NETNS_SUBNET.1" "$NETNS_SUBNET.2")
[ "$placement" = "$want" ] || { log "placement: want '$want', got '$placement'"; exit 1; }
log "placement ok: rank 0 on $NETNS_SUBNET.1, rank 1 on $NETNS_SUBNET.2, one rank per node"

MODEL=$WORK/llama-6l
"$BIN/shardlm" make-tiny-model --out "$MODEL" --vocab 384 --arch llama --layers 6 --hidden 128 \
  --heads 4 --kv-heads 2 --intermediate 384 --seed 11 >/dev/null
# A short prompt (decode-dominated) and a 40-token one (a longer prefill hand-over).
PROMPTS=("5,17,42,99,7" "$(seq -s, 3 9 354)")
MAX_NEW=12
ids() { tail -n 1 | tr -d ' \r'; }  # generate --prompt-ids prints the ids last
declare -A WANT
for p in "${PROMPTS[@]}"; do
  WANT[$p]=$("$BIN/shardlm" generate --model "$MODEL" --prompt-ids "$p" --max-new-tokens "$MAX_NEW" \
    --ignore-eos --threads 1 2>/dev/null | ids)
  [ -n "${WANT[$p]}" ] || { log "single-process generate printed no ids"; exit 1; }
done

check() {  # what prompt got
  if [ "$3" != "${WANT[$2]}" ]; then
    log "$1, prompt $2: want ${WANT[$2]}, got '$3'"
    exit 1
  fi
}

for layout in "--pp 2" "--tp 2"; do
  read -r -a lay <<<"$layout"
  for p in "${PROMPTS[@]}"; do
    # Rank 0 prints; mpirun's stdout carries it.
    got=$(timeout 60 "${MPIRUN[@]}" "$BIN/shardlm" generate --model "$MODEL" "${lay[@]}" \
      --prompt-ids "$p" --max-new-tokens "$MAX_NEW" --ignore-eos --threads 1 \
      2>>"$WORK/offline.log" | ids)
    check "offline $layout across nodes" "$p" "$got"
  done
  log "offline $layout across two nodes: the single-process ids"
done

SECRET=$WORK/worker.secret
(umask 077 && head -c 32 /dev/urandom | base64 >"$SECRET")
for layout in "--pp 2" "--tp 2"; do
  read -r -a lay <<<"$layout"
  tag=-${layout//[- ]/}  # -pp2, -tp2
  : >"$WORK/coordinator$tag.out"  # before the background start, which creates it later
  # The head node: clients and workers reach it by the bridge's address; port 0 picks free ports.
  setsid "$BIN/shardlm-coordinator" --listen "$HEAD:0" --worker-listen "$HEAD:0" \
    --worker-secret-file "$SECRET" --model "$MODEL" "${lay[@]}" --threads 1 \
    >"$WORK/coordinator$tag.out" 2>"$WORK/coordinator$tag.err" &
  COORD_PID=$!
  api="" attach=""
  for _ in $(seq 1 100); do
    api=$(sed -n '1s/^listening on //p' "$WORK/coordinator$tag.out")
    attach=$(sed -n '2s/^worker attach on //p' "$WORK/coordinator$tag.out")
    [ -n "$api" ] && [ -n "$attach" ] && break
    kill -0 "$COORD_PID" 2>/dev/null || { log "coordinator exited: $(tail -n 5 "$WORK/coordinator$tag.err")"; exit 1; }
    sleep 0.1
  done
  [ -n "$attach" ] || { log "coordinator printed no addresses in 10 s"; exit 1; }
  case $api:$attach in
    "$HEAD":*:"$HEAD":*) ;;
    *) log "coordinator bound $api / $attach, not on $HEAD"; exit 1 ;;
  esac
  setsid "${MPIRUN[@]}" "$BIN/shardlm-worker" --coordinator "$attach" --worker-secret-file "$SECRET" \
    >"$WORK/workers$tag.log" 2>&1 &
  JOB_PID=$!
  "$BIN/shardlm" info --server "$api" --wait-ready 60 >"$WORK/info$tag.json" ||
    { log "service $layout not ready: $(tail -n 5 "$WORK/workers$tag.log")"; exit 1; }
  for p in "${PROMPTS[@]}"; do
    got=$(timeout 60 "$BIN/shardlm" generate --server "$api" --prompt-ids "$p" \
      --max-new-tokens "$MAX_NEW" --ignore-eos 2>>"$WORK/client$tag.log" | ids)
    check "service $layout (workers across nodes)" "$p" "$got"
  done
  log "service $layout, coordinator on $HEAD, workers across two nodes: the single-process ids"
  # SIGTERM: the coordinator drains and tells the workers to shut down; the job must then end.
  kill -TERM "$COORD_PID"
  for _ in $(seq 1 100); do kill -0 "$JOB_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$JOB_PID" 2>/dev/null; then log "the worker job did not end after the coordinator"; exit 1; fi
  wait "$JOB_PID" || { log "the worker job exited $?: $(tail -n 5 "$WORK/workers$tag.log")"; exit 1; }
  JOB_PID=""
  stop_group "$COORD_PID" TERM
  COORD_PID=""
done
log "passed"

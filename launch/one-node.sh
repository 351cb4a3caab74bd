#!/usr/bin/env bash
# Serves a model on this node: shardlm-coordinator plus one mpirun job of tp x pp shardlm-worker
# ranks, logs to files, until Ctrl-C / SIGTERM or until the coordinator exits. A worker job that
# exits once serving (a rank died, it was aborted as hung) is relaunched, and the coordinator's
# held requests resume on it.
#
#   launch/one-node.sh --model models/SmolLM2-135M-Instruct.Q4_1.gguf --tp 2 [--pp 1]
#       [--listen 127.0.0.1:50051] [--http-listen 127.0.0.1:8000] [--worker-listen 127.0.0.1:0]
#       [--worker-secret-file FILE]
#       [--logs logs/] [--bin build/bin] [-- COORDINATOR FLAGS...]
#
# Everything after `--` goes to shardlm-coordinator (--max-batch-tokens N, --kv-cache-memory 1GiB,
# --max-queue N, --max-model-len N, ...). MPIRUN_ARGS adds mpirun flags (e.g. "-x CUDA_VISIBLE_DEVICES").
# --http-listen is the OpenAI-compatible HTTP API, /health and /metrics ("" for none).
# Prints the address clients use once every rank is attached and loaded (READY_TIMEOUT, 300 s).
# Logs: coordinator.out / coordinator.err / workers.log (every job, appended) in the --logs folder.
# The workers attach on --worker-listen (loopback, a free port) with the secret of
# --worker-secret-file; without one, a fresh random secret is made for this run (mode 600,
# removed on exit). WORKER_ARGS adds shardlm-worker flags (e.g. "--backend cuda"). CLIENT_ARGS
# adds flags to this script's own readiness check (`shardlm info`) when the coordinator serves
# with TLS or a token (e.g. "--tls-ca ca.pem --auth-token-file token").
# SIGTERM drains: the coordinator gets SIGTERM, refuses new requests and lets running ones finish
# (its --drain-timeout, 30 s by default; DRAIN_WAIT, 45 s, is how long this script waits for it).
# Ctrl-C (SIGINT) stops at once: the coordinator gets SIGINT and ends its streams now.
set -euo pipefail

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

MODEL="" TP=1 PP=1 LISTEN=127.0.0.1:50051 HTTP_LISTEN=127.0.0.1:8000 WORKER_LISTEN=127.0.0.1:0 SECRET_FILE=""
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOGS=$ROOT/logs/one-node-$(date +%Y%m%d-%H%M%S)
BIN=$ROOT/build/bin
COORD_ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --model) MODEL=$2; shift 2 ;;
    --tp) TP=$2; shift 2 ;;
    --pp) PP=$2; shift 2 ;;
    --listen) LISTEN=$2; shift 2 ;;
    --http-listen) HTTP_LISTEN=$2; shift 2 ;;
    --worker-listen) WORKER_LISTEN=$2; shift 2 ;;
    --worker-secret-file) SECRET_FILE=$2; shift 2 ;;
    --logs) LOGS=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; COORD_ARGS=("$@"); break ;;
    *) echo "one-node: unknown argument '$1'" >&2; usage 2 ;;
  esac
done
[ -n "$MODEL" ] || { echo "one-node: --model is required" >&2; usage 2; }
READY_TIMEOUT=${READY_TIMEOUT:-300}
DRAIN_WAIT=${DRAIN_WAIT:-45}
STOP_SIGNAL=TERM  # what the coordinator gets at the end: INT after Ctrl-C
NP=$((TP * PP))
for b in shardlm shardlm-coordinator shardlm-worker; do
  [ -x "$BIN/$b" ] || { echo "one-node: $BIN/$b not found (build first, or --bin DIR)" >&2; exit 1; }
done
mkdir -p "$LOGS"
log() { echo "one-node: $*" >&2; }

if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
MPI_FLAGS=()
if [ "$NP" -gt "$(nproc)" ]; then MPI_FLAGS+=(--oversubscribe); fi
# Ranks size their thread pools from the node's cores; don't let mpirun pin them to one core each.
MPI_FLAGS+=(--bind-to none)
read -r -a EXTRA_MPI <<<"${MPIRUN_ARGS:-}"
read -r -a WORKER_FLAGS <<<"${WORKER_ARGS:-}"

COORD_PID="" SUP_PID=""
stop_group() {  # pid name [signal [seconds]]: signal (TERM) its process group, KILL after 15 s
  local pid=$1 sig=${3:-TERM} wait_s=${4:-15}
  [ -n "$pid" ] || return 0
  kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((wait_s * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$2 did not stop in $wait_s s: killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# supervise_workers COORD_PID DIAL: keeps one worker job attached to the coordinator. A job that
# exits is relaunched after a back-off (1 s, doubling up to 30 s while jobs keep ending within a
# minute of their start). Ends, stopping its job, on SIGTERM/SIGINT, when the coordinator is gone
# or once $LOGS/supervise.stop exists. Appends each job's exit code to $LOGS/worker-exits and
# keeps the running job's pid (its process group) in $LOGS/mpirun.pid. Run it in the background.
supervise_workers() {
  local coord=$1 dial=$2 job="" pause="" backoff=1 started rc
  trap 'stop_group "$job" mpirun; [ -z "$pause" ] || kill "$pause" 2>/dev/null; exit 0' TERM INT
  while kill -0 "$coord" 2>/dev/null && [ ! -e "$LOGS/supervise.stop" ]; do
    started=$SECONDS
    setsid mpirun -np "$NP" "${MPI_FLAGS[@]}" "${EXTRA_MPI[@]}" "$BIN/shardlm-worker" \
      --coordinator "$dial" --worker-secret-file "$SECRET_FILE" "${WORKER_FLAGS[@]}" \
      >>"$LOGS/workers.log" 2>&1 &
    job=$!
    echo "$job" >"$LOGS/mpirun.pid"
    log "mpirun pid $job: $NP worker ranks (tp $TP x pp $PP)"
    rc=0
    wait "$job" || rc=$?
    job=""
    echo "$rc" >>"$LOGS/worker-exits"
    if ! kill -0 "$coord" 2>/dev/null || [ -e "$LOGS/supervise.stop" ]; then break; fi
    [ $((SECONDS - started)) -lt 60 ] || backoff=1
    log "the worker job exited ($rc): relaunching it in $backoff s"
    sleep "$backoff" &
    pause=$!
    wait "$pause" || true
    pause=""
    backoff=$((backoff * 2 > 30 ? 30 : backoff * 2))
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  log "stopping (logs in $LOGS)"
  touch "$LOGS/supervise.stop"          # no relaunch while the job is told to shut down
  # TERM: it drains first; either way it then sends Shutdown to the workers.
  stop_group "$COORD_PID" coordinator "$STOP_SIGNAL" "$DRAIN_WAIT"
  if [ -n "$SUP_PID" ]; then
    for _ in $(seq 1 50); do kill -0 "$SUP_PID" 2>/dev/null || break; sleep 0.2; done
  fi
  stop_group "$SUP_PID" "worker supervisor"   # TERM: it stops its job
  if [ -s "$LOGS/mpirun.pid" ]; then    # in case the supervisor had to be killed
    kill -KILL -- "-$(cat "$LOGS/mpirun.pid")" 2>/dev/null || true
  fi
  rm -f "$LOGS/supervise.stop" "$LOGS/mpirun.pid"
  if [ -n "${SECRET_DIR:-}" ]; then rm -rf "$SECRET_DIR"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'STOP_SIGNAL=INT; exit 130' INT
trap 'exit 143' TERM

# The worker attach secret: the one given, else a fresh random one for this run, in a private
# temp folder that cleanup removes.
SECRET_DIR=""
if [ -z "$SECRET_FILE" ]; then
  SECRET_DIR=$(mktemp -d "${TMPDIR:-/tmp}/shardlm-secret.XXXXXX")
  SECRET_FILE=$SECRET_DIR/worker.secret
  (umask 077 && head -c 32 /dev/urandom | base64 >"$SECRET_FILE")
fi

HTTP_ARGS=()
if [ -n "$HTTP_LISTEN" ]; then HTTP_ARGS=(--http-listen "$HTTP_LISTEN"); fi
setsid "$BIN/shardlm-coordinator" --listen "$LISTEN" --worker-listen "$WORKER_LISTEN" \
  --worker-secret-file "$SECRET_FILE" --model "$MODEL" --tp "$TP" --pp "$PP" \
  "${HTTP_ARGS[@]}" "${COORD_ARGS[@]}" >"$LOGS/coordinator.out" 2>"$LOGS/coordinator.err" &
COORD_PID=$!
BOUND="" WORKER_BOUND=""
for _ in $(seq 1 600); do
  BOUND=$(sed -n '1s/^listening on //p' "$LOGS/coordinator.out" 2>/dev/null || true)
  WORKER_BOUND=$(sed -n '2s/^worker attach on //p' "$LOGS/coordinator.out" 2>/dev/null || true)
  [ -n "$BOUND" ] && [ -n "$WORKER_BOUND" ] && break
  kill -0 "$COORD_PID" 2>/dev/null || { log "coordinator exited:"; tail -n 20 "$LOGS/coordinator.err" >&2; exit 1; }
  sleep 0.1
done
[ -n "$WORKER_BOUND" ] || { log "coordinator printed no 'listening on' / 'worker attach on' lines in 60 s"; exit 1; }
# Clients and workers on this node reach a wildcard listener through loopback.
dial() {
  case ${1%:*} in 0.0.0.0|"[::]"|"::"|"") echo "127.0.0.1:${1##*:}" ;; *) echo "$1" ;; esac
}
DIAL=$(dial "$BOUND")
WORKER_DIAL=$(dial "$WORKER_BOUND")
log "coordinator pid $COORD_PID listening on $BOUND; workers attach on $WORKER_BOUND"

rm -f "$LOGS/supervise.stop" "$LOGS/worker-exits"
supervise_workers "$COORD_PID" "$WORKER_DIAL" &
SUP_PID=$!

deadline=$((SECONDS + READY_TIMEOUT))
read -r -a CLIENT_FLAGS <<<"${CLIENT_ARGS:-}"
until "$BIN/shardlm" info --server "$DIAL" "${CLIENT_FLAGS[@]}" --wait-ready 1 >"$LOGS/info.json" 2>"$LOGS/info.err"; do
  kill -0 "$COORD_PID" 2>/dev/null || { log "coordinator exited while starting"; exit 1; }
  # A job that fails before serving is a set-up error (model, flags): no relaunching then.
  [ ! -s "$LOGS/worker-exits" ] || { log "workers exited while starting:"; tail -n 20 "$LOGS/workers.log" >&2; exit 1; }
  [ "$SECONDS" -lt "$deadline" ] || { log "not ready after $READY_TIMEOUT s: $(cat "$LOGS/info.err")"; exit 1; }
  sleep 1
done
log "ready: $(cat "$LOGS/info.json")"
echo "serving on $DIAL"
HTTP_BOUND=$(sed -n '3s/^http on //p' "$LOGS/coordinator.out" 2>/dev/null || true)
SCHEME=http
for a in "${COORD_ARGS[@]}"; do case $a in --tls-cert|--tls-cert=*) SCHEME=https ;; esac; done
if [ -n "$HTTP_BOUND" ]; then echo "OpenAI-compatible HTTP on $SCHEME://$(dial "$HTTP_BOUND")/v1"; fi

# Until the coordinator exits (or a signal); worker jobs that exit are relaunched meanwhile.
set +e
wait -n "$COORD_PID" "$SUP_PID"
rc=$?
set -e
kill -0 "$COORD_PID" 2>/dev/null && log "the worker supervisor exited ($rc)" || log "the coordinator exited ($rc)"
exit $((rc == 0 ? 1 : rc))

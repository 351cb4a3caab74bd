#!/usr/bin/env bash
# One chat turn through the whole service on this machine: builds what is missing, fetches the
# default model, starts shardlm-coordinator (127.0.0.1, a free port) and an mpirun job of 2
# shardlm-worker ranks (tp=2), waits until every rank is attached and loaded, streams the answer
# to "What is the capital of France?" with `shardlm generate --server`, and shuts everything down
# (also on errors and Ctrl-C: no process is left behind).
#
#   bash scripts/install-deps.sh && bash scripts/demo.sh
#
# Environment: BUILD_DIR (build), MODEL (the default SmolLM2-135M-Instruct Q4_1 GGUF; a path, or
# `gemma3` for Gemma 3 270M, a base model: it continues PROMPT instead of answering a chat turn),
# COMPLETION (1: continue PROMPT with any model), TP (2), QUESTION, PROMPT ("The capital of
# France is"), READY_TIMEOUT (120 s),
# MAX_NEW_TOKENS (64).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
BIN=$BUILD_DIR/bin
TP=${TP:-2}
QUESTION=${QUESTION:-What is the capital of France?}
PROMPT=${PROMPT:-The capital of France is}
COMPLETION=${COMPLETION:-0}  # 1: continue PROMPT (base models)
READY_TIMEOUT=${READY_TIMEOUT:-120}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-64}

log() { echo "demo: $*" >&2; }

# 1. Build (only when a binary is missing).
if [ ! -x "$BIN/shardlm" ] || [ ! -x "$BIN/shardlm-coordinator" ] || [ ! -x "$BIN/shardlm-worker" ]; then
  log "building into $BUILD_DIR"
  cmake -S . -B "$BUILD_DIR" -G Ninja
  cmake --build "$BUILD_DIR" --target shardlm shardlm-coordinator shardlm-worker ||
    cmake --build "$BUILD_DIR"
fi

# 2. The model.
if [ -z "${MODEL:-}" ]; then
  MODEL=$(bash scripts/get-model.sh | tail -n 1)
elif [ "$MODEL" = gemma3 ]; then
  MODEL=$(bash scripts/get-model.sh gemma3 | tail -n 1)
  COMPLETION=1  # a base model: not asked to chat
fi
log "model $MODEL, tp=$TP"

# Open MPI as root (containers) and with more ranks than cores.
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
MPI_FLAGS=(--oversubscribe --bind-to none)

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/shardlm-demo.XXXXXX")
COORD_PID=""
MPI_PID=""
CLIENT_PID=""

# Each service runs in its own session (setsid), so that a kill of its process group reaches
# everything it started (mpirun's local ranks included).
stop_group() {  # pid name
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$2 did not stop in 10 s: killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$CLIENT_PID" ]; then kill -TERM "$CLIENT_PID" 2>/dev/null || true; fi
  # The coordinator first: it tells the workers to shut down; then whatever is left of mpirun.
  stop_group "$COORD_PID" coordinator
  if [ -n "$MPI_PID" ]; then
    for _ in $(seq 1 25); do
      kill -0 "$MPI_PID" 2>/dev/null || break
      sleep 0.2
    done
  fi
  stop_group "$MPI_PID" mpirun
  rm -f "$LOGDIR/worker.secret"  # the logs may be kept; the secret never is
  if [ "$rc" -ne 0 ]; then
    log "failed (exit $rc); logs:"
    for f in "$LOGDIR"/*; do
      [ -s "$f" ] || continue
      echo "----- $f (last 30 lines)" >&2
      tail -n 30 "$f" >&2
    done
    log "logs kept in $LOGDIR"
  else
    rm -rf "$LOGDIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 3. The coordinator, on free ports: its first stdout line is "listening on HOST:PORT" (clients),
# its second "worker attach on HOST:PORT" (the workers, who must show the shared secret), its
# third "http on HOST:PORT" (the OpenAI-compatible HTTP API).
SECRET=$LOGDIR/worker.secret
(umask 077 && head -c 32 /dev/urandom | base64 >"$SECRET")
setsid "$BIN/shardlm-coordinator" --listen 127.0.0.1:0 --worker-listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 --worker-secret-file "$SECRET" --model "$MODEL" --tp "$TP" --pp 1 \
  >"$LOGDIR/coordinator.out" 2>"$LOGDIR/coordinator.err" &
COORD_PID=$!
ADDR=""
WORKER_ADDR=""
for _ in $(seq 1 300); do
  ADDR=$(sed -n '1s/^listening on //p' "$LOGDIR/coordinator.out" 2>/dev/null || true)
  WORKER_ADDR=$(sed -n '2s/^worker attach on //p' "$LOGDIR/coordinator.out" 2>/dev/null || true)
  [ -n "$ADDR" ] && [ -n "$WORKER_ADDR" ] && break
  if ! kill -0 "$COORD_PID" 2>/dev/null; then
    log "the coordinator exited before listening"
    exit 1
  fi
  sleep 0.1
done
if [ -z "$ADDR" ] || [ -z "$WORKER_ADDR" ]; then
  log "the coordinator printed no 'listening on' / 'worker attach on' lines in 30 s"
  exit 1
fi
HTTP_ADDR=$(sed -n '3s/^http on //p' "$LOGDIR/coordinator.out" 2>/dev/null || true)
log "coordinator (pid $COORD_PID) listening on $ADDR (gRPC), http://$HTTP_ADDR/v1 (OpenAI-compatible HTTP)"

# 4. The workers: one mpirun job of tp x pp ranks; rank 0 dials the coordinator.
setsid mpirun -np "$TP" "${MPI_FLAGS[@]}" "$BIN/shardlm-worker" --coordinator "$WORKER_ADDR" \
  --worker-secret-file "$SECRET" \
  >"$LOGDIR/workers.log" 2>&1 &
MPI_PID=$!
log "mpirun (pid $MPI_PID): $TP worker ranks"

# 5. Wait until every rank is attached and loaded (ModelInfo.workers_attached == expected).
deadline=$((SECONDS + READY_TIMEOUT))
until "$BIN/shardlm" info --server "$ADDR" --wait-ready 1 >"$LOGDIR/info.json" 2>"$LOGDIR/info.err"; do
  for pid in "$COORD_PID" "$MPI_PID"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$([ "$pid" = "$COORD_PID" ] && echo coordinator || echo mpirun) exited while starting"
      exit 1
    fi
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "not ready after $READY_TIMEOUT s: $(cat "$LOGDIR/info.err")"
    exit 1
  fi
  sleep 1
done
log "ready: $(cat "$LOGDIR/info.json")"

# 6. One chat turn (a base model: a continuation of PROMPT), streamed (greedy, so the answer is
# the same every run).
if [ "$COMPLETION" = 1 ]; then
  echo "> $PROMPT"
  INPUT=(--prompt "$PROMPT")
else
  echo "> $QUESTION"
  INPUT=(--chat "$QUESTION")
fi
# (In the background + wait, so that Ctrl-C / TERM run the cleanup at once.)
"$BIN/shardlm" generate --server "$ADDR" "${INPUT[@]}" --max-new-tokens "$MAX_NEW_TOKENS" \
  --temperature 0 &
CLIENT_PID=$!
wait "$CLIENT_PID"
CLIENT_PID=""

# 7. The same server through its OpenAI-compatible HTTP API (what curl, the openai package or any
# OpenAI client sends), when curl is installed.
if command -v curl >/dev/null 2>&1; then
  if [ "$COMPLETION" = 1 ]; then
    ENDPOINT=completions
    BODY=$(python3 -c 'import json, sys; print(json.dumps({"prompt": sys.argv[1], "max_tokens": int(sys.argv[2]), "temperature": 0}))' "$PROMPT" "$MAX_NEW_TOKENS")
  else
    ENDPOINT=chat/completions
    BODY=$(python3 -c 'import json, sys; print(json.dumps({"messages": [{"role": "user", "content": sys.argv[1]}], "max_tokens": int(sys.argv[2]), "temperature": 0}))' "$QUESTION" "$MAX_NEW_TOKENS")
  fi
  log "POST http://$HTTP_ADDR/v1/$ENDPOINT"
  curl -sS "http://$HTTP_ADDR/v1/$ENDPOINT" -H 'Content-Type: application/json' -d "$BODY" &
  CLIENT_PID=$!
  wait "$CLIENT_PID"
  CLIENT_PID=""
  echo
fi
log "done; shutting down"

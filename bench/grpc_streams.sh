#!/usr/bin/env bash
# 1,000 concurrent gRPC Generate streams on loopback: makes a tiny model, starts
# shardlm-coordinator (COORDINATOR, default build/bin's) and `mpirun -np 1 shardlm-worker`, runs
# build/bin/grpc_streams against them (16 new tokens a stream, token-id prompts) sampling the
# coordinator's /proc status, and always stops and removes everything it started.
#   [STREAMS=200] bench/grpc_streams.sh [extra grpc_streams flags, e.g. --channels 4]
# Environment: BUILD (build), COORDINATOR, STREAMS (1000), MAX_NEW (16).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
COORDINATOR=${COORDINATOR:-$BUILD/bin/shardlm-coordinator}
STREAMS=${STREAMS:-1000}
MAX_NEW=${MAX_NEW:-16}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1

work=$(mktemp -d /tmp/grpc-streams.XXXXXX)
coordinator_pid=""
workers_pid=""
cleanup() {
  # SIGTERM drains (nothing is live by now) and tells the worker job to exit; then anything left
  # is killed: the coordinator by pid, the job by its process group (setsid below).
  if [ -n "$coordinator_pid" ] && kill -0 "$coordinator_pid" 2>/dev/null; then
    kill -TERM "$coordinator_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$coordinator_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$coordinator_pid" 2>/dev/null || true
  fi
  if [ -n "$workers_pid" ]; then
    for _ in $(seq 25); do kill -0 "$workers_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$workers_pid" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BUILD/bin/shardlm" make-tiny-model --out "$work/model" --arch llama --vocab 256 --layers 2 \
  --hidden 64 --heads 4 --kv-heads 2 --intermediate 128 --seed 1 >/dev/null
head -c 24 /dev/urandom | base64 >"$work/secret"
chmod 600 "$work/secret"

# Every stream runs at once: 1,024 sequences a step, queue room for all of them.
"$COORDINATOR" --listen 127.0.0.1:0 --worker-listen 127.0.0.1:0 \
  --worker-secret-file "$work/secret" --model "$work/model" --threads 1 \
  --max-running 1024 --max-batch-tokens 1024 --max-queue 4096 --kv-cache-memory 256MiB \
  >"$work/coordinator.out" 2>"$work/coordinator.log" &
coordinator_pid=$!
for _ in $(seq 100); do
  [ "$(wc -l <"$work/coordinator.out")" -ge 2 ] && break
  kill -0 "$coordinator_pid" 2>/dev/null || { cat "$work/coordinator.log"; exit 1; }
  sleep 0.1
done
addr=$(sed -n 's/^listening on //p' "$work/coordinator.out")
worker_addr=$(sed -n 's/^worker attach on //p' "$work/coordinator.out")
[ -n "$addr" ] && [ -n "$worker_addr" ] || { cat "$work/coordinator.log"; exit 1; }

setsid mpirun --oversubscribe --bind-to none -np 1 "$BUILD/bin/shardlm-worker" \
  --coordinator "$worker_addr" --worker-secret-file "$work/secret" >"$work/workers.log" 2>&1 &
workers_pid=$!

echo "coordinator $COORDINATOR (pid $coordinator_pid) on $addr; $STREAMS streams x $MAX_NEW tokens"
rc=0
"$BUILD/bin/grpc_streams" --server "$addr" --pid "$coordinator_pid" --streams "$STREAMS" \
  --max-new-tokens "$MAX_NEW" --vocab 256 "$@" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "grpc_streams failed ($rc); the coordinator's log ends:"
  tail -n 20 "$work/coordinator.log"
fi
exit "$rc"

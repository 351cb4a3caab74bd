#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: configure + build shardlm with CUDA, run the GPU
# tests, the GPU decode benchmark (bench/gpu_decode) and the HF transformers baseline
# (bench/compare_hf.py), then print one summary table. Every stage has its own timeout inside a
# total budget (default 540 s); a failed stage is reported and the next ones still run; the exit
# status is 1 when any stage failed (a missing gpu_decode binary or a missing torch is "skipped").
#
# Usage (repo root, as root or not):
#   bash scripts/gpu-check.sh [--arch 90] [--batches 1,2,4] [--skip STAGE,...] [--budget S]
#                             [--jobs N] [-DVAR=VALUE ...] [-- more cmake args]
# On the device tool: run(command="bash scripts/gpu-check.sh", carry=[".gpu-sysroot"],
# timeout_s=600). Stages: configure build test gpu_decode hf.
# Files in $OUT (default ./gpu-check-out): gpu-check.log (everything), summary.txt,
# gpu_decode.json, hf.json, ctest.log.
# If ./.gpu-sysroot exists (made here by scripts/gpu-sysroot.sh) its env.sh puts the Debian
# build dependencies on PATH, LD_LIBRARY_PATH, CMAKE_PREFIX_PATH, pkg-config's paths and sets
# OPAL_PREFIX; python3 (the HF stage) runs with the LD_LIBRARY_PATH it had before.
# Env: OUT, GPU_CHECK_BUILD_DIR (build-gpu), GPU_CHECK_CUDA_ARCH (90), GPU_CHECK_BATCHES,
#      GPU_CHECK_BUDGET_S (540), GPU_CHECK_JOBS (nproc), GPU_CHECK_CMAKE_ARGS (split on spaces),
#      GPU_CHECK_T_CONFIGURE/_BUILD/_TEST/_GPU_DECODE/_HF: per-stage caps (120/330/150/180/180 s),
#      GPU_CHECK_DECODE_ARGS, GPU_CHECK_HF_ARGS: more arguments for gpu_decode / compare_hf.py,
#      GPU_CHECK_CUDA_INCLUDE=0: do not put the CUDA headers on CPLUS_INCLUDE_PATH.
# Without a visible GPU (nvidia-smi missing or failing) it refuses: message, exit 1.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

BUILD=${GPU_CHECK_BUILD_DIR:-build-gpu}
ARCH=${GPU_CHECK_CUDA_ARCH:-90}
BATCHES=${GPU_CHECK_BATCHES:-}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
JOBS=${GPU_CHECK_JOBS:-$(nproc 2>/dev/null || echo 4)}
SKIP=","
ALLOW_NO_GPU=0 # --allow-no-gpu: for testing this script on a machine without one
read -r -a CMAKE_EXTRA <<<"${GPU_CHECK_CMAKE_ARGS:-}"
read -r -a DECODE_EXTRA <<<"${GPU_CHECK_DECODE_ARGS:-}"
read -r -a HF_EXTRA <<<"${GPU_CHECK_HF_ARGS:-}"

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --arch|--batches|--skip|--budget|--jobs)
      [ $# -ge 2 ] || { echo "gpu-check: $1 needs a value" >&2; exit 2; } ;;
  esac
  case "$1" in
    --arch) ARCH=$2; shift 2 ;;
    --batches) BATCHES=$2; shift 2 ;;
    --skip) SKIP=",$2,"; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --allow-no-gpu) ALLOW_NO_GPU=1; shift ;;
    -D*) CMAKE_EXTRA+=("$1"); shift ;;
    --) shift; CMAKE_EXTRA+=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# --- 0. a GPU, or refuse --------------------------------------------------------------------------
gpu_list=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
  why="nvidia-smi not found"
elif ! gpu_list=$(timeout 60 nvidia-smi -L 2>&1) || ! grep -q '^GPU ' <<<"$gpu_list"; then
  why="nvidia-smi failed: $(head -3 <<<"$gpu_list" | tr '\n' ' ')"; gpu_list=""
fi
if [ -z "$gpu_list" ] && [ "$ALLOW_NO_GPU" = 0 ]; then
  echo "gpu-check: no GPU visible ($why). This script is for a machine with an NVIDIA GPU;" \
    "nothing was done." >&2
  exit 1
fi

OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT" || { echo "gpu-check: cannot create \$OUT=$OUT" >&2; exit 1; }
LOG=$OUT/gpu-check.log
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }
T0=$SECONDS
DEADLINE=$((T0 + BUDGET))

say "=== gpu-check $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), budget ${BUDGET}s, ${JOBS} jobs"
if [ -n "$gpu_list" ]; then
  say "$gpu_list"
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
  say "driver $DRIVER; $(nvidia-smi --query-gpu=memory.total,clocks.max.sm,clocks.max.mem \
    --format=csv 2>/dev/null | tail -1)"
else
  GPU_NAME="none (--allow-no-gpu)"; DRIVER="-"
  say "WARNING: no GPU ($why); going on because of --allow-no-gpu"
fi

# --- environment: the sysroot, the toolchain ----------------------------------------------------
ORIG_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
if [ -f "$ROOT/.gpu-sysroot/env.sh" ]; then
  # shellcheck source=/dev/null
  if source "$ROOT/.gpu-sysroot/env.sh" 2>>"$LOG"; then
    say "sysroot: $GPU_SYSROOT ($(wc -l <"$GPU_SYSROOT/MANIFEST") Debian packages)"
  else
    say "sysroot: $ROOT/.gpu-sysroot/env.sh FAILED; going on with the system's packages"
  fi
else
  say "sysroot: none (./.gpu-sysroot absent); using the system's packages"
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# mpirun refuses to start, even on one node, without an rsh/ssh agent installed.
if ! command -v ssh >/dev/null 2>&1 && ! command -v rsh >/dev/null 2>&1; then
  export OMPI_MCA_plm_rsh_agent=${OMPI_MCA_plm_rsh_agent:-false}
fi
# Containers often deny the ptrace rights Open MPI's single-copy shared memory needs.
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=$PATH:/usr/local/cuda/bin
fi
# Safety net: C++ files that include <cuda_runtime_api.h> through a header of a target that links
# CUDA::cudart PRIVATE compile only where the CUDA headers are on the default include path (they
# are on the dev machines, through /usr/local/include; not on a CUDA image). GPU_CHECK_CUDA_INCLUDE=0
# leaves the path alone, to see such a bug.
cuda_inc=$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")/../include
if [ "${GPU_CHECK_CUDA_INCLUDE:-1}" = 1 ] && [ -f "$cuda_inc/cuda_runtime_api.h" ]; then
  cuda_inc=$(realpath "$cuda_inc")
  export CPLUS_INCLUDE_PATH=$cuda_inc${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}
  say "CUDA headers on the C++ include path: CPLUS_INCLUDE_PATH=$CPLUS_INCLUDE_PATH"
fi
say "toolchain: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'nvcc missing');" \
  "$(${CXX:-c++} --version 2>/dev/null | head -1); $(cmake --version 2>/dev/null | head -1);" \
  "ninja $(ninja --version 2>/dev/null)"

CONFIG_ARGS=(-DCMAKE_BUILD_TYPE=Release -DSHARDLM_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$ARCH")
# NCCL: CMake looks next to the CUDA toolkit; an image may have it only in pip's nvidia-nccl.
if ! printf '%s\n' "${CMAKE_EXTRA[@]}" | grep -q NCCL_ &&
  ! compgen -G "/usr/local/cuda/lib64/libnccl.so*" >/dev/null &&
  ! compgen -G "/usr/local/cuda/targets/x86_64-linux/lib/libnccl.so*" >/dev/null &&
  ! compgen -G "/usr/lib/x86_64-linux-gnu/libnccl.so*" >/dev/null; then
  nccl_dir=$(LD_LIBRARY_PATH=$ORIG_LD_LIBRARY_PATH python3 -c \
    'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null)
  nccl_lib=$(compgen -G "${nccl_dir:-/nonexistent}/lib/libnccl.so*" | head -1)
  if [ -n "$nccl_lib" ] && [ -f "$nccl_dir/include/nccl.h" ]; then
    CONFIG_ARGS+=("-DNCCL_LIBRARY=$nccl_lib" "-DNCCL_INCLUDE_DIR=$nccl_dir/include")
    export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$nccl_dir/lib
    say "NCCL: from python's nvidia-nccl: $nccl_lib"
  fi
fi
# Debian 12's abseil (20220623) and protobuf (3.21) headers predate GCC 13, which no longer
# includes <cstdint> through <string>: pre-include it when building against the sysroot.
gxx_major=$(${CXX:-c++} -dumpversion 2>/dev/null | cut -d. -f1)
if [ -n "${GPU_SYSROOT:-}" ] && [ "${gxx_major:-0}" -ge 13 ] 2>/dev/null &&
  ! printf '%s\n' "${CMAKE_EXTRA[@]}" | grep -q '^-DCMAKE_CXX_FLAGS'; then
  CONFIG_ARGS+=("-DCMAKE_CXX_FLAGS=-include cstdint")
fi
CONFIG_ARGS+=("${CMAKE_EXTRA[@]}")

# --- stages ---------------------------------------------------------------------------------------
# Each stage gets min(its cap, what is left of the budget less the least time the later stages
# need). STATUS: ok, FAILED (rc N), TIMEOUT (Ns), skipped (why).
declare -A CAP=([configure]=120 [build]=330 [test]=150 [gpu_decode]=180 [hf]=180)
for s in "${!CAP[@]}"; do # GPU_CHECK_T_BUILD=600 etc. raise or lower a cap
  v=GPU_CHECK_T_${s^^}; [ -z "${!v:-}" ] || CAP[$s]=${!v}
done
declare -A MIN=([configure]=20 [build]=60 [test]=30 [gpu_decode]=60 [hf]=60)
ORDER=(configure build test gpu_decode hf)
declare -A STATUS=() DUR=()
FAILED=0
skipped() { [[ "$SKIP" == *",$1,"* ]]; }
stage_timeout() { # stage_timeout NAME: seconds it may run, 0 when none are left
  local name=$1 reserve=0 after=0 s left t
  for s in "${ORDER[@]}"; do
    if [ "$after" = 1 ] && ! skipped "$s"; then reserve=$((reserve + ${MIN[$s]})); fi
    [ "$s" = "$name" ] && after=1
  done
  left=$((DEADLINE - SECONDS - 5))
  t=$((left - reserve))
  [ "$t" -ge "${MIN[$name]}" ] || t=$((left < ${MIN[$name]} ? left : ${MIN[$name]}))
  [ "$t" -le "${CAP[$name]}" ] || t=${CAP[$name]}
  [ "$t" -gt 0 ] || t=0
  echo "$t"
}
STAGE_OFFSET=0
# run_stage NAME CMD...: runs CMD under its timeout, output appended to the log; prints a tail.
run_stage() {
  local name=$1; shift
  local t rc start
  if skipped "$name"; then STATUS[$name]="skipped (--skip)"; return 0; fi
  t=$(stage_timeout "$name")
  if [ "$t" -le 0 ]; then
    STATUS[$name]="skipped (budget spent)"; FAILED=1; say "=== [$name] no time left: skipped"
    return 1
  fi
  say "=== [$name] $(date -u +%T) timeout ${t}s: $*"
  STAGE_OFFSET=$(stat -c %s "$LOG")
  start=$SECONDS
  timeout -k 10 "$t" "$@" >>"$LOG" 2>&1 </dev/null
  rc=$?
  DUR[$name]=$((SECONDS - start))
  local lines=15
  case $rc in
    0) STATUS[$name]=ok ;;
    124|137) STATUS[$name]="TIMEOUT (${t}s)"; FAILED=1; lines=40 ;;
    77) STATUS[$name]="skipped (exit 77)" ;;
    *) STATUS[$name]="FAILED (rc $rc)"; FAILED=1; lines=60 ;;
  esac
  tail -c +$((STAGE_OFFSET + 1)) "$LOG" | tail -n "$lines"
  say "=== [$name] ${STATUS[$name]} in ${DUR[$name]}s"
  return "$rc"
}
stage_output() { tail -c +$((STAGE_OFFSET + 1)) "$LOG"; }

# 1. configure, 2. build (-k 0: build what can be built, so the tests that did build still run)
run_stage configure cmake -S . -B "$BUILD" -G Ninja "${CONFIG_ARGS[@]}"
if [ -f "$BUILD/build.ninja" ]; then
  run_stage build cmake --build "$BUILD" -j "$JOBS" -- -k 0
elif ! skipped build; then
  STATUS[build]="skipped (not configured)"; FAILED=1
fi

# 3. GPU tests: those labelled gpu, or by name while no test carries the label yet.
T_PASSED=0 T_FAILED=0 T_SKIPPED=0 T_SELECT=""
if [ -f "$BUILD/CTestTestfile.cmake" ]; then
  if [ "$(ctest --test-dir "$BUILD" -N -L gpu 2>/dev/null | grep -c 'Test *#')" -gt 0 ]; then
    T_SELECT="-L gpu"; sel=(-L gpu)
  else
    T_SELECT="-R 'cuda|nccl' (no test labelled gpu)"; sel=(-R 'cuda|nccl')
  fi
  run_stage test ctest --test-dir "$BUILD" "${sel[@]}" --output-on-failure --timeout 120
  if [ -n "${DUR[test]:-}" ]; then
    res=$(stage_output | grep -E '^ *[0-9]+/[0-9]+ Test +#[0-9]+: ')
    T_PASSED=$(grep -c ' Passed ' <<<"$res")
    T_SKIPPED=$(grep -cE '(Skipped|Disabled)' <<<"$res")
    T_FAILED=$(( $(grep -c . <<<"$res") - T_PASSED - T_SKIPPED ))
    [ -n "$res" ] || { STATUS[test]="FAILED (no test ran)"; FAILED=1; }
    cp -f "$BUILD/Testing/Temporary/LastTest.log" "$OUT/ctest.log" 2>/dev/null
  fi
elif ! skipped test; then
  STATUS[test]="skipped (not configured)"; FAILED=1
fi

# 4. shardlm's decode benchmark.
GPU_DECODE=""
for c in "$BUILD/bin/gpu_decode" "$BUILD/bench/gpu_decode"; do
  [ -x "$c" ] && { GPU_DECODE=$c; break; }
done
rm -f "$OUT/gpu_decode.json" "$OUT/hf.json"
if [ -n "$GPU_DECODE" ]; then
  run_stage gpu_decode "$GPU_DECODE" --json "$OUT/gpu_decode.json" \
    ${BATCHES:+--batches "$BATCHES"} "${DECODE_EXTRA[@]}"
elif ! skipped gpu_decode; then
  STATUS[gpu_decode]="skipped (no $BUILD/bin/gpu_decode)"; say "=== [gpu_decode] ${STATUS[gpu_decode]}"
fi

# 5. HF transformers on the same shape, with python's own library path.
# compare_hf.py skips the batch sizes that would overrun the time this stage gets.
if [ -f bench/compare_hf.py ]; then
  hf_budget=$(($(stage_timeout hf) - 20))
  [ "$hf_budget" -le 100 ] || hf_budget=100
  [ "$hf_budget" -ge 30 ] || hf_budget=30
  run_stage hf env LD_LIBRARY_PATH="$ORIG_LD_LIBRARY_PATH" PYTHONUNBUFFERED=1 \
    python3 bench/compare_hf.py --json "$OUT/hf.json" --time-budget "$hf_budget" \
    ${BATCHES:+--batches "$BATCHES"} "${HF_EXTRA[@]}"
else
  STATUS[hf]="skipped (no bench/compare_hf.py)"
fi

# --- summary --------------------------------------------------------------------------------------
stages=""
for s in "${ORDER[@]}"; do
  if [ -z "${STATUS[$s]:-}" ] && skipped "$s"; then STATUS[$s]="skipped (--skip)"; fi
  stages+="$s: ${STATUS[$s]:-not run}${DUR[$s]:+ ${DUR[$s]}s}; "
done
export GC_GPU="$GPU_NAME" GC_DRIVER="$DRIVER" GC_STAGES="$stages" GC_TOTAL=$((SECONDS - T0)) \
  GC_TP=$T_PASSED GC_TF=$T_FAILED GC_TS=$T_SKIPPED GC_TSEL="$T_SELECT" \
  GC_TEST_STATUS="${STATUS[test]:-not run}" GC_OUT="$OUT"
LD_LIBRARY_PATH=$ORIG_LD_LIBRARY_PATH python3 - <<'EOF' 2>&1 | tee "$OUT/summary.txt" | tee -a "$LOG"
import json, os

e = os.environ
def load(name):
    try:
        with open(os.path.join(e["GC_OUT"], name)) as f:
            return json.load(f)
    except Exception:
        return None

dec, hf = load("gpu_decode.json"), load("hf.json")
rows = []  # (item, value, goal, mark)
def row(item, value, goal="", mark=""):
    rows.append((item, value, goal, mark))
def num(d, k):
    v = (d or {}).get(k)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

row("GPU", f"{e['GC_GPU']} (driver {e['GC_DRIVER']})")
tp, tf, ts = int(e["GC_TP"]), int(e["GC_TF"]), int(e["GC_TS"])
ran = e["GC_TEST_STATUS"] not in ("not run",) and not e["GC_TEST_STATUS"].startswith("skipped")
row(f"tests {e['GC_TSEL']}".strip(), f"{tp} passed, {tf} failed, {ts} skipped",
    "0 failed, >0 passed", "PASS" if ran and tf == 0 and tp > 0 else "MISS")
bw, roof = num(dec, "copy_bandwidth_gbs"), num(dec, "roofline_tok_s")
row("copy bandwidth (read+write)", f"{bw:.0f} GB/s" if bw else "-", "measured",
    "PASS" if bw else "MISS")
wb = num(dec, "weight_bytes")
row("roofline (bandwidth / weights)",
    f"{roof:.1f} tok/s" + (f" ({wb / 1e9:.2f} GB of weights)" if wb else "") if roof else "-",
    "measured", "PASS" if roof else "MISS")
b1, frac = num(dec, "batch1_decode_tok_s"), num(dec, "batch1_roofline_fraction")
if frac is None and b1 and roof:
    frac = b1 / roof
graphs = (dec or {}).get("cuda_graphs")
row("batch-1 decode, shardlm",
    f"{b1:.1f} tok/s = {100 * frac:.1f}% of roofline" + (f", graphs {'on' if graphs else 'off'}"
        if graphs is not None else "") if b1 and frac else "-",
    ">= 85% of roofline", "PASS" if frac and frac >= 0.85 else "MISS")
hb1 = num(hf, "batch1_decode_tok_s")
row("batch-1 decode, HF transformers",
    f"{hb1:.1f} tok/s" + (f" (shardlm {b1 / hb1:.2f}x)" if b1 and hb1 else "") if hb1 else "-",
    "measured", "PASS" if hb1 else "MISS")

def by_batch(d):
    out = {}
    for r in (d or {}).get("throughput") or []:
        if isinstance(r, dict) and isinstance(r.get("batch"), int):
            out[r["batch"]] = r
    return out
ours, theirs = by_batch(dec), by_batch(hf)
def fmt_tp(r):
    if r is None:
        return "-"
    if r.get("error"):
        return str(r["error"])
    v = num(r, "output_tok_s")
    return f"{v:.0f}" if v is not None else "-"
best_o = max(((num(r, "output_tok_s") or 0, b) for b, r in ours.items()), default=(0, None))
best_h = max(((num(r, "output_tok_s") or 0, b) for b, r in theirs.items()), default=(0, None))
for b in sorted(set(ours) | set(theirs)):
    o, h = num(ours.get(b), "output_tok_s"), num(theirs.get(b), "output_tok_s")
    ratio = o / h if o and h else None
    note = ""
    if o and not h and theirs.get(b, {}).get("error"):
        note = f" (HF {theirs[b]['error']})"
    mark = "PASS" if ratio and ratio >= 3 else "MISS"
    if o and not h and (theirs.get(b) or {}).get("error"):
        mark = "n/a"  # HF ran out of memory or was skipped at this batch: nothing to compare
    row(f"throughput batch {b:>3} (out tok/s)",
        f"shardlm {fmt_tp(ours.get(b)):>7}  HF {fmt_tp(theirs.get(b)):>7}  " +
        (f"ratio {ratio:5.2f}x" if ratio else "ratio     -") + note,
        ">= 3x HF", mark)
if best_o[1] is not None or best_h[1] is not None:
    r = best_o[0] / best_h[0] if best_o[0] and best_h[0] else None
    def peak(v, b):
        return f"{v:.0f} (batch {b})" if v else "-"
    row("peak throughput (out tok/s)",
        f"shardlm {peak(*best_o)}  HF {peak(*best_h)}  " + (f"ratio {r:.2f}x" if r else "ratio -"),
        ">= 3x HF", "PASS" if r and r >= 3 else "MISS")
else:
    row("throughput", "no gpu_decode.json / hf.json throughput", ">= 3x HF", "MISS")

w0 = max(len(r[0]) for r in rows)
w1 = max(len(r[1]) for r in rows)
w2 = max(len(r[2]) for r in rows)
bar = "=" * (w0 + w1 + w2 + 12)
print(bar)
print(f"gpu-check summary ({e['GC_TOTAL']} s)")
print("stages: " + e["GC_STAGES"].rstrip("; "))
print(bar)
print(f"{'item':<{w0}}  {'value':<{w1}}  {'goal':<{w2}}  mark")
for item, value, goal, mark in rows:
    print(f"{item:<{w0}}  {value:<{w1}}  {goal:<{w2}}  {mark}")
print("PASS/MISS: goal met or not (measured: the figure is there); n/a: HF has no figure at that")
print("batch (out of memory or skipped), the peak line compares the best of each.")
print(bar)
EOF
[ "${PIPESTATUS[0]}" = 0 ] || say "gpu-check: (no summary table: python3 failed) stages: $stages"
say "gpu-check: files in $OUT: $(find "$OUT" -maxdepth 1 -type f -printf '%f ')"
if [ "$FAILED" = 0 ]; then say "gpu-check: all stages ran (see marks for goals)"; else say "gpu-check: a stage FAILED"; fi
exit "$FAILED"

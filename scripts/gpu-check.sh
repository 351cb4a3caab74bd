#!/usr/bin/env bash
# The GPU check, sized for the device tool (15 minutes of device time a session, the machine's
# start included): on a machine with an NVIDIA GPU, a bare CUDA image included,
#   configure  the GPU-only build (-DSHARDLM_SERVICE=OFF: no gRPC) in build-gpu, CUDA for this
#              GPU's architecture (nvidia-smi's compute capability; 90 on H100/H200)
#   build      only what the check runs (target gpu_check_targets), -j $(nproc)
#   test       ctest -L gpu: every CUDA op, the quantized GEMVs and the sampler against the CPU
#              backend, the model on CUDA vs the CPU (CUDA graphs vs eager), tp=2 on one GPU
#              through MPI, NCCL (the two-GPU cases skip on one)
#   gpu_decode bench/gpu_decode at batch 1, 8, 64 and contexts 256, 4096 (Llama-2-7B shape, bf16)
#   memcheck   compute-sanitizer --tool memcheck on cuda_backend_test, cuda_quant_test and
#              cuda_ops_test (gtest filters keep them short)
# then one summary: per batch and context tok/s, ms/step, GB/s achieved and % of the roofline (the
# HBM peak bandwidth of this GPU, by name, else from its memory clock and bus width), PASS at
# >= 90%. It STOPS at the first failed stage, names it and exits 1 (a goal missed is a MISS in the
# summary, not a failure). gpu_decode runs before memcheck so that a slow sanitizer cannot cost
# the figures.
#
# On the device tool, after `bash scripts/gpu-sysroot.sh` here (the image lacks abseil, protobuf,
# OpenBLAS, Open MPI, gtest; about 30 MiB to carry):
#   run(command="bash scripts/gpu-check.sh", carry=[".gpu-sysroot"], timeout_s=480)
# A second call on the still-warm machine finds build-gpu there (configure and build are no-ops):
#   run(command="bash scripts/gpu-check.sh --skip test,memcheck --contexts 4096", ...)
# Here, without a GPU: `bash scripts/gpu-check.sh --dry-run` configures and builds the same way
# (against .gpu-sysroot when present), lists the tests and gpu_decode's plan, and prints what each
# GPU stage would run; `bash scripts/gpu-sysroot.sh --bare -- bash scripts/gpu-check.sh --dry-run`
# does it with this host's own copies of those packages hidden.
#
# Usage: bash scripts/gpu-check.sh [--dry-run] [--arch 90] [--batches 1,8,64] [--contexts 256,4096]
#          [--gen 32] [--skip STAGE,...] [--budget 420 (--dry-run: 3600)] [--jobs N] [--hf]
#          [-DVAR=VALUE ...] [-- more cmake args]
# Stages and their shares of the budget (seconds; what a stage leaves unused goes to the next):
# configure 30, build 180, test 90, gpu_decode 60, memcheck 60 (= 420); --hf adds the HF
# transformers baseline (bench/compare_hf.py, 120 s more) for the first context.
# Files in $OUT (default ./gpu-check-out): gpu-check.log (everything), summary.txt, ctest.log,
# gpu_decode.json (and hf.json).
# Env: OUT, GPU_CHECK_BUILD_DIR (build-gpu), GPU_CHECK_BUDGET_S (420), GPU_CHECK_JOBS (nproc),
#      GPU_CHECK_T_CONFIGURE/_BUILD/_TEST/_GPU_DECODE/_MEMCHECK/_HF: the shares,
#      GPU_CHECK_CMAKE_ARGS (split on spaces), GPU_CHECK_CTEST_J (4), GPU_CHECK_GOAL (0.90),
#      GPU_CHECK_MEMCHECK_BACKEND_FILTER, GPU_CHECK_MEMCHECK_QUANT_FILTER,
#      GPU_CHECK_MEMCHECK_OPS_FILTER (gtest filters),
#      GPU_CHECK_HBM_GBS: the roofline's bandwidth (GB/s) for a GPU the name table lacks,
#      GPU_CHECK_CUDA_INCLUDE=0: do not put the CUDA headers on CPLUS_INCLUDE_PATH.
# Without a visible GPU (nvidia-smi missing or failing) and without --dry-run it refuses: exit 1.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

BUILD=${GPU_CHECK_BUILD_DIR:-build-gpu}
ARCH=""
BATCHES=1,8,64
CONTEXTS=256,4096
GEN=32
BUDGET=${GPU_CHECK_BUDGET_S:-}
JOBS=${GPU_CHECK_JOBS:-$(nproc 2>/dev/null || echo 4)}
CTEST_J=${GPU_CHECK_CTEST_J:-4}
GOAL=${GPU_CHECK_GOAL:-0.90}
SKIP=","
DRY=0
HF=0
FILTER_BACKEND=${GPU_CHECK_MEMCHECK_BACKEND_FILTER:-CudaBackendTest.*:-*LongContext*}
FILTER_QUANT=${GPU_CHECK_MEMCHECK_QUANT_FILTER:-*CudaQuantTest.*}
# The new dense-family kernels (not the Gemma 3 attention cases: long CPU references).
FILTER_OPS=${GPU_CHECK_MEMCHECK_OPS_FILTER:-CudaOpsTest.*}
read -r -a CMAKE_EXTRA <<<"${GPU_CHECK_CMAKE_ARGS:-}"

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --arch|--batches|--contexts|--gen|--skip|--budget|--jobs)
      [ $# -ge 2 ] || { echo "gpu-check: $1 needs a value" >&2; exit 2; } ;;
  esac
  case "$1" in
    --arch) ARCH=$2; shift 2 ;;
    --batches) BATCHES=$2; shift 2 ;;
    --contexts) CONTEXTS=$2; shift 2 ;;
    --gen) GEN=$2; shift 2 ;;
    --skip) SKIP=",$2,"; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --dry-run|--allow-no-gpu) DRY=1; shift ;;
    --hf) HF=1; shift ;;
    -D*) CMAKE_EXTRA+=("$1"); shift ;;
    --) shift; CMAKE_EXTRA+=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
# A dry run builds on whatever machine it is given (12 minutes on 2 shared cores): no budget.
[ -n "$BUDGET" ] || { [ "$DRY" = 1 ] && BUDGET=3600 || BUDGET=420; }
for v in BUDGET JOBS GEN CTEST_J; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "gpu-check: ${v,,} must be a positive integer (got '${!v}')" >&2; exit 2; }
done
for v in BATCHES CONTEXTS; do
  [[ "${!v}" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] ||
    { echo "gpu-check: --${v,,} takes positive integers separated by commas (got '${!v}')" >&2; exit 2; }
done
[ -z "$ARCH" ] || [[ "$ARCH" =~ ^[0-9]+[a-z]?$ ]] || { echo "gpu-check: --arch takes e.g. 90 (got '$ARCH')" >&2; exit 2; }

# --- 0. a GPU, or refuse (unless --dry-run) ---------------------------------------------------------
gpu_list="" why=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
  why="nvidia-smi not found"
elif ! gpu_list=$(timeout 60 nvidia-smi -L 2>&1) || ! grep -q '^GPU ' <<<"$gpu_list"; then
  why="nvidia-smi failed: $(head -3 <<<"$gpu_list" | tr '\n' ' ')"; gpu_list=""
fi
if [ -z "$gpu_list" ] && [ "$DRY" = 0 ]; then
  echo "gpu-check: no GPU visible ($why). This script is for a machine with an NVIDIA GPU" \
    "(--dry-run: the stages that need none); nothing was done." >&2
  exit 1
fi

OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT" || { echo "gpu-check: cannot create \$OUT=$OUT" >&2; exit 1; }
LOG=$OUT/gpu-check.log
: >"$LOG"
rm -f "$OUT"/{summary.txt,ctest.log,gpu_decode.json,hf.json}
say() { echo "$*" | tee -a "$LOG"; }
T0=$SECONDS
DEADLINE=$((T0 + BUDGET))

query() { nvidia-smi --query-gpu="$1" --format=csv,noheader,nounits 2>/dev/null | head -1 | sed 's/ *$//'; }
MODE="GPU check"; [ "$DRY" = 1 ] && MODE="dry run (no GPU stage runs)"
say "=== gpu-check $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname): $MODE, budget ${BUDGET}s, ${JOBS} jobs"
GPU_NAME="none"; DRIVER="-"; MEM_MHZ=""
if [ -n "$gpu_list" ]; then
  say "$gpu_list"
  GPU_NAME=$(query name); DRIVER=$(query driver_version); MEM_MHZ=$(query clocks.max.mem)
  cap=$(query compute_cap)
  say "driver $DRIVER; compute capability $cap; $(query memory.total) MiB; max clocks SM $(query clocks.max.sm) MHz, memory $MEM_MHZ MHz"
  [ -n "$ARCH" ] || { [[ "$cap" =~ ^[0-9]+\.[0-9]+$ ]] && ARCH=${cap/./}; }
else
  say "no GPU ($why): --dry-run"
fi
ARCH=${ARCH:-90}

# The roofline: HBM peak bandwidth (GB/s) by name (the data sheets'); else gpu_decode takes it
# from the device's memory clock x 2 x bus width.
HBM_GBS=${GPU_CHECK_HBM_GBS:-}
if [ -z "$HBM_GBS" ]; then
  case "$GPU_NAME" in
    *H200*) HBM_GBS=4800 ;;
    *H100*NVL*) HBM_GBS=3900 ;;
    *H100*PCIe*) HBM_GBS=2000 ;;
    *H100*HBM3*|*H100*SXM*) HBM_GBS=3350 ;;
    *A100*80GB*PCIe*) HBM_GBS=1935 ;;
    *A100*80GB*) HBM_GBS=2039 ;;
    *A100*) HBM_GBS=1555 ;;
  esac
fi
ROOF_NOTE="the data sheet's HBM bandwidth of this GPU"
[ -n "${GPU_CHECK_HBM_GBS:-}" ] && ROOF_NOTE="GPU_CHECK_HBM_GBS"
[ -n "$HBM_GBS" ] || ROOF_NOTE="the device's memory clock x 2 x bus width (name not in the table)"

# --- environment: the sysroot, the toolchain --------------------------------------------------------
ORIG_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
SYSROOT_NOTE="none (./.gpu-sysroot absent): the system's packages"
if [ -f "$ROOT/.gpu-sysroot/env.sh" ]; then
  # shellcheck source=/dev/null
  if source "$ROOT/.gpu-sysroot/env.sh" 2>>"$LOG"; then
    # As carried: less the libraries env.sh inflated next to their .xz.
    carried=$(find "$GPU_SYSROOT" -type f -printf '%s %p\n' | awk '{ size[$2] = $1 }
      END { for (f in size) if (!((f ".xz") in size)) s += size[f]; printf "%.1f", s / 1048576 }')
    SYSROOT_NOTE="$GPU_SYSROOT ($(wc -l <"$GPU_SYSROOT/MANIFEST") Debian packages, $carried MiB as carried)"
  else
    SYSROOT_NOTE="$ROOT/.gpu-sysroot/env.sh FAILED; the system's packages"
  fi
fi
say "sysroot: $SYSROOT_NOTE"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# mpirun refuses to start, even on one node, without an rsh/ssh agent installed.
if ! command -v ssh >/dev/null 2>&1 && ! command -v rsh >/dev/null 2>&1; then
  export OMPI_MCA_plm_rsh_agent=${OMPI_MCA_plm_rsh_agent:-false}
fi
# Containers often deny the ptrace rights Open MPI's single-copy shared memory needs.
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer; do
  [ -d "$d" ] && [[ ":$PATH:" != *":$d:"* ]] && export PATH=$PATH:$d
done
# Safety net: C++ files that include <cuda_runtime_api.h> through a header of a target that links
# CUDA::cudart PRIVATE compile only where the CUDA headers are on the default include path (they
# are on the dev machines, through /usr/local/include; not on a CUDA image). GPU_CHECK_CUDA_INCLUDE=0
# leaves the path alone, to see such a bug.
cuda_inc=$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")/../include
if [ "${GPU_CHECK_CUDA_INCLUDE:-1}" = 1 ] && [ -f "$cuda_inc/cuda_runtime_api.h" ]; then
  cuda_inc=$(realpath "$cuda_inc")
  export CPLUS_INCLUDE_PATH=$cuda_inc${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}
fi
say "toolchain: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'nvcc missing');" \
  "$(${CXX:-c++} --version 2>/dev/null | head -1); $(cmake --version 2>/dev/null | head -1);" \
  "ninja $(ninja --version 2>/dev/null); compute-sanitizer: $(command -v compute-sanitizer || echo missing)"

# CMAKE_DISABLE_FIND_PACKAGE_gRPC: the GPU-only build must not ask for gRPC (CMake then warns that
# the variable went unused, which is the point).
CONFIG_ARGS=(-DCMAKE_BUILD_TYPE=Release -DSHARDLM_CUDA=ON -DSHARDLM_SERVICE=OFF
  "-DCMAKE_CUDA_ARCHITECTURES=$ARCH" -DCMAKE_DISABLE_FIND_PACKAGE_gRPC=ON)
command -v ccache >/dev/null 2>&1 &&
  CONFIG_ARGS+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
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
# Each stage may run until the deadline less the shares of the stages after it (so what a stage
# leaves unused goes to the next), and at least MIN seconds. STATUS: ok, FAILED (rc N),
# TIMEOUT (Ns), skipped (why), planned (--dry-run).
declare -A CAP=([configure]=30 [build]=180 [test]=90 [gpu_decode]=60 [memcheck]=60 [hf]=120)
for s in "${!CAP[@]}"; do # GPU_CHECK_T_BUILD=240 etc.
  v=GPU_CHECK_T_${s^^}; [ -z "${!v:-}" ] || CAP[$s]=${!v}
done
ORDER=(configure build test gpu_decode memcheck)
[ "$HF" = 1 ] && { ORDER+=(hf); DEADLINE=$((DEADLINE + CAP[hf])); }
declare -A STATUS=() DUR=()
skipped() { [[ "$SKIP" == *",$1,"* ]]; }
stage_timeout() { # stage_timeout NAME: seconds it may run
  local name=$1 reserve=0 after=0 s t
  for s in "${ORDER[@]}"; do
    if [ "$after" = 1 ] && ! skipped "$s"; then reserve=$((reserve + ${CAP[$s]})); fi
    [ "$s" = "$name" ] && after=1
  done
  t=$((DEADLINE - SECONDS - reserve))
  [ "$t" -ge 10 ] || t=10
  echo "$t"
}
summary() { # the figures so far, then exit $1
  local rc=$1 s stages=""
  for s in "${ORDER[@]}"; do
    if [ -z "${STATUS[$s]:-}" ] && skipped "$s"; then STATUS[$s]="skipped (--skip)"; fi
    stages+="$s: ${STATUS[$s]:-not run}${DUR[$s]:+ ${DUR[$s]}s}; "
  done
  GC_GPU="$GPU_NAME" GC_DRIVER="$DRIVER" GC_STAGES="$stages" GC_TOTAL=$((SECONDS - T0)) \
    GC_OUT="$OUT" GC_GOAL="$GOAL" GC_ROOF="$ROOF_NOTE" GC_TESTS="${TEST_COUNTS:-}" \
    GC_MEMCHECK="${MEMCHECK_NOTE:-}" GC_DRY="$DRY" GC_SYSROOT="$SYSROOT_NOTE" GC_PLANNED="$PLANNED" \
    LD_LIBRARY_PATH=$ORIG_LD_LIBRARY_PATH python3 - <<'EOF' 2>&1 | tee "$OUT/summary.txt" | tee -a "$LOG"
import json, os

e = os.environ
def load(name):
    try:
        with open(os.path.join(e["GC_OUT"], name)) as f:
            return json.load(f)
    except Exception:
        return None

goal = float(e["GC_GOAL"])
dec, hf = load("gpu_decode.json"), load("hf.json")
bar = "=" * 100
print(bar)
print(f"gpu-check summary ({e['GC_TOTAL']} s){' -- dry run, no GPU' if e['GC_DRY'] == '1' else ''}:"
      f" {e['GC_GPU']} (driver {e['GC_DRIVER']})")
print("stages: " + e["GC_STAGES"].rstrip("; "))
print("sysroot: " + e["GC_SYSROOT"])
if e["GC_TESTS"]:
    print("tests (ctest -L gpu): " + e["GC_TESTS"])
if e["GC_MEMCHECK"]:
    print("memcheck: " + e["GC_MEMCHECK"])
if dec:
    print(f"gpu_decode: {dec.get('model')}, {dec.get('weight_bytes', 0) / 1e9:.2f} GB of weights;"
          f" roofline {dec.get('hbm_peak_gbs', 0):.0f} GB/s ({e['GC_ROOF']}); device copy"
          f" {dec.get('copy_bandwidth_gbs', 0):.0f} GB/s (read + write); CUDA graphs"
          f" {'on' if dec.get('cuda_graphs') else 'off'}")
    g = dec.get("graphs_vs_eager") or {}
    if g:
        print(f"  batch 1 context {g['context']}: graphs {g['graphs_tok_s']:.1f} tok/s, eager"
              f" {g['eager_tok_s']:.1f} tok/s, the same greedy tokens for {g['same_tokens']} of"
              f" {g['of']}")
    hf_steps = {}
    for r in (hf or {}).get("throughput") or []:
        if isinstance(r, dict) and isinstance(r.get("decode_step_ms"), (int, float)):
            hf_steps[r["batch"]] = r["decode_step_ms"]
    head = (f"  {'batch':>5} {'context':>7} {'tok/s':>9} {'ms/step':>8} {'GB/step':>8}"
            f" {'GB/s':>6} {'% roof':>6} {'% copy':>6}  mark (goal >= {100 * goal:.0f}% of roofline)")
    print(head)
    for c in dec.get("cells") or []:
        b, ctx = c.get("batch"), c.get("context")
        if c.get("error"):
            print(f"  {b:>5} {ctx:>7}  n/a: {c['error']}")
            continue
        frac = c["roofline_fraction"]
        note = ""
        if b in hf_steps and ctx == (dec.get("cells") or [{}])[0].get("context"):
            note = f"  (HF transformers {hf_steps[b]:.2f} ms/step: {hf_steps[b] / c['decode_step_ms']:.2f}x)"
        print(f"  {b:>5} {ctx:>7} {c['decode_tok_s']:>9.1f} {c['decode_step_ms']:>8.3f}"
              f" {c['bytes_per_step'] / 1e9:>8.2f} {c['achieved_gbs']:>6.0f} {100 * frac:>6.1f}"
              f" {100 * c['copy_fraction']:>6.1f}  {'PASS' if frac >= goal else 'MISS'}{note}")
elif e["GC_DRY"] != "1":
    print("gpu_decode: no figures (no gpu_decode.json)")
if e["GC_PLANNED"]:
    print("on a device it would run:")
    for line in e["GC_PLANNED"].strip().split("\n"):
        print("  " + line)
print(bar)
EOF
  [ "${PIPESTATUS[0]}" = 0 ] || say "gpu-check: (no summary table: python3 failed) stages: $stages"
  say "gpu-check: files in $OUT: $(find "$OUT" -maxdepth 1 -type f -printf '%f ')"
  exit "$rc"
}
STAGE_OFFSET=0
# run_stage NAME CMD...: runs CMD under its timeout, output appended to the log, a tail printed;
# on a failure the summary so far, then exit 1.
run_stage() {
  local name=$1; shift
  local t rc start lines=12
  if skipped "$name"; then STATUS[$name]="skipped (--skip)"; say "=== [$name] skipped (--skip)"; return 0; fi
  t=$(stage_timeout "$name")
  say "=== [$name] $(date -u +%T) timeout ${t}s: $*"
  STAGE_OFFSET=$(stat -c %s "$LOG")
  start=$SECONDS
  timeout -k 10 "$t" "$@" >>"$LOG" 2>&1 </dev/null
  rc=$?
  DUR[$name]=$((SECONDS - start))
  case $rc in
    0) STATUS[$name]=ok ;;
    124|137) STATUS[$name]="TIMEOUT (${t}s)"; lines=40 ;;
    *) STATUS[$name]="FAILED (rc $rc)"; lines=60 ;;
  esac
  tail -c +$((STAGE_OFFSET + 1)) "$LOG" | tail -n "$lines"
  say "=== [$name] ${STATUS[$name]} in ${DUR[$name]}s"
  if [ "$rc" != 0 ]; then
    say "gpu-check: stage '$name' ${STATUS[$name]}: stopping here"
    summary 1
  fi
}
stage_output() { tail -c +$((STAGE_OFFSET + 1)) "$LOG"; }
PLANNED=""
planned() { # planned NAME WHAT...: what a GPU stage would run (--dry-run)
  local name=$1; shift
  STATUS[$name]=${STATUS[$name]:-planned}; say "=== [$name] on a device would run: $*"
  PLANNED+="$name: $*"$'\n'
}

# 1. configure, 2. build
run_stage configure cmake -S . -B "$BUILD" -G Ninja "${CONFIG_ARGS[@]}"
run_stage build cmake --build "$BUILD" -j "$JOBS" --target gpu_check_targets

# 3. GPU tests
if [ "$DRY" = 1 ]; then
  run_stage test ctest --test-dir "$BUILD" -N -L gpu
  TEST_COUNTS="$(stage_output | grep -c 'Test *#') labelled gpu (listed, not run)"
  planned test "ctest --test-dir $BUILD -L gpu -j $CTEST_J --output-on-failure --timeout <its share>"
else
  run_stage test ctest --test-dir "$BUILD" -L gpu -j "$CTEST_J" --output-on-failure \
    --timeout "$(stage_timeout test)"
  res=$(stage_output | grep -E '^ *[0-9]+/[0-9]+ Test +#[0-9]+: ')
  TEST_COUNTS="$(grep -c ' Passed ' <<<"$res") passed, $(grep -c 'Skipped' <<<"$res") skipped"
  TEST_COUNTS+=" ($(grep 'Skipped' <<<"$res" | sed -E 's/.*Test +#[0-9]+: ([^ ]+).*/\1/' | tr '\n' ' ' | sed 's/ $//'))"
  [ -n "$res" ] || { STATUS[test]="FAILED (no test ran)"; summary 1; }
  cp -f "$BUILD/Testing/Temporary/LastTest.log" "$OUT/ctest.log" 2>/dev/null
fi

# 4. decode benchmark
DECODE_ARGS=(--batches "$BATCHES" --contexts "$CONTEXTS" --gen "$GEN" ${HBM_GBS:+--hbm-gbs "$HBM_GBS"})
if [ "$DRY" = 1 ]; then
  run_stage gpu_decode "$BUILD/bin/gpu_decode" --plan "${DECODE_ARGS[@]}"
  STATUS[gpu_decode]="ok (--plan)"
  planned gpu_decode "$BUILD/bin/gpu_decode ${DECODE_ARGS[*]} --json \$OUT/gpu_decode.json"
else
  run_stage gpu_decode "$BUILD/bin/gpu_decode" "${DECODE_ARGS[@]}" --json "$OUT/gpu_decode.json"
fi

# 5. compute-sanitizer memcheck
export GC_BUILD=$BUILD GC_FILTER_BACKEND=$FILTER_BACKEND GC_FILTER_QUANT=$FILTER_QUANT \
  GC_FILTER_OPS=$FILTER_OPS
export GC_MEMCHECK="compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 20"
if [ "$DRY" = 1 ]; then
  # The tests each sanitizer run would cover (gtest lists them without a GPU); none is a failure.
  # shellcheck disable=SC2016
  run_stage memcheck bash -c 'set -o pipefail
    n1=$("$GC_BUILD/bin/cuda_backend_test" "--gtest_filter=$GC_FILTER_BACKEND" --gtest_list_tests | grep -c "^  ") &&
    n2=$("$GC_BUILD/bin/cuda_quant_test" "--gtest_filter=$GC_FILTER_QUANT" --gtest_list_tests | grep -c "^  ") &&
    n3=$("$GC_BUILD/bin/cuda_ops_test" "--gtest_filter=$GC_FILTER_OPS" --gtest_list_tests | grep -c "^  ") &&
    echo "cuda_backend_test: $n1 tests, cuda_quant_test: $n2 tests, cuda_ops_test: $n3 tests"'
  MEMCHECK_NOTE="would cover $(stage_output | grep '^cuda_backend_test: ' | tail -1)"
  STATUS[memcheck]="ok (listed)"
  planned memcheck "$GC_MEMCHECK $BUILD/bin/cuda_backend_test --gtest_filter='$FILTER_BACKEND';" \
    "the same for cuda_quant_test --gtest_filter='$FILTER_QUANT'" \
    "and cuda_ops_test --gtest_filter='$FILTER_OPS'"
elif ! skipped memcheck && ! command -v compute-sanitizer >/dev/null 2>&1; then
  STATUS[memcheck]="FAILED (compute-sanitizer not found)"; say "gpu-check: compute-sanitizer not found"
  summary 1
else
  # shellcheck disable=SC2016
  run_stage memcheck bash -c 'for t in "cuda_backend_test:$GC_FILTER_BACKEND" "cuda_quant_test:$GC_FILTER_QUANT" \
      "cuda_ops_test:$GC_FILTER_OPS"; do
      $GC_MEMCHECK "$GC_BUILD/bin/${t%%:*}" "--gtest_filter=${t#*:}" || exit; done'
  MEMCHECK_NOTE="cuda_backend_test / cuda_quant_test / cuda_ops_test: $(stage_output | grep 'ERROR SUMMARY' |
    sed 's/.*ERROR SUMMARY: //' | paste -sd/ | sed 's|/| / |g')"
fi

# 6. HF transformers (--hf), with python's own library path, at the first context.
if [ "$HF" = 1 ]; then
  hf_cmd=(env LD_LIBRARY_PATH="$ORIG_LD_LIBRARY_PATH" PYTHONUNBUFFERED=1 python3 bench/compare_hf.py
    --json "$OUT/hf.json" --batches "$BATCHES" --prompt "${CONTEXTS%%,*}" --gen "$GEN"
    --time-budget $((CAP[hf] - 30)))
  if [ "$DRY" = 1 ]; then planned hf "${hf_cmd[*]}"; else run_stage hf "${hf_cmd[@]}"; fi
fi

if [ "$DRY" = 1 ]; then
  say "gpu-check: dry run done: configure, build and listings ran here; on a device:" \
    "run(command=\"bash scripts/gpu-check.sh\", carry=[\".gpu-sysroot\"], timeout_s=480)"
fi
summary 0

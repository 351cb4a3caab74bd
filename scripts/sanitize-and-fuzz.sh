#!/usr/bin/env bash
# The sanitizer and fuzzing part of CI (.ci/run, after scripts/test.sh); docs/testing.md.
#  1. Configures a second build tree with clang-16, ASan + UBSan (any report stops the program:
#     -fno-sanitize-recover) and libFuzzer instrumentation, CUDA off, -O1.
#  2. Builds the CPU unit tests listed below and the fuzzers (tests/fuzz), nothing else: no
#     service binaries, no MPI tests. shardlm_coordinator compiles with clang's -Wthread-safety
#     as an error there (coordinator/CMakeLists.txt): its ABSL_GUARDED_BY annotations are checked.
#  3. Runs those unit tests under the sanitizers, and each fuzzer's seed corpus once.
#  4. Runs each fuzzer for FUZZ_SECONDS from its seed corpus (new inputs go to a scratch copy,
#     never into tests/fuzz/corpus) and prints its executions, exec/s and coverage. A crash, a
#     sanitizer report, a leak, a timeout or a broken invariant fails the script; the input is
#     left in $BUILD_DIR/fuzz-artifacts/.
# Environment: SAN_BUILD_DIR (default build-sanitize), FUZZ_SECONDS (45), JOBS (nproc),
# FUZZERS (default: all), SKIP_UNIT=1 (fuzzers only), SHARDLM_ASSETS as for scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${SAN_BUILD_DIR:-build-sanitize}
FUZZ_SECONDS=${FUZZ_SECONDS:-45}
JOBS=${JOBS:-$(nproc)}
FUZZERS=${FUZZERS:-"gguf safetensors config tokenizer chat_template request"}
export SHARDLM_ASSETS=${SHARDLM_ASSETS:-$(cd .. && pwd)/shared/assets}

# The CPU unit tests run under the sanitizers: every gtest binary without MPI, a GPU or a
# server process of its own, plus the in-process gRPC service test (a fake worker job over
# loopback). Left out: the MPI tests (mpirun's Open MPI runtime is not instrumented and leaks on
# purpose at exit; the code they reach is what these tests and the e2e tests cover), the CLI and
# e2e tests (they start the release binaries), the goldens (minutes at -O1 with ASan), CUDA.
UNIT_TARGETS=(check_test env_test quote_test model_io_test gguf_test tokenizer_test
  chat_template_test kernels_test quant_test sampler_test faulty_backend_test shard_plan_test
  coordinator_unit_test coordinator_service_test)
# ctest entries of those binaries (SEPARATE entries included) and the corpus replays.
UNIT_REGEX='^(check_test|env_test|quote_test|model_io_test|gguf_test|gguf_assets_test|gguf_smollm2_test|tokenizer_test|tokenizer_vectors_test|tokenizer_smollm2_test|chat_template_test|kernels_test|quant_test|sampler_test|faulty_backend_test|shard_plan_test|coordinator_unit_test|coordinator_smollm2_test|coordinator_service_test|coordinator_service_smollm2_test|fuzz_.*_corpus)$'

CC_BIN=${SAN_CC:-clang-16}
CXX_BIN=${SAN_CXX:-clang++-16}
launcher=()
if command -v ccache >/dev/null 2>&1 && [ "${SAN_CCACHE:-1}" = 1 ]; then
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi

start=$(date +%s)
cmake -S . -B "$BUILD_DIR" -G Ninja \
  -DCMAKE_C_COMPILER="$CC_BIN" -DCMAKE_CXX_COMPILER="$CXX_BIN" "${launcher[@]}" \
  -DSHARDLM_CUDA=OFF -DSHARDLM_SANITIZE=address,undefined -DSHARDLM_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" >/dev/null
fuzz_targets=()
for f in $FUZZERS; do fuzz_targets+=("fuzz_$f"); done
targets=("${fuzz_targets[@]}")
if [ "${SKIP_UNIT:-0}" != 1 ]; then targets+=("${UNIT_TARGETS[@]}"); fi
cmake --build "$BUILD_DIR" -j "$JOBS" --target "${targets[@]}"
built=$(date +%s)
echo "sanitize-and-fuzz: build took $((built - start)) s"

# halt_on_error: the first report ends the program with a failure. detect_leaks: LeakSanitizer
# at exit. UBSan's print_stacktrace names the call path.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

if [ "${SKIP_UNIT:-0}" != 1 ]; then
  ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" --timeout 900 -R "$UNIT_REGEX"
else
  ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" --timeout 900 -R '^fuzz_.*_corpus$'
fi
tested=$(date +%s)
echo "sanitize-and-fuzz: unit tests under ASan+UBSan took $((tested - built)) s"

artifacts="$BUILD_DIR/fuzz-artifacts"
mkdir -p "$artifacts"
summary=()
failed=()
for f in $FUZZERS; do
  bin="$BUILD_DIR/bin/fuzz_$f"
  seeds="tests/fuzz/corpus/$f"
  work="$BUILD_DIR/fuzz-corpus/$f"  # what this run adds; seeds stay untouched
  mkdir -p "$work"
  # -error_exitcode=1: libFuzzer's default for a crash (77) is the harnesses' "skipped".
  args=(-max_total_time="$FUZZ_SECONDS" -print_final_stats=1 -error_exitcode=1 -timeout=20
    -rss_limit_mb=3072
    -max_len=65536 -artifact_prefix="$artifacts/$f-")
  if [ -f "tests/fuzz/dict/$f.dict" ]; then args+=(-dict="tests/fuzz/dict/$f.dict"); fi
  log="$BUILD_DIR/fuzz-$f.log"
  echo "=== fuzz_$f: ${FUZZ_SECONDS} s from $(find "$seeds" -type f | wc -l) seeds"
  rc=0
  "$bin" "${args[@]}" "$work" "$seeds" >"$log" 2>&1 || rc=$?
  if [ "$rc" -eq 77 ]; then
    echo "fuzz_$f: skipped ($(tail -n 1 "$log"))"
    summary+=("fuzz_$f: skipped")
    continue
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -E '^#[0-9]+' "$log" | grep -oE 'cov: [0-9]+ ft: [0-9]+' | tail -n 1)
  corp=$(grep -E '^#[0-9]+' "$log" | grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' | tail -n 1)
  line="fuzz_$f: ${runs:-?} executions, ${rate:-?} exec/s, ${cov:-cov: ?}, ${corp:-corp: ?}"
  grep -E '^#[0-9]+ +(INITED|DONE)' "$log" || true
  echo "$line"
  summary+=("$line")
  if [ "$rc" -ne 0 ]; then
    echo "fuzz_$f FAILED (exit $rc); the end of its log ($log):"
    tail -n 60 "$log"
    failed+=("fuzz_$f")
  fi
done
end=$(date +%s)
echo "sanitize-and-fuzz: summary (build $((built - start)) s, unit tests $((tested - built)) s, fuzzing $((end - tested)) s)"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "sanitize-and-fuzz: FAILED: ${failed[*]} (inputs in $artifacts)"
  exit 1
fi
echo "sanitize-and-fuzz: passed"

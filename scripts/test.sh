#!/usr/bin/env bash
# Configure, build and run every test. Exits non-zero on any failure.
#   BUILD_DIR (default build), SHARDLM_CUDA (default AUTO), CMAKE_BUILD_TYPE (default RelWithDebInfo)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
# Tests that read external vectors find them here; they skip with a message when absent.
export SHARDLM_ASSETS=${SHARDLM_ASSETS:-$(cd .. && pwd)/shared/assets}

cmake -S . -B "$BUILD_DIR" -G Ninja \
  -DSHARDLM_CUDA="${SHARDLM_CUDA:-AUTO}" \
  -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}"
cmake --build "$BUILD_DIR" -j "$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" --timeout 900

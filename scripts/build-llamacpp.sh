#!/usr/bin/env bash
# Builds llama.cpp's own C++ `llama-server` and `llama-bench`, the reference for
# bench/compare_server.py and bench/compare_llamacpp.py, from the llama.cpp source vendored in the
# llama-cpp-python sdist on PyPI (pinned, so that figures name one llama.cpp).
#
# The tree lives outside the repository, in $LLAMACPP_REF_DIR (default /work/llama-cpp-ref).
# A no-op when both binaries exist. Prints, on its last two lines, the paths of llama-server and
# llama-bench; `--print-version` prints the pinned version and the llama.cpp commit and exits.
#
# Env: LLAMACPP_REF_DIR, LLAMA_CPP_PYTHON_VERSION (default 0.3.36), JOBS (default 2),
#      NICE (default 10), PYTHON (default python3).
set -euo pipefail

VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
REF_DIR=${LLAMACPP_REF_DIR:-/work/llama-cpp-ref}
JOBS=${JOBS:-2}
NICE=${NICE:-10}
PY=${PYTHON:-python3}

SRC=$REF_DIR/llama_cpp_python-$VERSION
LLAMA=$SRC/vendor/llama.cpp
BUILD=$LLAMA/build
SERVER=$BUILD/bin/llama-server
BENCH=$BUILD/bin/llama-bench

# The sdist carries no git metadata for the submodule; its CHANGELOG names the llama.cpp commit.
llama_commit() {
  sed -n "/^## \[$VERSION\]/,/^## \[/p" "$SRC/CHANGELOG.md" 2>/dev/null |
    grep -o 'llama\.cpp@[0-9a-f]\+' | head -1 | cut -d@ -f2 || true
}

if [ "${1:-}" = "--print-version" ]; then
  echo "llama-cpp-python $VERSION, llama.cpp ${LLAMA_COMMIT:-$(llama_commit)}"
  exit 0
fi

echo "build-llamacpp: llama-cpp-python $VERSION (sdist) in $REF_DIR" >&2

if [ -x "$SERVER" ] && [ -x "$BENCH" ]; then
  echo "build-llamacpp: llama.cpp $(llama_commit), binaries already built" >&2
  echo "$SERVER"
  echo "$BENCH"
  exit 0
fi

mkdir -p "$REF_DIR"
# One build at a time (a bench script may call this while another build runs): wait for it.
exec 9>"$REF_DIR/.build.lock"
flock 9
if [ -x "$SERVER" ] && [ -x "$BENCH" ]; then
  echo "$SERVER"
  echo "$BENCH"
  exit 0
fi
if [ ! -f "$LLAMA/CMakeLists.txt" ]; then
  tarball=$REF_DIR/llama_cpp_python-$VERSION.tar.gz
  if [ ! -f "$tarball" ]; then
    "$PY" -m pip download --no-binary :all: --no-deps --dest "$REF_DIR" \
      "llama-cpp-python==$VERSION" >&2
  fi
  tar -xzf "$tarball" -C "$REF_DIR"
fi
echo "build-llamacpp: llama.cpp $(llama_commit)" >&2

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi

# The ISA flags are fixed (not -march=native) so that the reference is the same on any AVX-512
# machine. AMX stays off: the figures compare AVX-512/VNNI code paths. Tests, examples, the web UI
# download and OpenSSL are not needed for the two binaries; static libraries keep them
# self-contained.
nice -n "$NICE" cmake -S "$LLAMA" -B "$BUILD" "${generator[@]}" "${launcher[@]}" \
  -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON \
  -DGGML_AMX_INT8=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF >&2
nice -n "$NICE" cmake --build "$BUILD" -j "$JOBS" --target llama-server llama-bench >&2

echo "$SERVER"
echo "$BENCH"

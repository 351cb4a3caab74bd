#!/usr/bin/env bash
# Installs what shardlm needs to build and test on a fresh Debian 12 machine.
# Idempotent: re-running it only re-checks. Python packages are for test references and the
# Python client (clients/python).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates python3 python3-pip
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenblas-dev nlohmann-json3-dev libpcre2-dev libcli11-dev
  libspdlog-dev libfmt-dev
  # The coordinator's OpenAI-compatible HTTP server (built with OpenSSL), its Prometheus metrics,
  # and openssl to make the TLS tests' certificates.
  libcpp-httplib-dev prometheus-cpp-dev libssl-dev openssl curl
  # The sanitizer and fuzzing build (scripts/sanitize-and-fuzz.sh): clang with its ASan, UBSan
  # and libFuzzer runtimes, and its OpenMP runtime (clang does not use gcc's libgomp headers).
  clang-16 libclang-rt-16-dev libomp-16-dev
  # The two-node tests on network namespaces (scripts/netns-cluster.sh) and the Slurm test
  # (scripts/slurm-test.sh: Debian's Slurm 22.05 with its PMIx plugin, and munge).
  iproute2 slurm-wlm munge
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all Debian packages present"
fi

# Python packages used by tests that compare against an outside reference (no torch needed in CI:
# HF goldens are committed; scripts/make-goldens.py needs torch+transformers and installs them itself).
PY=${PYTHON:-python3}
if ! "$PY" -c "import numpy" >/dev/null 2>&1; then
  "$PY" -m pip install -q numpy || echo "install-deps: warning: pip install numpy failed" >&2
fi
# The Python gRPC client (clients/python) and its end-to-end test: grpcio, grpcio-tools (protoc
# for Python, run at use time) and protobuf. Debian's own python3 refuses pip installs into the
# system (PEP 668); there the second try says it is fine.
if ! "$PY" -c "import grpc, grpc_tools, google.protobuf" >/dev/null 2>&1; then
  "$PY" -m pip install -q grpcio grpcio-tools protobuf ||
    "$PY" -m pip install -q --break-system-packages grpcio grpcio-tools protobuf ||
    echo "install-deps: warning: pip install grpcio grpcio-tools protobuf failed" >&2
fi
# The OpenAI-compatible HTTP API's tests use the official `openai` client; the metrics test parses
# /metrics with prometheus_client's own text parser.
if ! "$PY" -c "import openai, prometheus_client" >/dev/null 2>&1; then
  "$PY" -m pip install -q openai prometheus_client ||
    "$PY" -m pip install -q --break-system-packages openai prometheus_client ||
    echo "install-deps: warning: pip install openai prometheus_client failed" >&2
fi
echo "install-deps: done"

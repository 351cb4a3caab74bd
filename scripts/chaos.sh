#!/usr/bin/env bash
# Fault drills against a real one-node deployment (launch/one-node.sh with its supervised worker
# job), through the public gRPC API: kill -9 of a rank, a hung rank (SIGSTOP), a 30 s step, a
# stranger at the worker port, a 6,000-token prompt. Prints the results as JSON (detection and
# resume times, requests resumed and identical to an undisturbed run, processes left).
#
#   scripts/chaos.sh [--model PATH] [--tp 2] [--cases kill-rank1,hang-rank1,...] [--out FILE]
#
# Needs a build (build/bin, or --bin DIR) and the Python client's packages (scripts/install-deps.sh).
# See scripts/chaos.py --help for every case and option.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/chaos.py "$@"

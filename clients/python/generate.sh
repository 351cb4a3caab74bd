#!/usr/bin/env bash
# Generates the Python messages and gRPC stubs of proto/shardlm/v1/*.proto into
# clients/python/shardlm_client/_generated/ (not committed; the package also runs this step itself
# on first import when the files are missing or older than the .proto files).
# Needs: python3 -m pip install grpcio grpcio-tools protobuf   (scripts/install-deps.sh does it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
exec "$PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); from shardlm_client import _proto; print(_proto.generate(force=True))' "$here"

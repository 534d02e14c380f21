#!/usr/bin/env bash
# Create the virtualenv and install the pinned stack. Idempotent: pip runs only when a requirements file changed
# since the last install into that virtualenv.
#   bash scripts/setup.sh            # the stack this venv has (a new venv: the CPU stack, requirements.txt)
#   bash scripts/setup.sh cuda       # the CUDA stack (requirements-cuda.txt: unsloth, bitsandbytes, ...) and
#                                    # llama-cpp-python built with CUDA (scripts/llama_cuda.sh)
#   bash scripts/setup.sh dev        # + test deps (requirements-dev.txt), on the stack this venv has
#   bash scripts/setup.sh cuda dev   # both
# VENV picks another virtualenv (default: .venv in the checkout); PYTHON the interpreter for a new one (>= 3.11).
# The first install compiles llama-cpp-python from source (CPU: 10-16 min on 2 cores; CUDA: minutes on a GPU
# machine); pip caches the wheel, so later installs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
stack="" dev=""
for arg in "$@"; do
  case $arg in
    cpu|cuda) stack=$arg ;;
    dev) dev=1 ;;
    *) echo "usage: bash scripts/setup.sh [cpu|cuda] [dev]" >&2; exit 2 ;;
  esac
done
if ! [ -x "$VENV/bin/python" ]; then
  py=${PYTHON:-python3}
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $("$py" --version 2>&1) is too old: the pinned stack (numpy 2.4, pandas 3.1) needs Python >= 3.11;" \
         "set PYTHON=python3.11 (or newer)" >&2
    exit 2
  fi
  "$py" -m venv "$VENV"
fi
# A venv keeps the stack it was set up with: the CPU and CUDA stacks pin different torch and trl releases.
recorded=$(cat "$VENV/.stack" 2>/dev/null || true)
stack=${stack:-${recorded:-cpu}}
if [ -n "$recorded" ] && [ "$recorded" != "$stack" ]; then
  echo "error: $VENV holds the $recorded stack; use another VENV for the $stack stack (or remove $VENV)" >&2
  exit 2
fi
main=requirements.txt
[ "$stack" = cuda ] && main=requirements-cuda.txt
files="$main requirements-common.txt"
[ -n "$dev" ] && files="$files requirements-dev.txt"
stale=""
for f in $files; do
  [ "$(cat "$VENV/.installed-$f" 2>/dev/null)" = "$(sha256sum < "$f")" ] || stale="$stale $f"
done
[ -z "$stale" ] && exit 0
"$VENV/bin/python" -m pip install -q --upgrade pip
req="-r $main"
[ -n "$dev" ] && req="$req -r requirements-dev.txt"
if [ "$stack" = cpu ]; then
  # Portable llama.cpp CPU build (no -march=native) without the multimodal tool: the fastest build seen here.
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}"
fi
"$VENV/bin/python" -m pip install $req
if [ "$stack" = cuda ]; then
  bash scripts/llama_cuda.sh "$VENV/bin/python"
fi
echo "$stack" > "$VENV/.stack"
for f in $files; do sha256sum < "$f" > "$VENV/.installed-$f"; done

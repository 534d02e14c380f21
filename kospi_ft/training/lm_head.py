"""The LM head at label positions only, for SFT and DPO on the CPU.

TRL (1.16) computes both trainers' losses through its fused LM head (`add_fused_lm_head`): the backbone runs on the
whole row, then the 151,936-wide projection and the log-softmax run in tiles. On Triton devices (CUDA, XPU) it
projects only the positions that carry a label; elsewhere it projects every position, so that compiled tile shapes
stay fixed from batch to batch. Eager CPU compiles nothing, and the labels here are a minority of the tokens:
~21% of a Stage 2 row (a ~2,100-token prompt before a ~550-token answer), the completions of a DPO pair. Projecting
every position is then ~5x the LM-head work for the same log-probs.

On the CPU, TRL's tiles are also folded by a chain of small torch ops per vocabulary tile, and its backward pass
projects everything a second time: one projection and one log-softmax per label position, kept for the backward,
is half the CPU time for the same numbers (benchmarks/bench_lm_head.py). tests/test_training.py checks SFT and DPO
losses, gradients and logged metrics against TRL's own every-position path.
"""
from __future__ import annotations

import contextlib
from typing import Any

#: Label positions projected at once: 256 x 151,936 fp32 logits = 156 MB per tile (the log-probs of each tile are
#: kept for the backward pass, as any autograd log-softmax keeps them).
ROWS = 256


def label_log_probs(hidden, weight, bias, targets, temperature: float, chunk_size: int, softcap, logit_scale: float,
                    outputs: tuple[str, ...]) -> tuple[Any, ...]:
    """What TRL's `_ChunkedLogProbFunction.apply` returns for the positions in `hidden` (per-token log-prob of the
    target, and the requested metrics: entropy, log_sum_sq_probs, mean_logits, is_top1), with plain torch ops.

    Only `log_probs` carries a gradient: SFTTrainer and DPOTrainer (TRL 1.16) use the others as detached metrics,
    and a graph through the entropy would keep a second 151,936-wide tensor per position alive.
    """
    import torch
    import torch.nn.functional as F

    columns: dict[str, list] = {name: [] for name in ("log_probs", *outputs)}
    for start in range(0, hidden.shape[0], ROWS):
        logits = F.linear(hidden[start:start + ROWS], weight, bias).float()
        # Each of these is a full pass over 151,936 columns: skipped when it is the identity (Qwen2: all three).
        if logit_scale != 1.0:
            logits = logits * logit_scale
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        if temperature != 1.0:
            logits = logits / temperature
        logp = logits.log_softmax(-1)
        rows = targets[start:start + ROWS, None]
        columns["log_probs"].append(logp.gather(-1, rows).squeeze(-1))
        with torch.no_grad():
            if "entropy" in outputs:
                columns["entropy"].append(-(logp.exp() * logp).sum(-1))
            if "log_sum_sq_probs" in outputs:
                columns["log_sum_sq_probs"].append((2 * logp).logsumexp(-1))
            if "mean_logits" in outputs:
                columns["mean_logits"].append(logits.mean(-1))
            if "is_top1" in outputs:
                # TRL's rule: the target is the first maximum, which is what argmax returns.
                columns["is_top1"].append(logits.argmax(-1) == rows.squeeze(-1))
    empty = hidden.new_zeros(0, dtype=torch.float32)
    done = {k: torch.cat(v) if v else empty for k, v in columns.items()}
    return tuple(done.get(name) for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"))


class _LabelLogProbs:
    """Stands in for TRL's `_ChunkedLogProbFunction` on the CPU (its `apply` signature); elsewhere TRL's own."""

    def __init__(self, original):
        self.original = original

    def apply(self, hidden, *args):
        if hidden.device.type != "cpu":
            return self.original.apply(hidden, *args)
        return label_log_probs(hidden, *args)


@contextlib.contextmanager
def completion_only_scoring():
    """Make TRL's fused LM head project only the labelled positions on CPU too, with plain torch ops there (SFT and
    DPO, train and eval). A TRL without these hooks (`trl.trainer.utils._use_triton` / `_ChunkedLogProbFunction`,
    e.g. before the fused head) is left as it is."""
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        yield
        return
    use_triton = getattr(trl_utils, "_use_triton", None)
    kernel = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if use_triton is None or kernel is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or use_triton(device)
    trl_utils._ChunkedLogProbFunction = _LabelLogProbs(kernel)
    try:
        yield
    finally:
        trl_utils._use_triton = use_triton
        trl_utils._ChunkedLogProbFunction = kernel

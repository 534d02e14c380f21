"""The training layout: micro-batch and activation checkpointing, picked from the GPU's memory.

What is learned depends on the effective batch (micro-batch x grad_accum x processes = params.yaml's batch_size x
grad_accum), the data order and the schedule, not on how a step is split into micro-batches or whether activations
are recomputed: the Trainer normalises the loss over the whole effective batch and draws the same rows in the same
order whatever the micro-batch. The layout is therefore a speed/memory choice that may differ between cards, and
between a run and its resume (tests/test_layouts.py shows equal losses and adapters across layouts).

- `recipe` (train.layout; the embedded default): today's recipe, micro-batch = batch_size, checkpointing on the
  backend's default (unsloth: its offloaded recompute; hf on CUDA: recompute; CPU: none).
- `auto` (the real preset): the fastest layout whose predicted peak fits the card's memory (or
  `train.memory_limit_gib`), checked by one probe step (forward + backward of the largest micro-batch the data can
  produce) before training. An out-of-memory there falls back one notch on its own; after the last notch comes
  today's recipe, unprobed, so auto never stops a stage that the recipe would have trained. Without recomputation a QLoRA
  step costs ~4N FLOPs per token instead of ~6N: measured 1.41-1.56x unsloth's recipe on an H200 (issue table in
  README). The notches: at each micro-batch that divides the effective batch, checkpointing off if it fits, else the
  backend's checkpointing with as many layers as fit keeping their activations (`kept_layers`: those skip the
  recompute; unsloth's checkpoint_skip_layers), tried in the order of a speed model (`Shape.relative_speed`). When a
  later notch has a larger micro-batch than the winner, the two are raced: one more timed probe step each, and the
  faster one trains (H200, Stage 2 at 24 GiB: off fits only micro-batch 1).
- A stage's `micro_batch` / `checkpointing` pin the layout and win over both; a pinned checkpointing recomputes every
  layer.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from ..errors import ParamsError, PipelineError
from .distributed import LaunchParams, world_size

log = logging.getLogger(__name__)

Checkpointing = Literal["unsloth", "on", "off"]
GIB = 2**30

# The memory model, measured on an H200 (Qwen2.5-7B shape, QLoRA r32 on all 7 projections, unsloth, bf16,
# AdamW-8bit, seq 2048; benchmarks/results/h200-7b-auto-layout.jsonl): peak allocated at micro-batch 2 / 4 / 8 with
# checkpointing off 20.9 / 36.1 / 66.5 GiB, i.e. 3.8 MiB per token = ~6.3 bytes x layers x (hidden + intermediate)
# (every layer keeps its activations for the backward); with unsloth's offloaded recompute 7.2 -> 10.8 GiB from
# micro-batch 2 to 8, 0.29 MiB per token = ~13.5 bytes x (hidden + intermediate) (one layer's working set, the
# saved layer inputs sit in host memory). Plain recompute ("on") also keeps every layer's bf16 input on the GPU.
BYTES_PER_LAYER_UNIT_OFF = 6.3
BYTES_PER_UNIT_RECOMPUTE = 13.5
# Share of the card a prediction may fill, and a fixed reserve: CUDA context, allocator fragmentation, the
# evaluation forward and optimizer temporaries. At a 24 GiB cap this keeps the predicted peak at or below ~21.6 GiB.
FILL = 0.92
RESERVE_GIB = 0.5
# The speed model that orders the notches (same card, same runs): unsloth's recompute costs 0.41-0.42 of a step
# without it (14,939 / 10,563 tok/s at micro-batch 2, 16,444 / 11,551 at 8), prorated over the layers that recompute;
# and a micro-batch of t tokens feeds the GPU t / (t + 560) of its best (off at 4,096 / 8,192 / 16,384 tokens:
# 14,939 / 16,052 / 16,444 tok/s).
RECOMPUTE_COST = 0.41
FEED_TOKENS = 560


class TrainSetup(LaunchParams):
    """params.yaml `train`: processes, and how each training stage lays out its steps on the GPU."""

    layout: Literal["auto", "recipe"] = "recipe"
    # Memory the training stages may use on each GPU (GiB; the rest stays free for other processes). null: the card.
    memory_limit_gib: float | None = Field(None, gt=0)


@dataclass(frozen=True)
class Layout:
    """How one optimizer step is split on one process: micro_batch x grad_accum rows (pairs), checkpointing."""

    micro_batch: int
    grad_accum: int  # per process
    checkpointing: str
    chosen_by: str  # recipe | auto | pinned
    predicted_peak_gib: float | None = None
    budget_gib: float | None = None
    probe_peak_gib: float | None = None
    fallbacks: int = 0  # notches given up after an out-of-memory at the probe
    probe_tokens_per_s: float | None = None  # the timed probe step, when two layouts were raced
    rival: dict | None = None  # the raced layout that lost: micro_batch, checkpointing, probe_tokens_per_s
    kept_layers: int = 0  # with checkpointing unsloth|on: decoder layers that keep their activations (no recompute)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_checkpointing(backend: str, cuda: bool) -> str:
    """Today's recipe: unsloth's offloaded recompute; hf on CUDA: plain recompute; CPU (a tiny model): none."""
    if not cuda:
        return "off"
    return "unsloth" if backend == "unsloth" else "on"


def rows_per_process(batch_size: int, grad_accum: int, processes: int, where: str = "") -> int:
    """Rows (pairs) each process trains on per optimizer step."""
    from .distributed import per_process_grad_accum

    return batch_size * per_process_grad_accum(grad_accum, processes, key=f"{where}grad_accum")


def divisors(n: int) -> list[int]:
    """Micro-batches an effective batch of n splits into, largest first."""
    return [m for m in range(n, 0, -1) if n % m == 0]


@dataclass(frozen=True)
class Shape:
    """What the memory model needs about the model and the stage: tokens per row at most, model dimensions."""

    tokens_per_row: int  # SFT: max_seq_length; DPO: chosen + rejected, each up to max_seq_length
    layers: int
    hidden: int
    intermediate: int
    weights_bytes: float  # base weights as loaded + the trainable adapter, its gradients and optimizer state

    def activation_bytes_per_token(self, checkpointing: str, kept_layers: int = 0) -> float:
        unit = self.hidden + self.intermediate
        if checkpointing == "off":
            return BYTES_PER_LAYER_UNIT_OFF * self.layers * unit
        recomputed = self.layers - kept_layers
        on_gpu_inputs = 2 * recomputed * self.hidden if checkpointing == "on" else 0
        return BYTES_PER_UNIT_RECOMPUTE * unit + BYTES_PER_LAYER_UNIT_OFF * kept_layers * unit + on_gpu_inputs

    def predicted_peak(self, micro_batch: int, checkpointing: str, kept_layers: int = 0) -> float:
        return self.weights_bytes + micro_batch * self.tokens_per_row * self.activation_bytes_per_token(
            checkpointing, kept_layers)

    def most_kept_layers(self, micro_batch: int, checkpointing: str, usable: float) -> int:
        """The most layers (fewer than all) that may keep their activations under recompute within `usable`
        bytes; 0 when even a whole recompute does not fit."""
        fits = [k for k in range(self.layers) if self.predicted_peak(micro_batch, checkpointing, k) <= usable]
        return max(fits, default=0)

    def relative_speed(self, micro_batch: int, checkpointing: str, kept_layers: int = 0) -> float:
        """Tokens/s relative to a large micro-batch without recompute (the speed model above)."""
        tokens = micro_batch * self.tokens_per_row
        recomputed = 0 if checkpointing == "off" else self.layers - kept_layers
        return tokens / (tokens + FEED_TOKENS) / (1 + RECOMPUTE_COST * recomputed / self.layers)


def model_shape(config, *, tokens_per_row: int, load_in_4bit: bool, lora_rank: int, lora_modules,
                adapters: int = 1) -> Shape:
    """A Qwen2-like decoder's dimensions and the bytes its weights take on the GPU, from its config alone.

    4-bit NF4 linears: 0.5 byte per weight plus ~3% for the double-quantised absmax; embeddings and LM head bf16.
    LoRA: fp32 weights + fp32 gradients + AdamW-8bit's two 1-byte states; `adapters` > 1 adds frozen copies (DPO's
    reference adapter)."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    dims = {"q_proj": (h, heads * head_dim), "k_proj": (h, kv * head_dim), "v_proj": (h, kv * head_dim),
            "o_proj": (heads * head_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    linear = n * sum(a * b for a, b in dims.values())
    vocab = config.vocab_size
    embeddings = vocab * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    base = linear * (0.516 if load_in_4bit else 2.0) + embeddings * 2
    lora = n * lora_rank * sum(a + b for name, (a, b) in dims.items() if name in lora_modules)
    trainable = lora * (4 + 4 + 2) + (adapters - 1) * lora * 4
    return Shape(tokens_per_row=tokens_per_row, layers=n, hidden=h, intermediate=i, weights_bytes=base + trainable)


def budget_bytes(memory_limit_gib: float | None) -> float:
    """What this process may fill on its GPU: the card (or train.memory_limit_gib, enforced through the caching
    allocator) less what other processes hold."""
    import torch

    from .distributed import local_rank

    device = local_rank()
    free, total = torch.cuda.mem_get_info(device)
    usable = free + torch.cuda.memory_reserved(device)  # our own cache is ours to reuse
    if memory_limit_gib is not None:
        limit = memory_limit_gib * GIB
        if limit > total:
            raise ParamsError(f"params.yaml: train.memory_limit_gib is {memory_limit_gib}, more than the "
                              f"{total / GIB:.1f} GiB of GPU {device}")
        torch.cuda.set_per_process_memory_fraction(limit / total, device)
        usable = min(usable, limit)
    return usable


def candidates(*, rows: int, batch_size: int, setup: TrainSetup, micro_batch: int | None,
               checkpointing: str | None, backend: str, cuda: bool, shape: Shape | None = None,
               budget: float | None = None, where: str = "") -> list[Layout]:
    """The layouts to try in order; all but the recipe and a full pin are checked by a probe step before training.

    `rows`: rows (DPO: pairs) per optimizer step on this process. Pins (`micro_batch`, `checkpointing`) hold
    whatever the layout mode."""
    if micro_batch is not None and rows % micro_batch:
        raise ParamsError(f"params.yaml: {where}micro_batch is {micro_batch}, which does not divide the "
                          f"{rows} rows each process trains on per optimizer step (batch_size x grad_accum / "
                          f"processes); choose one of {divisors(rows)}")
    if checkpointing == "unsloth" and backend != "unsloth":
        raise ParamsError(f"params.yaml: {where}checkpointing is unsloth, but the backend is {backend}; "
                          f"use on or off")
    pinned = micro_batch is not None or checkpointing is not None
    if setup.layout == "recipe" or not cuda:
        m = micro_batch or batch_size
        mode = checkpointing or default_checkpointing(backend, cuda)
        return [Layout(m, rows // m, mode, "pinned" if pinned else "recipe")]
    if micro_batch is not None and checkpointing is not None:
        return [Layout(micro_batch, rows // micro_batch, checkpointing, "pinned")]
    modes = [checkpointing] if checkpointing else ["off", default_checkpointing(backend, cuda)]
    sizes = [micro_batch] if micro_batch else divisors(rows)
    usable = budget * FILL - RESERVE_GIB * GIB
    chosen_by = "pinned" if pinned else "auto"
    fitting, rest = [], []
    for m in sizes:
        for mode in modes:
            if mode != "off" and shape.predicted_peak(m, "off") <= usable and "off" in modes:
                continue  # every activation fits: no recompute at this micro-batch
            # auto's recompute keeps as many layers' activations as fit; a pinned checkpointing recomputes them all
            kept = shape.most_kept_layers(m, mode, usable) if mode != "off" and checkpointing is None else 0
            peak = shape.predicted_peak(m, mode, kept)
            layout = Layout(m, rows // m, mode, chosen_by, predicted_peak_gib=round(peak / GIB, 2),
                            budget_gib=round(budget / GIB, 2), kept_layers=kept)
            (fitting if peak <= usable else rest).append(layout)
    # Fastest first by the speed model (stable: at equal speed the larger micro-batch, then off).
    fitting.sort(key=lambda x: -shape.relative_speed(x.micro_batch, x.checkpointing, x.kept_layers))
    # Nothing predicted to fit: still probe the smallest layout (the model may be pessimistic).
    options = fitting or rest[-1:]
    if not pinned:
        # Last, unprobed: today's recipe, which ran before auto existed and is sized for a 24 GB card. Auto is never
        # worse than it: if every probe runs out of memory (a probe the backend runs differently from its training
        # loop included), the stage trains as it did without auto instead of stopping.
        m = batch_size
        options.append(Layout(m, rows // m, default_checkpointing(backend, cuda), "recipe",
                              budget_gib=round(budget / GIB, 2)))
    return options


@dataclass(frozen=True)
class Probe:
    """What one probe step measured: peak GiB allocated (0 without CUDA) and the tokens it trained on."""

    peak_gib: float
    tokens: int


def probe_step(trainer, micro_batch: int) -> Probe:
    """One forward + backward of the largest micro-batch the training data can produce (the `micro_batch` longest
    rows), without an optimizer step and with the RNG state restored.

    The gradients it leaves are dropped, so the first training step starts from the same state as without it."""
    import torch

    import numpy as np

    dataset = trainer.train_dataset
    lengths = _row_lengths(dataset)
    # Stable: among rows of equal length the first ones, so the same data probes the same rows.
    longest = np.argsort(-lengths, kind="stable")[:micro_batch]
    batch = trainer.data_collator([dataset[int(i)] for i in longest])
    model = trainer.model
    was_training = model.training
    _train_mode(model)
    cuda = torch.cuda.is_available()
    devices = [torch.cuda.current_device()] if cuda else []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        with torch.random.fork_rng(devices=devices):
            inputs = trainer._prepare_inputs(batch)
            autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and trainer.args.bf16
                        else contextlib.nullcontext())
            with autocast:
                loss = trainer.compute_loss(model, inputs)
            loss.backward()
            del loss, inputs
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    tokens = int(lengths[longest].sum())
    if not cuda:
        return Probe(0.0, tokens)
    torch.cuda.synchronize()  # the backward is asynchronous: a timed probe ends when the GPU is done
    peak = torch.cuda.max_memory_allocated() / GIB
    torch.cuda.reset_peak_memory_stats()
    return Probe(peak, tokens)


def _train_mode(model) -> None:
    """Training mode as the trainer's loop sets it. An unsloth model arms its layers' checkpointing only in
    FastLanguageModel.for_training (H200: a probe under plain model.train() ran without recompute, so every
    unsloth layout of Stage 2 at 16 GiB and DPO at 24 GiB ran out of memory while training fits in 8 GiB)."""
    if getattr(model, "_unsloth_gradient_checkpointing", None) is not None:
        from unsloth import FastLanguageModel

        FastLanguageModel.for_training(model)  # None: the mode get_peft_model was given
    else:
        model.train()


def row_lengths(dataset):
    """Token count of each row of a tokenized SFT dataset, as a numpy array, counted in Arrow (Stage 1 holds ~10^5
    rows) without reading them into Python lists."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_numpy(zero_copy_only=False)


def _row_lengths(dataset):
    """Tokens per training row (DPO: prompt + the longer answer) as a numpy array, from the tokenized columns."""
    import numpy as np

    if "input_ids" in dataset.column_names:
        return row_lengths(dataset)
    prompt, chosen, rejected = (np.asarray(x) for x in dpo_lengths(dataset))
    return prompt + np.maximum(chosen, rejected)


def dpo_lengths(dataset) -> tuple[list[int], list[int], list[int]]:
    """Prompt, chosen and rejected token counts of a tokenized DPO dataset (TRL 1.15/1.16: `prompt_ids`...;
    older: `prompt_input_ids`...)."""
    cols = dataset.column_names
    suffix = "_ids" if "prompt_ids" in cols else "_input_ids"
    return tuple([len(x) for x in dataset[f"{part}{suffix}"]] for part in ("prompt", "chosen", "rejected"))


def apply(trainer, layout: Layout) -> None:
    """Set a built trainer's micro-batch split (the dataloader is built at train(), from these arguments)."""
    trainer.args.per_device_train_batch_size = layout.micro_batch
    trainer.args.gradient_accumulation_steps = layout.grad_accum
    trainer.args.per_device_eval_batch_size = layout.micro_batch


def kept_layer_indices(layers: int, kept: int) -> list[int]:
    """Which decoder layers keep their activations: `kept` of `layers`, evenly spaced, as unsloth's
    skip_checkpointing picks them."""
    return [(k + 1) * layers // kept - 1 for k in range(kept)] if kept else []


def layout_callbacks(layout: Layout, backend: str) -> list:
    """What the Trainer needs to run `layout` beyond its arguments: on the hf backend, the kept layers (unsloth
    keeps them from the adapter's attachment on, see backends.attach_lora)."""
    if backend == "hf" and layout.checkpointing == "on" and layout.kept_layers:
        return [keep_activations_callback(layout.kept_layers)]
    return []


def keep_activations_callback(kept: int):
    """A TrainerCallback for the hf backend: the Trainer switches recompute on for every decoder layer when training
    starts (gradient_checkpointing_enable); this then lets `kept` of them keep their activations."""
    from transformers import TrainerCallback
    from transformers.modeling_layers import GradientCheckpointingLayer

    class KeepActivations(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            decoder = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
            for i in kept_layer_indices(len(decoder), kept):
                decoder[i].gradient_checkpointing = False

    return KeepActivations()


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def release(trainer) -> None:
    """Free a trainer's model and the GPU cache before the next notch builds another."""
    import torch

    if trainer is not None:
        trainer.model = trainer.model_wrapped = None
    gc.collect()
    if torch.cuda.is_available():
        _reset_unsloth_buffers()
        torch.cuda.empty_cache()


def _allocated_gib() -> float:
    import torch

    return torch.cuda.memory_allocated() / GIB if torch.cuda.is_available() else 0.0


def _reset_unsloth_buffers() -> None:
    """Free unsloth's offloaded-checkpointing GPU buffers (sized by the largest step seen), if it made any: its
    reset function raises NameError before the first checkpointed step (unsloth_zoo 2026.10) defines them."""
    import sys

    module = sys.modules.get("unsloth_zoo.gradient_checkpointing")
    if module is not None and getattr(module, "GPU_BUFFERS", None) is not None:
        module.reset_unsloth_gradient_checkpointing_buffers()


class _Built:
    """The trainer of one checkpointing mode and kept layers; a layout with others rebuilds it (unsloth applies
    checkpointing when the adapter is attached), a layout that only changes the micro-batch reuses it."""

    def __init__(self, build: Callable[[Layout], object]):
        self.build, self.trainer, self.mode = build, None, None

    def get(self, layout: Layout):
        mode = (layout.checkpointing, layout.kept_layers)
        if self.trainer is None or mode != self.mode:
            self.drop()
            self.trainer, self.mode = self.build(layout), mode
        apply(self.trainer, layout)
        return self.trainer

    def drop(self) -> None:
        if self.trainer is not None:
            release(self.trainer)
        self.trainer = self.mode = None


def _probe(probe, trainer, layout: Layout) -> Probe | None:
    """The probe's result, or None on an out-of-memory; any other error is raised."""
    try:
        return probe(trainer, layout.micro_batch)
    except Exception as err:  # noqa: BLE001 - only an out-of-memory moves on; anything else is raised
        if not is_out_of_memory(err):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
    # Outside the except clause, where the traceback (and the probe's tensors in its frames) is gone; unsloth's
    # checkpointing buffers, sized by the failed step, are reset too (release).
    release(None)
    log.warning("layout micro_batch %d, checkpointing %s: out of GPU memory at the probe step (%s); %.2f GiB still "
                "allocated; trying the next one", layout.micro_batch, layout.checkpointing, message, _allocated_gib())
    return None


def fit(build: Callable[[Layout], object], layouts: list[Layout], probe=probe_step, clock=time.perf_counter):
    """Build the trainer for the first layout whose probe step fits; returns (trainer, layout that runs).

    If a later notch has a larger micro-batch, the first of those is raced against it (a second, timed probe step
    each; the first one compiles and warms the kernels) and the faster one runs."""
    built = _Built(build)
    first = layouts[0]
    if first.chosen_by == "recipe" or (first.chosen_by == "pinned" and len(layouts) == 1):
        return built.get(first), first
    gave_up = 0

    def first_fit(options: list[Layout]) -> tuple[int, Layout | None]:
        nonlocal gave_up
        for n, layout in enumerate(options):
            if layout.chosen_by == "recipe":
                log.warning("every layout auto tried ran out of GPU memory at its probe step; training with today's "
                            "recipe: micro_batch %d, checkpointing %s", layout.micro_batch, layout.checkpointing)
                built.get(layout)
                return n, layout
            result = _probe(probe, built.get(layout), layout)
            if result is not None:
                return n, dataclasses.replace(layout, probe_peak_gib=round(result.peak_gib, 2))
            gave_up += 1
        return len(options), None

    def speed(layout: Layout) -> float:
        trainer = built.get(layout)
        start = clock()
        result = _probe(probe, trainer, layout)
        return 0.0 if result is None else result.tokens / max(clock() - start, 1e-9)

    n, winner = first_fit(layouts)
    if winner is None:
        built.drop()
        last = layouts[-1]
        raise PipelineError(f"out of GPU memory at micro_batch {last.micro_batch} with checkpointing "
                            f"{last.checkpointing} ({last.budget_gib} GiB usable): lower max_seq_length, or free "
                            f"the GPU")
    # One rival: the next notch with a larger micro-batch (each one tried costs a rebuild of the model).
    rivals = [x for x in layouts[n + 1:] if x.chosen_by != "recipe" and x.micro_batch > winner.micro_batch][:1]
    if rivals:
        winner_speed = speed(winner)
        _, rival = first_fit(rivals)
        if rival is not None:
            rival_speed = speed(rival)
            if rival_speed > winner_speed:
                winner, rival, winner_speed, rival_speed = rival, winner, rival_speed, winner_speed
            winner = dataclasses.replace(winner, rival={
                "micro_batch": rival.micro_batch, "checkpointing": rival.checkpointing,
                "kept_layers": rival.kept_layers, "probe_tokens_per_s": round(rival_speed)})
        winner = dataclasses.replace(winner, probe_tokens_per_s=round(winner_speed))
    layout = dataclasses.replace(winner, fallbacks=gave_up)
    trainer = built.get(layout)
    log.info("layout: micro_batch %d x grad_accum %d, checkpointing %s%s (%s; probe peak %.1f GiB, predicted "
             "%.1f of %.1f GiB%s)", layout.micro_batch, layout.grad_accum, layout.checkpointing,
             f", {layout.kept_layers} layers keep their activations" if layout.kept_layers else "", layout.chosen_by,
             layout.probe_peak_gib or 0, layout.predicted_peak_gib or 0, layout.budget_gib or 0,
             "" if layout.rival is None else
             f"; {layout.probe_tokens_per_s:.0f} tok/s against {layout.rival['probe_tokens_per_s']} tok/s at "
             f"micro_batch {layout.rival['micro_batch']}, checkpointing {layout.rival['checkpointing']}")
    return trainer, layout


def fitted(build: Callable[[Layout], object], layouts: list[Layout], checkpoint_dir: Path,
           resume_from: str | None):
    """`fit`, with the layout that runs kept on `trainer.layout` (the metrics report it) and recorded in the
    checkpoint dir's config from the step the session starts at."""
    from .checkpoints import step_of

    trainer, layout = fit(build, layouts)
    trainer.layout = layout
    record(checkpoint_dir, layout, 0 if resume_from is None else step_of(resume_from))
    return trainer


def plan(params, *, setup: TrainSetup, section: str, backend: str, model_name: str, load_in_4bit: bool,
         revision: str | None, lora_rank: int, lora_modules, tokens_per_row: int, adapters: int = 1) -> list[Layout]:
    """The layouts a training stage tries, from its params, the train section and (auto on CUDA) the memory model."""
    from . import backends

    cuda = backends.cuda_available()
    rows = rows_per_process(params.batch_size, params.grad_accum, world_size(), where=f"{section}.")
    shape = budget = None
    if cuda and setup.memory_limit_gib is not None:
        budget = budget_bytes(setup.memory_limit_gib)  # enforced in every layout mode
    if setup.layout == "auto" and cuda and not (params.micro_batch and params.checkpointing):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_name, revision=revision)
        shape = model_shape(config, tokens_per_row=tokens_per_row, load_in_4bit=load_in_4bit, lora_rank=lora_rank,
                            lora_modules=lora_modules, adapters=adapters)
        budget = budget or budget_bytes(None)
    return candidates(rows=rows, batch_size=params.batch_size, setup=setup, micro_batch=params.micro_batch,
                      checkpointing=params.checkpointing, backend=backend, cuda=cuda, shape=shape, budget=budget,
                      where=f"{section}.")


def record(checkpoint_dir: Path, layout: Layout, step: int) -> None:
    """Add the layout that runs from `step` to the checkpoint dir's config (outside its fingerprint): a resume on
    another card may run another layout, and the record says which steps ran how."""
    from .. import atomic
    from .checkpoints import FINGERPRINT_FILE
    from .distributed import is_main

    file = Path(checkpoint_dir) / FINGERPRINT_FILE
    if not is_main() or not file.is_file():  # no checkpoint dir prepared: a trainer built outside a stage
        return
    config = json.loads(file.read_text(encoding="utf-8"))
    config.setdefault("layouts", []).append({"from_step": step, **layout.as_dict()})
    atomic.write_json(file, config)

"""Supervised fine-tuning for Stage 1 (finance instructions) and Stage 2 (synthetic strategy tasks).

One module, two params sections (`stage1`, `stage2`), as alignment-handbook's sft.py runs several recipes.
- TRL SFTTrainer with packing. Default `bfd` (best-fit decreasing, padding-free): a batch is one row of whole
  documents, each with its own position_ids, and attention never crosses a document boundary: transformers'
  sdpa path (CPU, hf backend) builds a block-diagonal mask from the position_ids (only without a KV cache, and
  SFTTrainer runs the forward with use_cache=False; tested in tests/test_training.py); unsloth runs its packed
  attention (checked on an H200: document B's logits packed after A equal B's alone, max diff 0.0, versus 1.9
  with one continuous position range). `wrapped` trades that exactness for fixed full rows (see SFTParams).
- Loss on assistant tokens only, from the chat template's {% generation %} markers.
- Cosine schedule with 10% warmup; AdamW 8-bit on CUDA, torch AdamW on CPU; fp32 on CPU. The LM head projects only
  the answer positions on CPU too (`lm_head.completion_only_scoring`).
- Stage 2 continues the Stage 1 adapter (trainable); `skip_stage1` starts a fresh adapter on the base.
- A held-out split (Stage 1: stage1_data's eval slice, Stage 2: the synthetic eval set) is packed the same way and
  scored every `eval_steps` and after the last step (eval_loss in the curves and the metrics); optional early
  stopping keeps the best checkpoint.
Raises DataValidationError when no assistant token survives truncation (training would run with loss 0).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal

from ..errors import DataValidationError
from ..jsonl import read_jsonl
from . import backends, checkpoints, layouts
from .backends import LoraParams
from .common import (RunInfo, RunPaths, Timer, TrainParams, check_messages, held_out_slice, learning_params,
                     recipe_layout, restore_trained_adapter, run_summary, trainer_arguments, training_callbacks,
                     write_outputs)
from .layouts import Layout, TrainSetup, row_lengths
from .lm_head import completion_only_scoring

log = logging.getLogger(__name__)


class SFTParams(TrainParams, LoraParams):
    """params.yaml `stage1` (and the base of `stage2`)."""

    # bfd: exact (documents never attend to each other), rows of varying length; unsloth runs one attention call
    #   per document unless it has a varlen kernel (flash-attn, xformers or torch >= 2.12). Measured 7B QLoRA, H200,
    #   torch 2.11, seq 2048 x 2, ga 8, unsloth: 7.5-8.1k tok/s (raw unsloth loop 10.2-10.6k).
    # wrapped: concatenate and cut into full fixed rows, plain causal attention: 10.5-11.1k tok/s on the same card
    #   (raw unsloth 10.4-10.5k in the same calls), but attention crosses document boundaries (separated by
    #   <|im_end|>) and an answer can be cut in two. The short tail rows are dropped (see full_rows_only) and the
    #   rows are batched as bs x seq (see row_batches).
    packing_strategy: Literal["bfd", "wrapped"] = "bfd"


class Stage2Params(SFTParams):
    """params.yaml `stage2`: like Stage 1, plus whether to start from the base instead of the Stage 1 adapter."""

    skip_stage1: bool = False


def load_conversations(path: Path) -> list[dict]:
    """Chat records `{"messages": [...], ...}` -> `{"messages": [...]}` with at least one assistant turn."""
    out = []
    for n, record in read_jsonl(path, what="training data", hint="run the stage that writes it first"):
        messages = check_messages(record.get("messages"), f"{path}:{n}: messages")
        if not any(m["role"] == "assistant" for m in messages):
            raise DataValidationError(f"{path}:{n}: messages: no assistant turn to learn from")
        out.append({"messages": messages})
    return out


def count_label_tokens(dataset) -> tuple[int, int]:
    """(loss tokens, all tokens) in the tokenized, truncated, packed training set.

    TRL (1.15, 1.16) folds the template's assistant mask into a `labels` column (-100 = no loss) before packing.
    Counted in Arrow: the real preset's Stage 1 holds ~10^8 tokens.
    """
    import pyarrow.compute as pc

    total = int(row_lengths(dataset).sum())
    table = dataset.with_format("arrow")
    if "labels" in dataset.column_names:
        labels = pc.sum(pc.not_equal(pc.list_flatten(table["labels"]), -100)).as_py() or 0
    elif "assistant_masks" in dataset.column_names:
        labels = pc.sum(pc.list_flatten(table["assistant_masks"])).as_py() or 0
    else:
        labels = total
    return int(labels), total


def build_sft_trainer(params: SFTParams, *, model_name: str, backend: str, load_in_4bit: bool, data: list[dict],
                      init_adapter: Path | None, paths: RunPaths, callbacks=(), eval_data: list[dict] | None = None,
                      resume: bool = False, revision: str | None = None, layout: Layout | None = None):
    """The model with its adapter and a configured SFTTrainer (not yet trained); `eval_data`: the held-out split,
    `resume`: dvclive continues the curves of the interrupted run; `layout`: micro-batch and checkpointing
    (default: the recipe)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    layout = layout or recipe_layout(params, backend)
    model, tokenizer = backends.load_base(model_name, backend, params.max_seq_length, load_in_4bit, revision,
                                          checkpointing=layout.checkpointing)
    if init_adapter is not None:
        found = backends.adapter_config(init_adapter)
        if found.get("r") != params.lora_rank:
            log.warning("lora_rank=%s ignored: continuing the adapter in %s, which has rank %s",
                        params.lora_rank, init_adapter, found.get("r"))
        model = backends.load_adapter(model, init_adapter, backend, trainable=True,
                                      checkpointing=layout.checkpointing, kept_layers=layout.kept_layers)
    else:
        model = backends.attach_lora(model, params, backend, params.seed, checkpointing=layout.checkpointing,
                                     kept_layers=layout.kept_layers)

    args = SFTConfig(
        **trainer_arguments(params, backend, paths.checkpoint_dir, evaluate=bool(eval_data), layout=layout),
        max_length=params.max_seq_length,
        packing=True,
        packing_strategy=params.packing_strategy,
        assistant_only_loss=True,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(data),
                         eval_dataset=Dataset.from_list(eval_data) if eval_data else None, processing_class=tokenizer,
                         callbacks=training_callbacks(params, paths.live_dir, resume, callbacks)
                         + layouts.layout_callbacks(layout, backend))
    if params.packing_strategy == "wrapped":
        # The Trainer builds its dataloader from train_dataset and data_collator at train(), after TRL prepared
        # (tokenized, packed and shuffled) the data here in __init__.
        trainer.train_dataset = full_rows_only(trainer.train_dataset, params.max_seq_length, params.batch_size)
        trainer.data_collator = row_batches(trainer.data_collator)
    return trainer


def row_batches(collator):
    """TRL's collator, batching wrapped rows as bs x seq with an attention mask instead of one padding-free row.

    Unsloth switches padding-free collation on for every packing strategy: a micro-batch becomes one 1 x (bs * seq)
    row with per-row segments. Wrapped rows are the segments, so that buys nothing and runs slower. Measured (7B
    QLoRA, H200, unsloth, Stage 1 real preset, 16 steps, one call): 10,008 tok/s packed vs 10,968 as rows; raw
    unsloth loop 10,392. dataclasses.replace builds a fresh collator, without the torch_call wrapper unsloth sets
    on the instance. Rows shorter than seq (kept when data is tiny) are padded and masked.
    """
    return dataclasses.replace(collator, padding_free=False, return_position_ids=False)


def full_rows_only(dataset, length: int, min_rows: int):
    """Drop the rows shorter than `length` from a wrapped-packed dataset (TRL leaves one per packing batch: the tail
    of that batch's concatenation), unless fewer than `min_rows` full rows would be left.

    Every micro-batch then has one shape. Measured (7B QLoRA, H200, unsloth, bs 2 x ga 8, seq 2048, 1,800 records,
    one call): 9.2k tok/s with the short rows (8 of 1,084 rows; 7 batch shapes in 24 optimizer steps) vs 10.1k
    without them; raw unsloth loop 10.2k.
    """
    import numpy as np

    lengths = row_lengths(dataset)
    full = np.flatnonzero(lengths == length)
    if len(full) == len(lengths) or len(full) < min_rows:
        return dataset
    log.info("wrapped packing: dropped %d partial rows (%d tokens of %d) so every batch has %d-token rows",
             len(lengths) - len(full), int(lengths.sum() - length * len(full)), int(lengths.sum()), length)
    return dataset.select(full)


def train_sft(params: SFTParams, *, stage: str, model_name: str, backend: str, load_in_4bit: bool,
              data_path: Path, init_adapter: Path | None, paths: RunPaths, callbacks=(),
              eval_path: Path | None = None, restart: bool = False, revision: str | None = None,
              setup: TrainSetup | None = None) -> dict:
    """Train one SFT stage (scoring the held-out split in `eval_path`, if given) and write adapter, metrics and
    curves. Returns the metrics.

    Resumes from the newest complete checkpoint of the same run (see `checkpoints`); `restart` starts over.
    `setup`: params.yaml `train` (the layout: see `layouts`)."""
    data = load_conversations(data_path)
    eval_data = held_out_slice(load_conversations(eval_path) if eval_path is not None else None, params)
    resolved = {
        "stage": stage, "backend": backend, "base_model": model_name, "revision": revision,
        "load_in_4bit": load_in_4bit, "init_adapter": None if init_adapter is None else str(init_adapter),
        "data": str(data_path), "records": len(data), "eval_data": None if eval_path is None else str(eval_path),
        "eval_records": len(eval_data or ()), "params": params.model_dump(mode="json"),
    }
    resume_from = checkpoints.prepare_on_all_ranks(paths.checkpoint_dir, checkpoints.run_config(
        stage=stage, backend=backend, base_model=model_name, revision=revision, load_in_4bit=load_in_4bit,
        params=learning_params(params),
        inputs=[data_path] + [p for p in (eval_path, init_adapter) if p is not None]), restart=restart)
    backends.reset_peak_memory()
    trainer = build_fitted(params, stage=stage, setup=setup, model_name=model_name, backend=backend,
                           load_in_4bit=load_in_4bit, data=data, init_adapter=init_adapter, paths=paths,
                           callbacks=callbacks, eval_data=eval_data, resume_from=resume_from, revision=revision)
    label_tokens, total_tokens = count_label_tokens(trainer.train_dataset)
    labelled = [(data_path, label_tokens)]
    if trainer.eval_dataset is not None:
        labelled.append((eval_path, count_label_tokens(trainer.eval_dataset)[0]))
    for path, labels in labelled:
        if labels == 0:
            raise DataValidationError(
                f"{path}: no assistant token is left within max_seq_length={params.max_seq_length} "
                "(prompts longer than the limit?); its loss would be 0. Raise max_seq_length.")
    rows = len(trainer.train_dataset)
    restore_trained_adapter(trainer, resume_from)  # a no-op for one adapter (see there)
    with Timer() as timer, completion_only_scoring():
        result = trainer.train(resume_from_checkpoint=resume_from)
    info = RunInfo(stage=stage, backend=backend, base_model=model_name,
                   init_adapter=None if init_adapter is None else str(init_adapter))
    metrics = summarize(trainer, result, timer.seconds, params, rows, total_tokens, label_tokens, info,
                        resume_from)
    write_outputs(trainer, paths, resolved, metrics)
    return metrics


def build_fitted(params: SFTParams, *, stage: str, setup: TrainSetup | None, model_name: str, backend: str,
                 load_in_4bit: bool, data: list[dict], init_adapter: Path | None, paths: RunPaths, callbacks=(),
                 eval_data: list[dict] | None = None, resume_from: str | None = None, revision: str | None = None):
    """`build_sft_trainer` with the layout train.layout picks (probed on CUDA), recorded on `trainer.layout` and in
    the checkpoint dir's config."""
    rank = backends.adapter_config(init_adapter).get("r", params.lora_rank) if init_adapter else params.lora_rank
    options = layouts.plan(params, setup=setup or TrainSetup(), section=stage, backend=backend,
                           model_name=model_name, load_in_4bit=load_in_4bit, revision=revision, lora_rank=rank,
                           lora_modules=params.target_modules, tokens_per_row=params.max_seq_length)
    return layouts.fitted(lambda layout: build_sft_trainer(
        params, model_name=model_name, backend=backend, load_in_4bit=load_in_4bit, data=data,
        init_adapter=init_adapter, paths=paths, callbacks=callbacks, eval_data=eval_data,
        resume=resume_from is not None, revision=revision, layout=layout), options, paths.checkpoint_dir,
        resume_from)


def summarize(trainer, result, seconds: float, params: TrainParams, rows: int, total_tokens: int,
              label_tokens: int, info: RunInfo, resume_from: str | None) -> dict:
    """The common run summary plus how well packing filled the rows."""
    return {
        **run_summary(trainer, result, seconds, info, resume_from),
        "packed_rows": rows,
        # Share of a packed row's capacity filled with real tokens, and of those the assistant (loss) tokens.
        "packing_fill": round(total_tokens / (rows * params.max_seq_length), 4),
        "label_token_fraction": round(label_tokens / total_tokens, 4),
    }

"""What SFT and DPO share: the training params, TRL/transformers arguments, dvclive logging, outputs.

Checkpoints (resume by default, moved aside instead of deleted, verified before use) are `checkpoints.py`'s.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from .. import atomic
from ..errors import DataValidationError
from ..params import Section
from . import backends, checkpoints, distributed

if TYPE_CHECKING:
    from .layouts import Layout

log = logging.getLogger(__name__)


class TrainParams(Section):
    """Optimisation settings every training stage has (spec flags: --epochs --lr --batch-size --max-seq-length)."""

    epochs: float = Field(gt=0)
    max_steps: int = -1  # > 0 caps the run (the embedded preset trains a few steps); -1 = whole epochs
    lr: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    grad_accum: int = Field(1, gt=0)
    # The effective batch is batch_size x grad_accum; how a step is split (micro-batch, activation checkpointing)
    # is train.layout's choice unless pinned here (see kospi_ft.training.layouts). null = the layout decides.
    micro_batch: int | None = Field(None, gt=0)
    checkpointing: Literal["unsloth", "on", "off"] | None = None
    max_seq_length: int = Field(ge=32)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    logging_steps: int = Field(1, gt=0)
    save_steps: int = Field(500, gt=0)
    save_total_limit: int = Field(2, gt=0)
    seed: int = 42
    # The held-out split is scored every eval_steps optimizer steps and after the last one (eval_loss; DPO: eval
    # rewards/accuracies/margins): a forward per record, see eval_samples.
    eval_steps: int = Field(500, gt=0)
    # Records (DPO: pairs) of the held-out split each evaluation scores, the first N in file order; null = all.
    # Each one is a forward pass (DPO: two answers, policy and reference), so the embedded preset scores a slice.
    eval_samples: int | None = Field(None, gt=0)
    # Stop after this many evaluations without a lower eval_loss, and keep the best checkpoint as the stage's
    # output (transformers' EarlyStoppingCallback + load_best_model_at_end). null = off: train every step.
    early_stopping_patience: int | None = Field(None, gt=0)

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        # transformers reads any max_steps <= 0 as "epochs decide": 0 or -5 would quietly train whole epochs.
        if value != -1 and value < 1:
            raise ValueError("must be a positive step count, or -1 to train whole epochs")
        return value

    @model_validator(mode="after")
    def _best_checkpoint_is_saved(self):
        # The best model is reloaded from a checkpoint, so every evaluated step must also be a saved one.
        if self.early_stopping_patience is not None and self.save_steps % self.eval_steps:
            raise ValueError(f"early_stopping_patience needs save_steps ({self.save_steps}) to be a multiple of "
                             f"eval_steps ({self.eval_steps}): the best checkpoint is reloaded from disk")
        return self


@dataclass(frozen=True)
class RunPaths:
    """Where one training stage reads its init adapter and writes adapter, checkpoints and metrics."""

    output_dir: Path  # the adapter (+ tokenizer + resolved_config.json)
    checkpoint_dir: Path  # persisted across runs for resume
    metrics_file: Path  # final numbers, JSON
    live_dir: Path | None  # dvclive curves; None = none (benchmarks on a machine without dvclive)


@dataclass
class RunInfo:
    """Facts about the run that go into resolved_config.json and the metrics."""

    stage: str
    backend: str
    base_model: str
    init_adapter: str | None


def held_out_slice(records: list[dict] | None, params: TrainParams) -> list[dict] | None:
    """The part of the held-out split the evaluations score (`eval_samples`)."""
    return None if records is None else records[:params.eval_samples]


def check_messages(messages: Any, where: str, roles=("system", "user", "assistant")) -> list[dict]:
    """Keep only role/content of each message; the rest of a record (source, task, meta) is not trained on."""
    if not isinstance(messages, list) or not messages:
        raise DataValidationError(f"{where}: expected a non-empty list of messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in roles or not isinstance(m.get("content"), str):
            raise DataValidationError(f"{where}[{i}]: expected {{'role': one of {list(roles)}, 'content': str}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


#: Params that choose how a step is laid out, not what it learns: outside the checkpoint fingerprint, so a resume
#: on another card with another layout continues the run (see kospi_ft.training.layouts).
LAYOUT_KEYS = ("micro_batch", "checkpointing")


def learning_params(params: TrainParams) -> dict:
    """The stage's params that decide what is learned (the checkpoint fingerprint's part)."""
    return params.model_dump(mode="json", exclude=set(LAYOUT_KEYS))


def trainer_arguments(params: TrainParams, backend: str, checkpoint_dir: Path, evaluate: bool = False,
                      layout: "Layout | None" = None) -> dict:
    """transformers/TRL arguments shared by SFTConfig and DPOConfig; `evaluate`: a held-out split is given;
    `layout`: micro-batch, grad_accum and checkpointing (default: the recipe)."""
    if layout is None:
        layout = recipe_layout(params, backend)
    cuda = backends.cuda_available()
    if params.early_stopping_patience is not None and not evaluate:
        raise DataValidationError("early_stopping_patience is set, but the stage has no held-out split to stop on")
    best = params.early_stopping_patience is not None
    return dict(
        output_dir=str(checkpoint_dir),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        # micro-batch x grad_accum per process x processes = batch_size x grad_accum at any layout and world size.
        per_device_train_batch_size=layout.micro_batch,
        gradient_accumulation_steps=layout.grad_accum,
        # LoRA trains every adapter it holds: no unused parameters for DDP to look for (that search costs a pass).
        ddp_find_unused_parameters=False,
        learning_rate=params.lr,
        lr_scheduler_type="cosine",
        # transformers 5 dropped warmup_ratio: a float below 1 in warmup_steps is read as the ratio.
        warmup_steps=params.warmup_ratio,
        # 8-bit AdamW states save ~2 bytes/param of VRAM; on CPU bitsandbytes may be absent, so plain AdamW.
        optim="adamw_8bit" if cuda else "adamw_torch",
        weight_decay=0.0,
        bf16=cuda,
        fp16=False,
        # unsloth applied the layout's checkpointing in get_peft_model; the HF backend turns recompute on here.
        gradient_checkpointing=backend == "hf" and layout.checkpointing == "on",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=params.logging_steps,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=params.save_total_limit,
        # The held-out split: every eval_steps and after the last step (the Trainer adds that one itself).
        eval_strategy="steps" if evaluate else "no",
        eval_steps=params.eval_steps,
        per_device_eval_batch_size=layout.micro_batch,
        load_best_model_at_end=best,
        metric_for_best_model="eval_loss" if best else None,
        greater_is_better=False if best else None,
        seed=params.seed,
        data_seed=params.seed,
        report_to="none",  # dvclive is attached as a callback with its output dir (see live_callback)
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        use_cpu=not cuda,
        disable_tqdm=False,
        # Counts the tokens each step trains on (padding excluded) for tokens/s; unsloth's trainers drop TRL's own
        # num_tokens log. Costs one scalar device sync per micro-batch.
        include_num_input_tokens_seen="non_padding",
    )


def recipe_layout(params: TrainParams, backend: str) -> "Layout":
    """Today's recipe (micro-batch = batch_size, the backend's checkpointing), pins applied."""
    from .layouts import TrainSetup, candidates, rows_per_process

    rows = rows_per_process(params.batch_size, params.grad_accum, distributed.world_size())
    return candidates(rows=rows, batch_size=params.batch_size, setup=TrainSetup(), micro_batch=params.micro_batch,
                      checkpointing=params.checkpointing, backend=backend, cuda=backends.cuda_available())[0]


def training_callbacks(params: TrainParams, live_dir: Path | None, resume: bool, extra=()) -> list:
    """dvclive curves (continued when the run resumes), checkpoint manifests, early stopping when asked, and the
    caller's callbacks."""
    callbacks = [] if live_dir is None else [live_callback(live_dir, resume)]
    callbacks.append(checkpoints.manifest_callback())
    if params.early_stopping_patience is not None:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience))
    return callbacks + list(extra)


def live_callback(live_dir: Path, resume: bool):
    """A TrainerCallback logging every `logs` entry (loss, learning_rate, grad_norm, DPO rewards...) to dvclive curves
    under `live_dir` (plots/metrics/train/*.tsv + metrics.json), which dvc.yaml declares as plots and metrics.

    This is what report_to="dvclive" does, minus dvclive's own DVC integration: that one runs `dvc init` in a repo
    without DVC, fails in a git repo without commits, and would add a second copy of our plots to dvc.yaml.
    A resumed run writes the curves up to its checkpoint again from the checkpoint's own log history (the rows an
    uninterrupted run would have), then continues them. So the curves need not survive the interrupted run: DVC
    may delete them before rerunning the stage, and since they are not `persist` outs DVC's run cache holds the
    stage, so a deleted adapter whose inputs did not change is restored instead of trained again.
    """
    from dvclive import Live
    from transformers import TrainerCallback

    class _CurvesOnlyLive(Live):
        def _init_dvc(self):  # no experiment/dvc.yaml handling: the pipeline's dvc.yaml owns the outputs
            pass

    class _LiveCurves(TrainerCallback):
        def __init__(self):
            # Rank 0 alone writes the curves (another rank's Live would clean or append to the same files).
            # A fresh dir every time (resume=False clears it): a resumed run replays its checkpoint's history.
            self.live = (_CurvesOnlyLive(dir=str(live_dir), resume=False, dvcyaml=None, save_dvc_exp=False,
                                         report=None) if distributed.is_main() else None)

        def on_train_begin(self, args, state, control, **kwargs):
            if resume and self.live is not None:
                # The Trainer loaded the checkpoint's state: every entry logged up to it, each with its step.
                for entry in state.log_history:
                    if entry.get("step", 0) <= state.global_step:
                        self._log(entry.get("step", 0), entry, state)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.live is not None and logs:
                self._log(state.global_step, logs, state)

        def _log(self, step, logs, state):
            self.live.step = step
            for key, value in logs.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step") and not _not_a_curve(key):
                    self.live.log_metric(curve_name(key), value)
            self.live.log_metric("epoch", logs.get("epoch", state.epoch or 0), plot=False)
            self.live.next_step()

        def on_train_end(self, args, state, control, **kwargs):
            if self.live is not None:
                self.live.end()

    return _LiveCurves()


def curve_name(key: str) -> str:
    """The dvclive curve of a Trainer log key: eval_loss -> eval/loss, eval_rewards/margins -> eval/rewards/margins,
    loss -> train/loss; DPO's train-time rewards/margins keeps its own folder."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    return key if "/" in key else f"train/{key}"


def _not_a_curve(key: str) -> bool:
    """Eval entries that measure no learning: timings (eval_runtime, eval_samples_per_second, ...) and TRL's
    eval_num_tokens (the training token count, repeated)."""
    return key.startswith("eval_") and (key.endswith("_runtime") or key.endswith("_per_second")
                                        or key == "eval_num_tokens")


def final_eval(trainer) -> dict:
    """The eval_* log entry of the model the stage saves: the best step's under early stopping, else the last step's
    (the Trainer evaluates after the last step). Empty without an eval split."""
    state = trainer.state
    best = trainer.args.load_best_model_at_end and state.best_global_step
    step = state.best_global_step if best else state.global_step
    for entry in reversed(state.log_history):
        if entry.get("step") == step and "eval_loss" in entry:
            kept = {k: v for k, v in entry.items() if k.startswith("eval_") and not _not_a_curve(k)}
            return {"eval_step": step, **kept}
    return {}


def tokens_seen(trainer) -> int:
    """Non-pad tokens trained on in this session (a resumed run starts counting at its checkpoint)."""
    start = getattr(trainer, "_initial_num_input_tokens_seen", 0) or 0
    return int(trainer.state.num_input_tokens_seen - start)


def first_log(trainer) -> dict:
    """The first logged training step (computed before any optimizer update)."""
    for entry in trainer.state.log_history:
        if "loss" in entry:
            return entry
    return {}


def save_adapter(model, tokenizer, out_dir: Path, resolved: dict) -> None:
    """Adapter + tokenizer + resolved config, atomically. Only the `default` adapter: DPO adds a frozen `ref` copy."""
    with atomic.atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=["default"])
        sort_target_modules(tmp / "adapter_config.json")
        tokenizer.save_pretrained(str(tmp))
        atomic.write_json(tmp / "resolved_config.json", resolved)


def restore_trained_adapter(trainer, checkpoint: str | None) -> None:
    """Load the trained `default` adapter of `checkpoint` into the model before a resumed train().

    With several adapters (DPO: the trained `default` and TRL's frozen `ref`) PEFT saves `default` at the
    checkpoint's root and the others in subfolders, and transformers (5.17) resumes only the subfolders' adapters:
    the policy would restart from its initial weights (the Stage 2 adapter) under the resumed optimizer and step."""
    if checkpoint is None:
        return
    root = Path(checkpoint)
    weights = root / "adapter_model.safetensors"
    if not weights.is_file() or not any((d / weights.name).is_file() for d in root.iterdir() if d.is_dir()):
        return  # one adapter at the root: the Trainer loads it itself
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    model = trainer.accelerator.unwrap_model(trainer.model)
    result = set_peft_model_state_dict(model, load_file(str(weights)), adapter_name="default")
    if result.unexpected_keys:
        raise DataValidationError(f"{weights}: {len(result.unexpected_keys)} tensors match no parameter of the "
                                  f"model's `default` adapter (e.g. {result.unexpected_keys[0]}); cannot resume")


def write_outputs(trainer, paths: RunPaths, resolved: dict, metrics: dict) -> None:
    """The stage's adapter, metrics and finished mark, written by rank 0 alone (every rank holds the same
    weights); the other ranks wait for it."""
    if distributed.is_main():
        save_adapter(trainer.model, trainer.processing_class, paths.output_dir, resolved)
        atomic.write_json(paths.metrics_file, metrics)
        checkpoints.mark_finished(paths.checkpoint_dir, paths.output_dir)
    distributed.barrier()


def sort_target_modules(config_file: Path) -> None:
    """PEFT keeps target_modules as a set and writes it in hash order, which changes with each Python process:
    sorted, the adapter dir (a DVC out) hashes the same for the same training."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        atomic.write_json(config_file, config)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def run_train_loss(trainer, result, resume_from: str | None) -> float:
    """The mean training loss per optimizer step over the whole run, a resumed one included.

    transformers' `training_loss` is the loss summed over the steps this session trained, divided by every step
    (global_step): after a resume the checkpoint's steps count in the divisor but not in the sum. Their losses are
    in the checkpoint's log history, which the resumed state carries."""
    steps = trainer.state.global_step
    if resume_from is None or steps == 0:
        return result.training_loss
    start = checkpoints.step_of(resume_from)
    session_sum = result.training_loss * steps  # undo the division; includes steps after the last log
    before_sum, before_steps, last = 0.0, 0, 0
    for entry in trainer.state.log_history:
        step = entry.get("step", 0)
        if "loss" in entry and last < step <= start:
            # A log entry is the mean over the steps since the previous one (logging_steps).
            before_sum += entry["loss"] * (step - last)
            before_steps, last = before_steps + step - last, step
    # Steps between the checkpoint's last log and the checkpoint itself (logging_steps > 1) left no loss behind:
    # the mean is over the steps whose loss is known.
    return (before_sum + session_sum) / max(before_steps + steps - start, 1)


def run_summary(trainer, result, seconds: float, info: "RunInfo", resume_from: str | None) -> dict:
    """What every training stage reports: steps, losses, throughput, wall time and peak memory."""
    history = [h for h in trainer.state.log_history if "loss" in h]
    tokens = tokens_seen(trainer)
    held_out = final_eval(trainer)
    return {
        "stage": info.stage,
        "backend": info.backend,
        "steps": trainer.state.global_step,
        "resumed_from": None if resume_from is None else Path(resume_from).name,
        "first_loss": finite(first_log(trainer).get("loss")),
        "final_loss": finite(history[-1]["loss"]) if history else None,
        "train_loss": finite(run_train_loss(trainer, result, resume_from)),
        "train_seconds": round(seconds, 3),
        "tokens_seen": tokens,  # over every DDP process
        "tokens_per_second": round(tokens / max(seconds, 1e-9), 2),
        "processes": distributed.world_size(),
        # per-device batch x per-process grad accum x processes = params.yaml's batch_size x grad_accum
        "effective_batch": trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
        * distributed.world_size(),
        # How the steps of this session were laid out (train.layout; kospi_ft.training.layouts).
        "layout": getattr(trainer, "layout", None) and trainer.layout.as_dict(),
        "peak_memory_gib": round(backends.peak_memory_gib(), 3),
        # The held-out split, scored on the saved model (the best checkpoint under early stopping).
        "eval_loss": finite(held_out.get("eval_loss")),
        "eval_step": held_out.get("eval_step"),
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
    }

"""Stage 3: DPO on top of the Stage 2 adapter, with the Stage 2 model as the reference policy.

The reference matters: with a PEFT model TRL can compute reference log-probs with the adapter disabled, i.e. the
bare base, and DPO would then pull the policy back towards the untuned base. Here the Stage 2 adapter is loaded
trainable and passed with `ref_model=None`; TRL (1.15 and 1.16) then copies it into a frozen `ref` adapter and
runs the reference forward under it, so reference == Stage 2. The check: at step 0 policy and reference are the
same weights, so every reward margin is 0 and the loss is -log sigmoid(0) = ln 2. `train_dpo` records the first
step's loss and margins in the metrics, and when they are off it fails and writes no Stage 3 adapter.

The held-out pairs (paths.eval_pairs: the eval set's prompts, broken by the same rejecter) are scored every
`eval_steps` and after the last step against the same reference: eval loss, rewards/chosen, rejected, accuracies and
margins in the curves, their final values in the metrics.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from pydantic import Field

from ..errors import DataValidationError, PipelineError
from ..jsonl import read_jsonl
from ..tokenizer import load_tokenizer
from . import backends, checkpoints, layouts
from .common import (RunInfo, RunPaths, Timer, TrainParams, check_messages, final_eval, finite, first_log,
                     held_out_slice, learning_params, recipe_layout, restore_trained_adapter, run_summary,
                     trainer_arguments, training_callbacks, write_outputs)
from .layouts import Layout, TrainSetup
from .lm_head import completion_only_scoring

log = logging.getLogger(__name__)

LN2 = math.log(2.0)


class DPOParams(TrainParams):
    """params.yaml `dpo` (spec flags --beta --epochs --lr --batch-size --max-seq-length)."""

    beta: float = Field(0.1, gt=0)  # KL strength: 0.05 aggressive, 0.1 balanced, 0.3-0.5 conservative


def load_pairs(path: Path) -> list[dict]:
    """Conversational preference records: prompt [system, user], chosen/rejected [assistant]."""
    out = []
    for n, record in read_jsonl(path, what="training data", hint="run the stage that writes it first"):
        where = f"{path}:{n}"
        prompt = check_messages(record.get("prompt"), f"{where}: prompt", roles=("system", "user"))
        chosen = check_messages(record.get("chosen"), f"{where}: chosen", roles=("assistant",))
        rejected = check_messages(record.get("rejected"), f"{where}: rejected", roles=("assistant",))
        if chosen == rejected:
            raise DataValidationError(f"{where}: chosen and rejected are identical")
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


def prompt_lengths(tokenizer, pairs: list[dict]) -> list[int]:
    """Tokens of each pair's prompt as TRL's DPOTrainer counts them: the chat template with the assistant header."""
    texts = [tokenizer.apply_chat_template(p["prompt"], tokenize=False, add_generation_prompt=True) for p in pairs]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def check_prompts_fit(splits: list[tuple[Path, list[dict]]], tokenizer, max_seq_length: int) -> None:
    """Refuse a split none of whose answers starts within max_seq_length, as Stage 2 does; warn of dropped pairs.

    TRL (1.16) drops every pair whose prompt alone fills max_length; with none left its Trainer fails deep inside
    with `num_samples=0`. Run before checkpoints or outputs are touched."""
    for path, pairs in splits:
        lengths = prompt_lengths(tokenizer, pairs)
        dropped = sum(n >= max_seq_length for n in lengths)
        if lengths and dropped == len(lengths):
            raise DataValidationError(
                f"{path}: no assistant token is left within max_seq_length={max_seq_length} (every prompt is "
                f"{min(lengths)} tokens or longer); TRL would drop all {len(lengths)} pairs. Raise max_seq_length.")
        if dropped:
            log.warning("%s: %d of %d pairs have a prompt of max_seq_length=%d tokens or more (the longest %d); TRL "
                        "drops them. Raise max_seq_length to keep them.", path, dropped, len(lengths),
                        max_seq_length, max(lengths))


def build_dpo_trainer(params: DPOParams, *, model_name: str, backend: str, load_in_4bit: bool, data: list[dict],
                      stage2_adapter: Path, paths: RunPaths, callbacks=(), eval_data: list[dict] | None = None,
                      resume: bool = False, revision: str | None = None, layout: Layout | None = None):
    """Stage 2 model (adapter trainable) and a DPOTrainer whose reference is a frozen copy of that adapter;
    `layout`: micro-batch (pairs) and checkpointing (default: the recipe)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    layout = layout or recipe_layout(params, backend)
    model, tokenizer = backends.load_base(model_name, backend, params.max_seq_length, load_in_4bit, revision,
                                          checkpointing=layout.checkpointing)
    model = backends.load_adapter(model, stage2_adapter, backend, trainable=True, checkpointing=layout.checkpointing,
                                  kept_layers=layout.kept_layers)
    args = DPOConfig(
        **trainer_arguments(params, backend, paths.checkpoint_dir, evaluate=bool(eval_data), layout=layout),
        beta=params.beta,
        max_length=params.max_seq_length,
        truncation_mode="keep_start",
        loss_type=["sigmoid"],
    )
    # ref_model=None with a PeftModel: TRL adds the frozen `ref` adapter copied from `default` (see module doc).
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(data),
                         eval_dataset=Dataset.from_list(eval_data) if eval_data else None, processing_class=tokenizer,
                         callbacks=training_callbacks(params, paths.live_dir, resume, callbacks)
                         + layouts.layout_callbacks(layout, backend))
    return trainer


def build_fitted(params: DPOParams, *, setup: TrainSetup | None, model_name: str, backend: str, load_in_4bit: bool,
                 data: list[dict], stage2_adapter: Path, paths: RunPaths, callbacks=(),
                 eval_data: list[dict] | None = None, resume_from: str | None = None, revision: str | None = None):
    """`build_dpo_trainer` with the layout train.layout picks (probed on CUDA), recorded on `trainer.layout` and in
    the checkpoint dir's config."""
    adapter = backends.adapter_config(stage2_adapter)
    # The memory model's row: chosen and rejected, each up to max_seq_length; TRL's frozen `ref` copy of the adapter.
    options = layouts.plan(params, setup=setup or TrainSetup(), section="dpo", backend=backend,
                           model_name=model_name, load_in_4bit=load_in_4bit, revision=revision,
                           lora_rank=adapter.get("r") or 32, lora_modules=adapter.get("target_modules") or (),
                           tokens_per_row=2 * params.max_seq_length, adapters=2)
    return layouts.fitted(lambda layout: build_dpo_trainer(
        params, model_name=model_name, backend=backend, load_in_4bit=load_in_4bit, data=data,
        stage2_adapter=stage2_adapter, paths=paths, callbacks=callbacks, eval_data=eval_data,
        resume=resume_from is not None, revision=revision, layout=layout), options, paths.checkpoint_dir,
        resume_from)


def reference_is_policy(trainer) -> bool:
    """Whether TRL set up the frozen `ref` adapter (reference = the loaded Stage 2 adapter)."""
    peft_config = getattr(trainer.accelerator.unwrap_model(trainer.model), "peft_config", {})
    return trainer.ref_model is None and "ref" in peft_config


class DPOReferenceError(PipelineError):
    """DPO did not start from its reference: the Stage 3 model would be aligned against the wrong policy."""


#: How far the first step's loss and margin may sit from ln 2 and 0: bf16 forward passes on a GPU gave
#: 0.6931472 and 0.0 exactly (H200, 7B); a wrong reference (the bare base) is off by ~0.1-1 or more.
STEP0_TOLERANCE = 1e-3


def train_dpo(params: DPOParams, *, model_name: str, backend: str, load_in_4bit: bool, data_path: Path,
              stage2_adapter: Path, paths: RunPaths, callbacks=(), eval_path: Path | None = None,
              restart: bool = False, revision: str | None = None, setup: TrainSetup | None = None) -> dict:
    """Train Stage 3 (scoring the held-out pairs in `eval_path`, if given) and write adapter (default only), metrics
    and curves. Returns the metrics.

    Raises DPOReferenceError, writing no adapter, unless the run starts from the Stage 2 policy as its reference
    (TRL's frozen `ref` copy, step-0 loss ln 2, margins 0); DataValidationError, touching no checkpoint or output,
    when no prompt of a split leaves room for its answer within max_seq_length."""
    data = load_pairs(data_path)
    eval_data = held_out_slice(load_pairs(eval_path) if eval_path is not None else None, params)
    resolved = {
        "stage": "stage3", "backend": backend, "base_model": model_name, "revision": revision,
        "load_in_4bit": load_in_4bit, "init_adapter": str(stage2_adapter),
        "reference": "stage2 adapter (frozen copy)", "data": str(data_path), "records": len(data),
        "eval_data": None if eval_path is None else str(eval_path), "eval_records": len(eval_data or ()),
        "params": params.model_dump(mode="json"),
    }
    splits = [(data_path, data)] + ([] if eval_path is None else [(eval_path, eval_data)])
    check_prompts_fit(splits, load_tokenizer(model_name, revision), params.max_seq_length)
    resume_from = checkpoints.prepare_on_all_ranks(paths.checkpoint_dir, checkpoints.run_config(
        stage="stage3", backend=backend, base_model=model_name, revision=revision, load_in_4bit=load_in_4bit,
        params=learning_params(params),
        inputs=[data_path, stage2_adapter] + ([] if eval_path is None else [eval_path])), restart=restart)
    backends.reset_peak_memory()
    trainer = build_fitted(params, setup=setup, model_name=model_name, backend=backend, load_in_4bit=load_in_4bit,
                           data=data, stage2_adapter=stage2_adapter, paths=paths, callbacks=callbacks,
                           eval_data=eval_data, resume_from=resume_from, revision=revision)
    if not reference_is_policy(trainer):
        raise DPOReferenceError(f"{stage2_adapter}: TRL did not set up a frozen copy of the Stage 2 adapter as the "
                                f"DPO reference, so DPO would pull towards another policy; {paths.output_dir} not "
                                f"written")
    restore_trained_adapter(trainer, resume_from)
    with Timer() as timer, completion_only_scoring():
        result = trainer.train(resume_from_checkpoint=resume_from)
    metrics = summarize(trainer, result, timer.seconds, RunInfo(
        stage="stage3", backend=backend, base_model=model_name, init_adapter=str(stage2_adapter)), resume_from)
    check_reference_start(metrics, stage2_adapter, paths.output_dir)
    # Only the trained `default` adapter is the Stage 3 model; TRL's `ref` copy is Stage 2 again.
    write_outputs(trainer, paths, resolved, metrics)
    return metrics


def check_reference_start(metrics: dict, stage2_adapter: Path, output_dir: Path) -> None:
    """The first logged step (before any update) must show policy == reference: loss ln 2, margin 0."""
    loss, margin = metrics.get("step0_loss"), metrics.get("step0_reward_margin")
    if loss is None:
        raise DPOReferenceError(f"DPO logged no first-step loss, so the Stage 2 reference cannot be checked; "
                                f"{output_dir} not written (logging_steps must be 1)")
    off = [f"loss {loss:.6f} != ln 2 = {LN2:.6f}"] if abs(loss - LN2) > STEP0_TOLERANCE else []
    if margin is not None and abs(margin) > STEP0_TOLERANCE:
        off.append(f"reward margin {margin:.6f} != 0")
    if off:
        raise DPOReferenceError(f"DPO step 0: {', '.join(off)}: the reference policy is not the Stage 2 model "
                                f"{stage2_adapter}; {output_dir} not written")


def summarize(trainer, result, seconds: float, info: RunInfo, resume_from: str | None) -> dict:
    """The common run summary plus DPO's rewards at step 0 (ln 2 / margin 0 check), at the end, and on the held-out
    pairs (the saved model's evaluation)."""
    first = first_log(trainer)
    history = [h for h in trainer.state.log_history if "loss" in h]
    last = history[-1] if history else {}
    held_out = final_eval(trainer)
    return {
        **run_summary(trainer, result, seconds, info, resume_from),
        "step0_loss": finite(first.get("loss")),
        "step0_reward_margin": finite(first.get("rewards/margins")),
        "final_reward_margin": finite(last.get("rewards/margins")),
        "final_reward_accuracy": finite(last.get("rewards/accuracies")),
        "final_rewards_chosen": finite(last.get("rewards/chosen")),
        "final_rewards_rejected": finite(last.get("rewards/rejected")),
        "eval_reward_margin": finite(held_out.get("eval_rewards/margins")),
        "eval_reward_accuracy": finite(held_out.get("eval_rewards/accuracies")),
        "eval_rewards_chosen": finite(held_out.get("eval_rewards/chosen")),
        "eval_rewards_rejected": finite(held_out.get("eval_rewards/rejected")),
    }

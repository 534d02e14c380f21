"""Stage 3: DPO on top of the Stage 2 adapter, with the Stage 2 model as the reference policy.

The reference matters: with a PEFT model TRL can compute reference log-probs with the adapter disabled, i.e. the
bare base, and DPO would then pull the policy back towards the untuned base. Here the Stage 2 adapter is loaded
trainable and passed with `ref_model=None`; TRL (1.15 and 1.16) then copies it into a frozen `ref` adapter and
runs the reference forward under it, so reference == Stage 2. The check: at step 0 policy and reference are the
same weights, so every reward margin is 0 and the loss is -log sigmoid(0) = ln 2. `train_dpo` records the first
step's loss and margins in the metrics and warns when they are off.

The held-out pairs (paths.eval_pairs: the eval set's prompts, broken by the same rejecter) are scored every
`eval_steps` and after the last step against the same reference: eval loss, rewards/chosen, rejected, accuracies and
margins in the curves, their final values in the metrics.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from pydantic import Field

from .. import atomic
from ..errors import DataValidationError
from ..jsonl import read_jsonl
from . import backends
from .common import (RunInfo, RunPaths, Timer, TrainParams, check_messages, final_eval, finite, first_log,
                     held_out_slice, prepare_checkpoints, run_summary, save_adapter, trainer_arguments,
                     training_callbacks)
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


def build_dpo_trainer(params: DPOParams, *, model_name: str, backend: str, load_in_4bit: bool, data: list[dict],
                      stage2_adapter: Path, paths: RunPaths, callbacks=(), eval_data: list[dict] | None = None):
    """Stage 2 model (adapter trainable) and a DPOTrainer whose reference is a frozen copy of that adapter."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = backends.load_base(model_name, backend, params.max_seq_length, load_in_4bit)
    model = backends.load_adapter(model, stage2_adapter, backend, trainable=True)
    args = DPOConfig(
        **trainer_arguments(params, backend, paths.checkpoint_dir, evaluate=bool(eval_data)),
        beta=params.beta,
        max_length=params.max_seq_length,
        truncation_mode="keep_start",
        loss_type=["sigmoid"],
    )
    # ref_model=None with a PeftModel: TRL adds the frozen `ref` adapter copied from `default` (see module doc).
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(data),
                         eval_dataset=Dataset.from_list(eval_data) if eval_data else None, processing_class=tokenizer,
                         callbacks=training_callbacks(params, paths.live_dir, callbacks))
    return trainer


def reference_is_policy(trainer) -> bool:
    """Whether TRL set up the frozen `ref` adapter (reference = the loaded Stage 2 adapter)."""
    peft_config = getattr(trainer.accelerator.unwrap_model(trainer.model), "peft_config", {})
    return trainer.ref_model is None and "ref" in peft_config


def train_dpo(params: DPOParams, *, model_name: str, backend: str, load_in_4bit: bool, data_path: Path,
              stage2_adapter: Path, paths: RunPaths, callbacks=(), eval_path: Path | None = None) -> dict:
    """Train Stage 3 (scoring the held-out pairs in `eval_path`, if given) and write adapter (default only), metrics
    and curves. Returns the metrics."""
    data = load_pairs(data_path)
    eval_data = held_out_slice(load_pairs(eval_path) if eval_path is not None else None, params)
    resolved = {
        "stage": "stage3", "backend": backend, "base_model": model_name, "load_in_4bit": load_in_4bit,
        "init_adapter": str(stage2_adapter), "reference": "stage2 adapter (frozen copy)", "data": str(data_path),
        "records": len(data), "eval_data": None if eval_path is None else str(eval_path),
        "eval_records": len(eval_data or ()), "params": params.model_dump(mode="json"),
    }
    resume_from = prepare_checkpoints(paths.checkpoint_dir, resolved | {
        "params": params.model_dump(mode="json", exclude={"resume"})}, params.resume)
    backends.reset_peak_memory()
    trainer = build_dpo_trainer(params, model_name=model_name, backend=backend, load_in_4bit=load_in_4bit,
                                data=data, stage2_adapter=stage2_adapter, paths=paths, callbacks=callbacks,
                                eval_data=eval_data)
    if not reference_is_policy(trainer):
        log.warning("DPO reference is not a frozen copy of the Stage 2 adapter; margins will not start at 0")
    with Timer() as timer, completion_only_scoring():
        result = trainer.train(resume_from_checkpoint=resume_from)
    metrics = summarize(trainer, result, timer.seconds, RunInfo(
        stage="stage3", backend=backend, base_model=model_name, init_adapter=str(stage2_adapter)), resume_from)
    if resume_from is None and metrics["step0_loss"] is not None and abs(metrics["step0_loss"] - LN2) > 1e-3:
        log.warning("DPO step-0 loss %.5f != ln 2: the reference policy differs from the Stage 2 start",
                    metrics["step0_loss"])
    # Only the trained `default` adapter is the Stage 3 model; TRL's `ref` copy is Stage 2 again.
    save_adapter(trainer.model, trainer.processing_class, paths.output_dir, resolved)
    atomic.write_json(paths.metrics_file, metrics)
    return metrics


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

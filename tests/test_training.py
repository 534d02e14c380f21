"""Training on CPU with a tiny random Qwen2 and the real tokenizer: what LoRA trains, Stage 2 continuity, the DPO
reference policy, resume, backend choice and params errors. (Backends and GPU throughput: benchmarks/.)"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kospi_ft import params, presets
from kospi_ft.base_model import ModelParams
from kospi_ft.errors import DataValidationError, ParamsError
from kospi_ft.training import backends
from kospi_ft.training.common import RunPaths, trainer_arguments
from kospi_ft.training.dpo import LN2, DPOParams, build_dpo_trainer, load_pairs, reference_is_policy
from kospi_ft.training.sft import (SFTParams, Stage2Params, build_sft_trainer, count_label_tokens,
                                  load_conversations, row_batches, train_sft)


FIXTURES = Path(__file__).parent / "fixtures" / "training"
# Small and fast; no warmup, so every step moves the weights (a 10% warmup makes step 1 run at lr 0).
SFT = dict(epochs=1, lr=1e-3, batch_size=1, max_seq_length=256, warmup_ratio=0.0, save_steps=2, eval_steps=2, seed=3)


def run_paths(root: Path, name: str, live: bool = True) -> RunPaths:
    return RunPaths(output_dir=root / name, checkpoint_dir=root / f"ckpt-{name}", metrics_file=root / f"{name}.json",
                    live_dir=root / f"live-{name}" if live else None)


def sft(base_dir, root, name, init_adapter=None, callbacks=(), eval_path=FIXTURES / "synthetic.jsonl", **over):
    """Stage 1 on the fixture rows, the synthetic fixture as its held-out split."""
    return train_sft(SFTParams(**(SFT | {"max_steps": 3} | over)), stage=name, model_name=base_dir, backend="hf",
                     load_in_4bit=True, data_path=FIXTURES / "stage1.jsonl", init_adapter=init_adapter,
                     paths=run_paths(root, name), callbacks=callbacks, eval_path=eval_path)


@pytest.fixture(scope="module")
def stage1_dir(base_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stage1")
    sft(base_dir, root, "stage1")
    return root / "stage1"


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


# --- backend choice and params --------------------------------------------------------------------------------

def test_backend_choice_without_cuda(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    assert backends.resolve_backend("auto") == "hf"
    assert backends.resolve_backend("hf") == "hf"
    with pytest.raises(ParamsError, match="model.backend: unsloth needs a CUDA GPU, and torch .* CPU-only build"):
        backends.resolve_backend("unsloth")
    # No quiet CPU run when the params say so (the real preset): an error naming the switch, for every backend.
    for requested in ("auto", "hf"):
        with pytest.raises(ParamsError, match=r"model.allow_cpu is false and torch .*requirements-cuda\.txt"):
            backends.resolve_backend(requested, allow_cpu=False)


def test_backend_auto_needs_both_cuda_and_unsloth(monkeypatch, caplog):
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    with caplog.at_level("WARNING"):
        assert backends.resolve_backend("auto") == "hf"
    assert "unsloth is not installed: training on the hf backend" in caplog.text
    with pytest.raises(ParamsError, match="the real preset does not fall back .* model.backend: hf"):
        backends.resolve_backend("auto", strict=True)
    assert backends.resolve_backend("hf", allow_cpu=False, strict=True) == "hf"  # asked for: allowed
    with pytest.raises(ParamsError, match="unsloth is not installed"):
        backends.resolve_backend("unsloth")
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: object())
    assert backends.resolve_backend("auto", allow_cpu=False, strict=True) == "unsloth"


def test_real_preset_training_stage_on_this_cpu_stops_before_loading_anything(tmp_path):
    """The stage command under the real preset, on a machine without CUDA: the guardrail, not an fp32 7B run."""
    import shutil
    import subprocess
    import sys

    target = tmp_path / "params.yaml"
    shutil.copy("params.yaml", target)
    presets.write(target, "real")
    r = subprocess.run([sys.executable, "-m", "stages.sft", "--stage", "stage1", "--params", str(target)],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "model.backend: unsloth needs a CUDA GPU" in r.stderr and "Traceback" not in r.stderr


def test_unknown_target_module_is_a_clear_params_error():
    raw = params.read_raw()
    raw["stage1"]["target_modules"] = ["q_proj", "qkv_proj"]
    with pytest.raises(ParamsError, match=r"stage1\.target_modules: .*unknown module name\(s\) \['qkv_proj'\]"):
        params.load("stage1", SFTParams, raw=raw)


@pytest.mark.parametrize("lr", [0, -1e-4])
def test_non_positive_lr_is_a_clear_params_error(lr):
    with pytest.raises(ParamsError, match=r"params.yaml: stage2.lr: Input should be greater than 0"):
        params.load("stage2", Stage2Params, overrides={"lr": lr})


@pytest.mark.parametrize("preset", ["embedded", "real"])
def test_shipped_params_load_in_both_presets(preset):
    raw = presets.applied(params.read_raw(), preset)
    model = params.load("model", ModelParams, raw=raw)
    s1 = params.load("stage1", SFTParams, raw=raw)
    s2 = params.load("stage2", Stage2Params, raw=raw)
    d = params.load("dpo", DPOParams, raw=raw)
    assert (s1.lora_rank, s1.lora_alpha, s1.lora_dropout) == (32, 16, 0.0)
    assert s1.target_modules == backends.TARGET_MODULES
    if preset == "real":  # the spec's values (sections 1.4, 2.5, 3.5)
        assert model.name == "unsloth/Qwen2.5-7B-Instruct"
        assert (s1.epochs, s1.lr, s1.batch_size, s1.grad_accum, s1.max_seq_length) == (2, 2e-4, 2, 8, 2048)
        assert (s2.epochs, s2.lr, s2.grad_accum) == (3, 5e-5, 4)
        # lr: 5e-6, not the spec's 5e-7: a LoRA-appropriate DPO rate (params.yaml and the README say why).
        assert (d.beta, d.lr, d.epochs, d.batch_size, d.grad_accum) == (0.1, 5e-6, 1, 1, 8)
        assert (model.backend, model.allow_cpu) == ("unsloth", False)
        assert s1.max_steps == s2.max_steps == d.max_steps == -1
    else:
        assert model.name == str(params.load_paths(raw=raw).models_dir / "base")


@pytest.mark.parametrize("section, model", [("stage1", SFTParams), ("stage2", Stage2Params), ("dpo", DPOParams)])
def test_max_steps_is_positive_or_minus_one_in_every_training_section(section, model):
    """transformers reads any max_steps <= 0 as "train whole epochs": 0 or -2 would quietly run a full epoch."""
    for bad in (0, -2):
        with pytest.raises(ParamsError, match=rf"params.yaml: {section}\.max_steps: .*positive step count, or -1 "
                                              rf"to train whole epochs \(got {bad}\)"):
            params.load(section, model, overrides={"max_steps": bad})
    assert params.load(section, model, overrides={"max_steps": -1}).max_steps == -1
    assert params.load(section, model, overrides={"max_steps": 7}).max_steps == 7


def test_every_section_with_max_steps_shares_the_training_params_definition():
    from kospi_ft.training.common import TrainParams

    with_steps = {s for s, m in presets.section_models().items() if "max_steps" in m.model_fields}
    assert with_steps == {"stage1", "stage2", "dpo"}
    for section in with_steps:
        assert issubclass(presets.section_models()[section], TrainParams), section


def test_stage1_rejects_skip_stage1():
    from stages.sft import main

    with pytest.raises(ParamsError, match="--skip-stage1 applies to --stage stage2 only"):
        main(["--stage", "stage1", "--skip-stage1"])


# --- data ------------------------------------------------------------------------------------------------------

def test_data_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
                   '{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(DataValidationError, match=r"bad.jsonl:2: messages: no assistant turn"):
        load_conversations(bad)
    assert len(load_pairs(FIXTURES / "dpo_pairs.jsonl")) == 6


def test_no_assistant_token_within_max_length_is_refused(base_dir, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "' + "코스피 " * 80 + '"}, '
                    '{"role": "assistant", "content": "ok"}]}\n')
    with pytest.raises(DataValidationError, match="no assistant token is left within max_seq_length=32"):
        train_sft(SFTParams(**(SFT | {"max_steps": 1, "max_seq_length": 32})), stage="stage1", model_name=base_dir,
                  backend="hf", load_in_4bit=True, data_path=data, init_adapter=None,
                  paths=run_paths(tmp_path, "s"))


# --- SFT ---------------------------------------------------------------------------------------------------------

def test_sft_trains_lora_only_and_leaves_the_base_bit_identical(base_dir, tmp_path):
    trainer = build_sft_trainer(SFTParams(**(SFT | {"max_steps": 3})), model_name=base_dir, backend="hf",
                                load_in_4bit=True, data=load_conversations(FIXTURES / "stage1.jsonl"),
                                init_adapter=None, paths=run_paths(tmp_path, "s"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    # 7 projections x 1 layer x (A, B); nothing else trains.
    assert len(trainable) == 14 and all("lora_" in n for n in trainable)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    for name, old in before.items():
        if name in trainable:
            assert not torch.equal(old, after[name]), f"{name} did not change"
        else:
            assert torch.equal(old, after[name]), f"frozen {name} changed"
    # The loss is on assistant tokens only: fewer label tokens than tokens.
    labels = sum(sum(1 for t in row if t != -100) for row in trainer.train_dataset["labels"])
    total = sum(len(r) for r in trainer.train_dataset["input_ids"])
    assert 0 < labels < total
    assert count_label_tokens(trainer.train_dataset) == (labels, total)  # the Arrow count the metrics use


def test_wrapped_packing_trains_on_full_rows_only(base_dir, tmp_path):
    """TRL's wrapped packing leaves a short tail row (a second batch shape); the trainer drops it unless fewer than
    batch_size full rows would remain."""
    data = load_conversations(FIXTURES / "stage1.jsonl")

    def row_lengths(batch_size: int) -> list[int]:
        params = SFTParams(**(SFT | {"max_steps": 1, "max_seq_length": 64, "batch_size": batch_size,
                                     "packing_strategy": "wrapped"}))
        trainer = build_sft_trainer(params, model_name=base_dir, backend="hf", load_in_4bit=True, data=data,
                                    init_adapter=None, paths=run_paths(tmp_path, f"w{batch_size}", live=False))
        return [len(r) for r in trainer.train_dataset["input_ids"]]

    kept_all = row_lengths(batch_size=10_000)  # too few full rows for one batch: nothing dropped
    assert min(kept_all) < 64
    full = row_lengths(batch_size=1)
    assert full == [n for n in kept_all if n == 64] and len(full) > 1


def test_wrapped_rows_are_batched_as_rows_after_unsloth_turned_on_packing():
    """Unsloth makes TRL's collator padding-free and wraps its torch_call on the instance (a micro-batch becomes one
    1 x (bs * seq) row); row_batches gives back bs x seq rows with an attention mask, padding a short row."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, return_position_ids=True)
    collate = collator.torch_call

    def packed(examples):  # what unsloth's enable_sample_packing installs
        batch = collate(examples)
        batch["packed_seq_lengths"] = torch.tensor([len(e["input_ids"]) for e in examples], dtype=torch.int32)
        return batch

    collator.torch_call = packed
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [-100, 2, 3, 4], "seq_lengths": [4]},
            {"input_ids": [5, 6, 7, 8], "labels": [5, 6, -100, 8], "seq_lengths": [4]},
            {"input_ids": [9, 10], "labels": [9, 10], "seq_lengths": [2]}]
    assert collator(rows)["input_ids"].shape == (1, 10)
    batch = row_batches(collator)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, 4], [5, 6, -100, 8], [9, 10, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1] * 4, [1] * 4, [1, 1, 0, 0]]
    assert "packed_seq_lengths" not in batch and "position_ids" not in batch


def test_stage1_outputs(stage1_dir):
    root = stage1_dir.parent
    metrics = json.loads((root / "stage1.json").read_text())
    assert metrics["steps"] == 3 and metrics["backend"] == "hf" and metrics["resumed_from"] is None
    assert math.isfinite(metrics["final_loss"]) and metrics["tokens_per_second"] > 0
    assert 0 < metrics["label_token_fraction"] < 1
    resolved = json.loads((stage1_dir / "resolved_config.json").read_text())
    assert resolved["params"]["lr"] == SFT["lr"] and resolved["init_adapter"] is None
    # Written in a fixed order (PEFT's set order changes per process), so the adapter dir hashes the same.
    modules = json.loads((stage1_dir / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(SFTParams(**SFT).target_modules)
    from transformers import AutoTokenizer

    from kospi_ft.tokenizer import CHATML_TEMPLATE

    assert AutoTokenizer.from_pretrained(stage1_dir).chat_template == CHATML_TEMPLATE  # the files, not configure()
    assert (root / "live-stage1" / "plots" / "metrics" / "train" / "loss.tsv").read_text().count("\n") == 4
    # The held-out split: every eval_steps (2) and after the last step (3), as curves and as the final number.
    assert metrics["eval_step"] == 3 and math.isfinite(metrics["eval_loss"]) and not metrics["stopped_early"]
    assert resolved["eval_records"] == 6
    curves = root / "live-stage1" / "plots" / "metrics" / "eval"
    rows = [line.split("\t") for line in (curves / "loss.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == ["step", "2", "3"] and float(rows[-1][1]) == pytest.approx(metrics["eval_loss"])
    assert (curves / "mean_token_accuracy.tsv").is_file() and not (curves / "runtime.tsv").exists()


def test_stage2_starts_from_the_stage1_adapter(base_dir, stage1_dir, tmp_path):
    stage1 = adapter_tensors(stage1_dir)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in stage1.items())
    trainer = build_sft_trainer(SFTParams(**(SFT | {"max_steps": 1})), model_name=base_dir, backend="hf",
                                load_in_4bit=True, data=load_conversations(FIXTURES / "synthetic.jsonl"),
                                init_adapter=stage1_dir, paths=run_paths(tmp_path, "s2"))
    live = {n.replace(".default", ""): p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert len(live) == len(stage1)
    for key, value in stage1.items():
        assert torch.equal(live[key], value), key


def test_early_stopping_keeps_the_best_checkpoint_as_the_output(base_dir, tmp_path):
    """At lr 0.05 the held-out loss falls for two steps, then rises by ~0.1 (seen: 11.82, 11.73, 11.85): patience 1
    stops the run at step 3, and the stage's adapter is step 2's checkpoint, not the last step's weights."""
    metrics = sft(base_dir, tmp_path, "s", max_steps=6, eval_steps=1, save_steps=1, save_total_limit=2,
                  early_stopping_patience=1, lr=0.05)
    curve = [line.split("\t") for line in (tmp_path / "live-s" / "plots" / "metrics" / "eval" / "loss.tsv")
             .read_text().splitlines()[1:]]
    losses = {int(step): float(loss) for step, loss in curve}
    assert metrics["stopped_early"] and metrics["steps"] == 3 and list(losses) == [1, 2, 3]
    best = min(losses, key=losses.get)
    assert best == 2 and metrics["eval_step"] == best and metrics["eval_loss"] == pytest.approx(losses[best])
    ckpt = tmp_path / "ckpt-s"
    saved, kept = adapter_tensors(tmp_path / "s"), adapter_tensors(ckpt / f"checkpoint-{best}")
    assert all(torch.equal(saved[k], kept[k]) for k in kept)
    last = adapter_tensors(ckpt / "checkpoint-3")  # the newest checkpoint is kept besides the best
    assert any(not torch.equal(saved[k], last[k]) for k in last)


def test_early_stopping_params_are_checked():
    with pytest.raises(ParamsError, match=r"stage1: .*save_steps \(3\) to be a multiple of eval_steps \(2\)"):
        params.load("stage1", SFTParams, overrides={"early_stopping_patience": 2, "save_steps": 3, "eval_steps": 2})
    with pytest.raises(DataValidationError, match="no held-out split to stop on"):
        trainer_arguments(SFTParams(**(SFT | {"early_stopping_patience": 1})), "hf", Path("x"), evaluate=False)


# --- DPO ---------------------------------------------------------------------------------------------------------

def dpo_first_step(base_dir, stage2_dir, root, drop_ref=False):
    trainer = build_dpo_trainer(
        DPOParams(epochs=1, max_steps=1, lr=5e-7, batch_size=2, max_seq_length=256, save_steps=10, beta=0.1),
        model_name=base_dir, backend="hf", load_in_4bit=True, data=load_pairs(FIXTURES / "dpo_pairs.jsonl"),
        stage2_adapter=stage2_dir, paths=run_paths(root, "dpo"))
    if drop_ref:  # what TRL does without the `ref` copy: reference = adapters disabled = the bare base
        trainer.model.delete_adapter("ref")
    ok = reference_is_policy(trainer)
    trainer.train()
    first = trainer.state.log_history[0]
    return ok, first["loss"], first["rewards/margins"]


def ln2_check(loss: float, margin: float) -> bool:
    return abs(loss - LN2) <= 1e-3 and abs(margin) <= 1e-6


def test_dpo_reference_is_the_stage2_model(base_dir, stage2_dir, tmp_path):
    ok, loss, margin = dpo_first_step(base_dir, stage2_dir, tmp_path)
    assert ok
    assert ln2_check(loss, margin), (loss, margin)
    # The same check fails when the reference is the bare base.
    ok, loss, margin = dpo_first_step(base_dir, stage2_dir, tmp_path / "bare", drop_ref=True)
    assert not ok
    assert not ln2_check(loss, margin), (loss, margin)


def _loss_grads_metrics(trainer, batch):
    """One micro-batch's loss, the LoRA gradients and the metrics TRL logs for it."""
    trainer.model.zero_grad()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_label_positions_only_keep_loss_gradients_and_metrics(kind, base_dir, stage2_dir, tmp_path, monkeypatch):
    """The stages' LM head (label positions, plain torch) against TRL's own CPU path (every position, its tiles)."""
    from kospi_ft.training import lm_head

    if kind == "sft":
        trainer = build_sft_trainer(SFTParams(**(SFT | {"max_steps": 1})), model_name=base_dir, backend="hf",
                                    load_in_4bit=True, data=load_conversations(FIXTURES / "synthetic.jsonl"),
                                    init_adapter=stage2_dir, paths=run_paths(tmp_path, "sft", live=False))
    else:
        trainer = build_dpo_trainer(
            DPOParams(epochs=1, max_steps=1, lr=5e-7, batch_size=2, max_seq_length=256, save_steps=10),
            model_name=base_dir, backend="hf", load_in_4bit=True, data=load_pairs(FIXTURES / "dpo_pairs.jsonl"),
            stage2_adapter=stage2_dir, paths=run_paths(tmp_path, "dpo", live=False))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    projected = []  # positions each call of the stages' head projects
    original = lm_head.label_log_probs
    monkeypatch.setattr(lm_head, "label_log_probs",
                        lambda hidden, *rest: projected.append(hidden.shape[0]) or original(hidden, *rest))
    trainer.model.train()

    full_loss, full_grads, full_metrics = _loss_grads_metrics(trainer, batch)
    with lm_head.completion_only_scoring():
        loss, grads, metrics = _loss_grads_metrics(trainer, batch)
    from trl.trainer import utils as trl_utils

    assert not trl_utils._use_triton(torch.device("cpu"))  # TRL's own switches are back
    assert trl_utils._ChunkedLogProbFunction is not None and not isinstance(
        trl_utils._ChunkedLogProbFunction, lm_head._LabelLogProbs)
    if kind == "sft":
        labelled = int((batch["labels"][:, 1:] != -100).sum())
        assert projected == [labelled]
    else:  # policy, then the reference: the completions of chosen and rejected
        labelled = int((batch["completion_mask"][:, 1:] == 1).sum())
        assert projected == [labelled, labelled]
    assert labelled < batch["input_ids"][:, 1:].numel()
    torch.testing.assert_close(loss, full_loss, rtol=0, atol=1e-5)
    assert full_grads.keys() == grads.keys() and grads
    for name, grad in full_grads.items():
        # fp32 sums in another order: a few 1e-7 apart where a gradient is near 0
        scale = float(grad.abs().max())
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")
    assert metrics.keys() == full_metrics.keys() and {"entropy", "mean_token_accuracy"} <= set(metrics)
    for key, value in full_metrics.items():
        if key != "num_tokens":  # a running count of the tokens trained on: two calls, twice the count
            assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_dpo_saves_only_the_trained_adapter(base_dir, stage2_dir, tmp_path):
    from kospi_ft.training.dpo import train_dpo

    metrics = train_dpo(DPOParams(epochs=1, max_steps=2, lr=1e-3, batch_size=1, max_seq_length=256, save_steps=10,
                                  warmup_ratio=0.0),
                        model_name=base_dir, backend="hf", load_in_4bit=True, data_path=FIXTURES / "dpo_pairs.jsonl",
                        stage2_adapter=stage2_dir, paths=run_paths(tmp_path, "stage3"),
                        eval_path=FIXTURES / "dpo_pairs.jsonl")
    assert metrics["step0_loss"] == pytest.approx(LN2, abs=1e-3) and metrics["step0_reward_margin"] == 0
    # The "held-out" pairs here are the training pairs, scored after the last step against the same Stage 2
    # reference: two lr-1e-3 steps on them must have lowered their loss below ln 2 and opened a positive margin.
    assert metrics["eval_step"] == 2 and metrics["eval_loss"] < LN2 - 1e-3
    assert metrics["eval_reward_margin"] > 0 and 0 <= metrics["eval_reward_accuracy"] <= 1
    assert metrics["eval_rewards_chosen"] is not None and metrics["eval_rewards_rejected"] is not None
    assert (tmp_path / "live-stage3" / "plots" / "metrics" / "eval" / "rewards" / "margins.tsv").is_file()
    out = tmp_path / "stage3"
    assert not (out / "ref").exists()
    assert json.loads((out / "resolved_config.json").read_text())["init_adapter"] == str(stage2_dir)
    saved, start = adapter_tensors(out), adapter_tensors(stage2_dir)
    assert saved.keys() == start.keys()
    # What was saved is the trained policy, not the Stage 2 start (nor TRL's frozen `ref` copy of it).
    changed = [k for k in saved if not torch.equal(saved[k], start[k])]
    assert len(changed) == len(saved), sorted(set(saved) - set(changed))[:3]
    assert (tmp_path / "live-stage3" / "plots" / "metrics" / "rewards" / "margins.tsv").is_file()


def test_a_resumed_dpo_run_continues_its_trained_policy(base_dir, stage2_dir, tmp_path):
    """Killed after checkpoint-1 (here: checkpoint-2 and the finished mark taken away), the rerun resumes there and
    saves what the uninterrupted run saved. transformers alone would reload only TRL's `ref` adapter (a subfolder
    of the checkpoint) and train step 2 from the Stage 2 weights."""
    import shutil

    from kospi_ft.training import checkpoints
    from kospi_ft.training.dpo import train_dpo

    cfg = DPOParams(epochs=1, max_steps=2, lr=1e-3, batch_size=1, max_seq_length=256, save_steps=1,
                    warmup_ratio=0.0)

    def dpo(root: Path) -> dict:
        return train_dpo(cfg, model_name=base_dir, backend="hf", load_in_4bit=True,
                         data_path=FIXTURES / "dpo_pairs.jsonl", stage2_adapter=stage2_dir,
                         paths=run_paths(root, "stage3", live=False))

    whole = dpo(tmp_path / "whole")
    ckpt = tmp_path / "cut" / "ckpt-stage3"
    shutil.copytree(tmp_path / "whole" / "ckpt-stage3", ckpt)
    shutil.rmtree(ckpt / "checkpoint-2")
    (ckpt / checkpoints.FINISHED).unlink()
    assert (ckpt / "checkpoint-1" / "ref").is_dir()  # the layout transformers mis-resumes
    resumed = dpo(tmp_path / "cut")
    assert resumed["resumed_from"].endswith("checkpoint-1") and resumed["steps"] == whole["steps"] == 2
    # Over both steps, not the resumed step's loss divided by two (transformers' training_loss after a resume).
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-6)
    saved, want = adapter_tensors(tmp_path / "cut" / "stage3"), adapter_tensors(tmp_path / "whole" / "stage3")
    assert all(torch.equal(saved[k], want[k]) for k in want), "the resumed policy differs from the uninterrupted"
    start = adapter_tensors(stage2_dir)
    assert not any(torch.equal(saved[k], start[k]) for k in start)


def test_dpo_prompts_past_max_seq_length_stop_before_anything_is_touched(base_dir, stage2_dir, tmp_path):
    """Every prompt at least max_seq_length tokens: Stage 2's error, and the finished run's checkpoints, the
    adapter, metrics and curves are as they were (TRL would fail with `num_samples=0` after they were removed)."""
    from kospi_ft.training import checkpoints
    from kospi_ft.training.dpo import train_dpo

    paths = run_paths(tmp_path, "stage3")
    (paths.checkpoint_dir / "checkpoint-4").mkdir(parents=True)
    (paths.checkpoint_dir / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (paths.checkpoint_dir / checkpoints.FINGERPRINT_FILE).write_text('{"fingerprint": "earlier"}')
    checkpoints.mark_finished(paths.checkpoint_dir, paths.output_dir)
    paths.output_dir.mkdir()
    (paths.output_dir / "adapter_config.json").write_text("{}")
    paths.metrics_file.write_text("{}")
    (paths.live_dir / "plots").mkdir(parents=True)
    (paths.live_dir / "plots" / "loss.tsv").write_text("step\tloss\n1\t0.69\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    # The fixture's prompts are 51-56 tokens.
    with pytest.raises(DataValidationError, match=r"dpo_pairs.jsonl: no assistant token is left within "
                                                  r"max_seq_length=48 \(every prompt is 51 tokens or longer\)"):
        train_dpo(DPOParams(epochs=1, max_steps=1, lr=1e-3, batch_size=1, max_seq_length=48, save_steps=10),
                  model_name=base_dir, backend="hf", load_in_4bit=True, data_path=FIXTURES / "dpo_pairs.jsonl",
                  stage2_adapter=stage2_dir, paths=paths, eval_path=FIXTURES / "dpo_pairs.jsonl")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_dpo_prompt_check_counts_what_trl_drops(base_dir, stage2_dir, tmp_path, caplog):
    """The pre-check's token counts are TRL's: at max_seq_length 54 it names the 4 pairs TRL leaves out."""
    from kospi_ft.tokenizer import load_tokenizer
    from kospi_ft.training.dpo import check_prompts_fit, prompt_lengths

    pairs = load_pairs(FIXTURES / "dpo_pairs.jsonl")
    trainer = build_dpo_trainer(
        DPOParams(epochs=1, max_steps=1, lr=5e-7, batch_size=1, max_seq_length=256, save_steps=10),
        model_name=base_dir, backend="hf", load_in_4bit=True, data=pairs, stage2_adapter=stage2_dir,
        paths=run_paths(tmp_path, "dpo", live=False))
    tokenizer = load_tokenizer(base_dir)
    assert prompt_lengths(tokenizer, pairs) == [len(ids) for ids in trainer.train_dataset["prompt_ids"]]
    with caplog.at_level("WARNING"):
        check_prompts_fit([(Path("pairs.jsonl"), pairs)], tokenizer, 54)
    assert "pairs.jsonl: 4 of 6 pairs have a prompt of max_seq_length=54 tokens or more" in caplog.text


def test_dpo_off_its_stage2_reference_writes_no_stage3(base_dir, stage2_dir, tmp_path):
    """Step 0 off ln 2 (here: TRL's `ref` copy is dropped, so the reference is the bare base) is an error, and
    models/stage3 is not written."""
    from transformers import TrainerCallback

    from kospi_ft.training.dpo import DPOReferenceError, train_dpo

    class DropReference(TrainerCallback):
        def __init__(self, trainer_model):
            self.model = trainer_model

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.delete_adapter("ref")

    with pytest.raises(DPOReferenceError, match=r"DPO step 0: loss .* != ln 2.*not the Stage 2 model.*not written"):
        train_dpo(DPOParams(epochs=1, max_steps=1, lr=1e-3, batch_size=1, max_seq_length=256, save_steps=10),
                  model_name=base_dir, backend="hf", load_in_4bit=True, data_path=FIXTURES / "dpo_pairs.jsonl",
                  stage2_adapter=stage2_dir, paths=run_paths(tmp_path, "stage3"), callbacks=[DropReference(None)])
    assert not (tmp_path / "stage3").exists() and not (tmp_path / "stage3.json").exists()


def test_cli_flags_override_params_and_are_validated():
    from stages.sft import main

    with pytest.raises(ParamsError, match=r"stage1\.lr: Input should be greater than 0 \(got -1.0\)"):
        main(["--stage", "stage1", "--lr", "-1"])
    from stages.dpo import main as dpo_main

    with pytest.raises(ParamsError, match=r"dpo\.beta: Input should be greater than 0"):
        dpo_main(["--beta", "0"])


# --- GPU (unsloth backend, TRL 1.15 there) -------------------------------------------------------------------------

@pytest.mark.gpu
def test_unsloth_sft_then_dpo_starts_at_ln2(base_dir, tmp_path):
    backend = backends.prepare_backend("unsloth")
    metrics = train_sft(SFTParams(**(SFT | {"max_steps": 3})), stage="stage1", model_name=base_dir, backend=backend,
                        load_in_4bit=True, data_path=FIXTURES / "stage1.jsonl", init_adapter=None,
                        paths=run_paths(tmp_path, "s1", live=False))  # GPU images may lack dvclive
    assert metrics["backend"] == "unsloth" and metrics["tokens_seen"] > 0 and math.isfinite(metrics["final_loss"])
    from kospi_ft.training.dpo import train_dpo

    metrics = train_dpo(DPOParams(epochs=1, max_steps=1, lr=5e-7, batch_size=1, max_seq_length=256, save_steps=10),
                        model_name=base_dir, backend=backend, load_in_4bit=True,
                        data_path=FIXTURES / "dpo_pairs.jsonl", stage2_adapter=tmp_path / "s1",
                        paths=run_paths(tmp_path, "s3", live=False))
    assert metrics["step0_loss"] == pytest.approx(LN2, abs=1e-3) and metrics["step0_reward_margin"] == 0


def test_packed_documents_do_not_attend_across_the_boundary_on_cpu(base_dir):
    """What the padding-free SFT collator feeds the hf backend: one row, position_ids restarting per document, and
    use_cache=False as SFTTrainer.compute_loss sets it (with a cache, transformers skips packed-sequence masking).
    The model itself: test_bfd_batches_from_the_trainer_keep_documents_apart runs a batch the trainer built."""
    model, tok = backends.load_base(base_dir, "hf", 512)
    a = torch.tensor(tok("코스피 지수가 상승했다. " * 8).input_ids)
    b = torch.tensor(tok("Samsung Electronics PER is 12. " * 6).input_ids)
    row = torch.cat([a, b])[None]
    with torch.no_grad():
        alone = model(input_ids=b[None], position_ids=torch.arange(len(b))[None], use_cache=False).logits[0]
        restart = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None]
        packed = model(input_ids=row, position_ids=restart, use_cache=False)
        crossed = model(input_ids=row, position_ids=torch.arange(row.shape[1])[None], use_cache=False)
    torch.testing.assert_close(packed.logits[0, len(a):], alone, rtol=0, atol=1e-5)
    assert (crossed.logits[0, len(a):] - alone).abs().max() > 1e-3


def test_bfd_batches_from_the_trainer_keep_documents_apart(base_dir, tmp_path):
    """A batch exactly as the pipeline's SFT trainer builds it (bfd, padding-free): each packed document's logits
    equal that document run alone, and would not with one continuous position range."""
    trainer = build_sft_trainer(SFTParams(**(SFT | {"max_steps": 1, "batch_size": 4, "max_seq_length": 512})),
                                model_name=base_dir, backend="hf", load_in_4bit=True,
                                data=load_conversations(FIXTURES / "stage1.jsonl"), init_adapter=None,
                                paths=run_paths(tmp_path, "bfd", live=False))
    batch = next(iter(trainer.get_train_dataloader()))
    ids, positions = batch["input_ids"], batch["position_ids"]
    assert ids.shape[0] == 1 and "attention_mask" not in batch  # one padding-free row
    starts = (positions[0] == 0).nonzero().flatten().tolist()
    assert len(starts) >= 2, "the batch must pack at least two documents"
    s, e = starts[1], (starts[2] if len(starts) > 2 else ids.shape[1])
    model = trainer.model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        packed = model(**inputs, use_cache=False).logits[0, s:e]
        alone = model(input_ids=ids[:, s:e], position_ids=torch.arange(e - s)[None], use_cache=False).logits[0]
        crossed = model(input_ids=ids, position_ids=torch.arange(ids.shape[1])[None], use_cache=False).logits[0, s:e]
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)
    assert (crossed - alone).abs().max() > 1e-3


@pytest.mark.gpu
def test_guardrails_with_cuda_visible(monkeypatch):
    """On a CUDA machine: the real preset's settings train on unsloth; without unsloth they stop instead of
    falling back to hf, unless hf is asked for."""
    assert backends.resolve_backend("unsloth", allow_cpu=False, strict=True) == "unsloth"
    assert backends.resolve_backend("auto", allow_cpu=False, strict=True) == "unsloth"
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ParamsError, match="does not fall back"):
        backends.resolve_backend("auto", allow_cpu=False, strict=True)
    with pytest.raises(ParamsError, match="unsloth is not installed"):
        backends.resolve_backend("unsloth", allow_cpu=False, strict=True)
    assert backends.resolve_backend("hf", allow_cpu=False, strict=True) == "hf"

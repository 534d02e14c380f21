"""The training layout (micro-batch, checkpointing) changes how a step runs, not what it learns; auto picks the
fastest layout that fits the GPU and falls back a notch on an out-of-memory at its probe step."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from kospi_ft.errors import ParamsError, PipelineError
from kospi_ft.training import checkpoints, layouts
from kospi_ft.training.common import RunPaths
from kospi_ft.training.dpo import DPOParams, train_dpo
from kospi_ft.training.layouts import GIB, Layout, TrainSetup
from kospi_ft.training.sft import SFTParams, build_sft_trainer, load_conversations, train_sft


FIXTURES = Path(__file__).parent / "fixtures" / "training"
# An effective batch of 4 rows (pairs) per optimizer step, split three ways below.
SFT = dict(epochs=1, lr=1e-3, batch_size=1, grad_accum=4, max_steps=3, max_seq_length=256, warmup_ratio=0.0,
           save_steps=2, eval_steps=2, seed=3)
DPO = dict(epochs=1, lr=1e-3, batch_size=1, grad_accum=4, max_steps=2, max_seq_length=256, warmup_ratio=0.0,
           save_steps=1, eval_steps=1, seed=3)
SPLITS = (1, 2, 4)


def run_paths(root: Path, name: str) -> RunPaths:
    return RunPaths(output_dir=root / name, checkpoint_dir=root / f"ckpt-{name}", metrics_file=root / f"{name}.json",
                    live_dir=None)


def sft(base_dir, root: Path, micro_batch: int, callbacks=()) -> dict:
    return train_sft(SFTParams(**SFT, micro_batch=micro_batch), stage="stage1", model_name=base_dir, backend="hf",
                     load_in_4bit=True, data_path=FIXTURES / "stage1.jsonl", init_adapter=None,
                     paths=run_paths(root, "stage1"), callbacks=callbacks, eval_path=FIXTURES / "synthetic.jsonl")


def assert_same_adapter(a: Path, b: Path, rel: float = 1e-3) -> None:
    """Every adapter tensor equal to within `rel` of its norm: fp32 sums in another order, which AdamW's
    normalised update amplifies on near-zero gradients to ~1e-5 absolute here (B's entries are ~2e-3)."""
    x, y = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert x.keys() == y.keys()
    worst = max(float((x[k] - y[k]).norm() / y[k].norm()) for k in y)
    assert worst <= rel, f"adapters differ by {worst:.2e} (relative) between layouts"
    assert any(float(y[k].abs().max()) > 0 for k in y if "lora_B" in k)  # B started at 0: training moved it


# --- the same numbers whatever the layout (CPU, fp32) ---------------------------------------------------------

def test_sft_learns_the_same_at_every_micro_batch_split(base_dir, tmp_path):
    """1 x 4, 2 x 2 and 4 x 1 rows per step: the same rows in the same order, the loss normalised over the whole
    step, so equal losses, held-out loss and adapter weights (fp32 rounding apart)."""
    runs = {m: sft(base_dir, tmp_path / f"m{m}", m) for m in SPLITS}
    for m, metrics in runs.items():
        assert metrics["layout"]["micro_batch"] == m and metrics["layout"]["grad_accum"] == 4 // m
        assert metrics["effective_batch"] == 4 and metrics["steps"] == 3
        assert metrics["tokens_seen"] == runs[1]["tokens_seen"]
        assert metrics["train_loss"] == pytest.approx(runs[1]["train_loss"], rel=1e-4)
        assert metrics["eval_loss"] == pytest.approx(runs[1]["eval_loss"], rel=1e-4)
        assert_same_adapter(tmp_path / f"m{m}" / "stage1", tmp_path / "m1" / "stage1")
        assert metrics["final_loss"] == pytest.approx(runs[1]["final_loss"], rel=1e-4)
    # Not trivially equal: the steps moved the weights, and the loss with them.
    assert abs(runs[1]["final_loss"] - runs[1]["first_loss"]) > 1e-3


def test_dpo_learns_the_same_at_every_micro_batch_split(base_dir, stage2_dir, tmp_path):
    runs = {}
    for m in SPLITS:
        runs[m] = train_dpo(DPOParams(**DPO, micro_batch=m), model_name=base_dir, backend="hf", load_in_4bit=True,
                            data_path=FIXTURES / "dpo_pairs.jsonl", stage2_adapter=stage2_dir,
                            paths=run_paths(tmp_path / f"m{m}", "stage3"))
    for m, metrics in runs.items():
        assert metrics["layout"]["micro_batch"] == m and metrics["effective_batch"] == 4
        assert metrics["train_loss"] == pytest.approx(runs[1]["train_loss"], rel=1e-4)
        assert metrics["final_reward_margin"] == pytest.approx(runs[1]["final_reward_margin"], rel=1e-3, abs=1e-6)
        assert_same_adapter(tmp_path / f"m{m}" / "stage3", tmp_path / "m1" / "stage3")
    assert runs[1]["final_reward_margin"] != 0


def test_a_run_resumed_with_another_layout_ends_where_the_uninterrupted_one_does(base_dir, tmp_path):
    """Interrupted after checkpoint-2 at micro-batch 1 and resumed at micro-batch 4 (another card, say): the
    checkpoint is the same run (the layout is outside its fingerprint), the resume skips 2 x 4 rows, and the
    adapter equals a run that never stopped."""
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt("killed")

    sft(base_dir, tmp_path / "whole", 2)
    with pytest.raises(KeyboardInterrupt):
        sft(base_dir, tmp_path / "cut", 1, callbacks=[Crash()])
    resumed = sft(base_dir, tmp_path / "cut", 4)
    assert resumed["resumed_from"] == "checkpoint-2" and resumed["steps"] == 3
    assert_same_adapter(tmp_path / "cut" / "stage1", tmp_path / "whole" / "stage1")
    config = json.loads((tmp_path / "cut" / "ckpt-stage1" / checkpoints.FINGERPRINT_FILE).read_text())
    assert [(r["from_step"], r["micro_batch"], r["grad_accum"]) for r in config["layouts"]] == [(0, 1, 4), (2, 4, 1)]


def test_kept_layers_skip_the_recompute_and_learn_the_same(tmp_path):
    """hf backend with recompute on (CPU): with one of a two-layer model's decoder layers keeping its activations,
    that layer runs one forward per micro-batch and the other two (its recompute in the backward); losses and
    adapter equal those of the run without recompute and of the run recomputing both."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from model_fixtures import build_tiny_hf

    base_dir = str(build_tiny_hf(tmp_path / "base", layers=2)[0])
    data = load_conversations(FIXTURES / "stage1.jsonl")
    runs = {}
    for name, layout in (("off", Layout(1, 4, "off", "pinned")), ("all", Layout(1, 4, "on", "pinned")),
                         ("kept", Layout(1, 4, "on", "pinned", kept_layers=1))):
        trainer = build_sft_trainer(SFTParams(**SFT), model_name=base_dir, backend="hf", load_in_4bit=True,
                                    data=data, init_adapter=None, paths=run_paths(tmp_path / name, "s"),
                                    layout=layout)
        decoder = [m for m in trainer.model.modules() if isinstance(m, GradientCheckpointingLayer)]
        calls = [0] * len(decoder)
        for i, layer in enumerate(decoder):
            # A pre-hook: a recompute stops as soon as it has what the backward needs, before a forward hook.
            layer.register_forward_pre_hook(lambda module, args, i=i: calls.__setitem__(i, calls[i] + 1))
        trainer.train()
        adapter = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
        runs[name] = (calls, [h["loss"] for h in trainer.state.log_history if "loss" in h], adapter)
    micro_batches = runs["off"][0][0]
    assert micro_batches >= 3 and runs["off"][0] == [micro_batches, micro_batches]
    assert runs["all"][0] == [2 * micro_batches, 2 * micro_batches]
    assert runs["kept"][0] == [2 * micro_batches, micro_batches]  # layer 1 keeps its activations (as unsloth picks)
    for name in ("all", "kept"):
        assert runs[name][1] == pytest.approx(runs["off"][1], rel=1e-6)
        for k, v in runs["off"][2].items():
            assert torch.allclose(runs[name][2][k], v, rtol=1e-5, atol=1e-7), (name, k)
    assert runs["off"][1][0] != runs["off"][1][-1]  # the steps moved the loss


# --- choosing a layout --------------------------------------------------------------------------------------

SEVEN_B = SimpleNamespace(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                          num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def seven_b(seq: int, rows_factor: int = 1):
    return layouts.model_shape(SEVEN_B, tokens_per_row=rows_factor * seq, load_in_4bit=True, lora_rank=32,
                               lora_modules=ALL)


def auto(shape, budget_gib: float, rows: int, **pins) -> list[Layout]:
    return layouts.candidates(rows=rows, batch_size=2, setup=TrainSetup(layout="auto"), backend="unsloth",
                              cuda=True, shape=shape, budget=budget_gib * GIB, **{"micro_batch": None,
                                                                                   "checkpointing": None, **pins})


def test_the_memory_model_reproduces_the_measured_7b_peaks():
    """H200, 7B QLoRA r32, seq 2048 (the table in layouts.py): off at micro-batch 2 / 8: 20.9 / 66.5 GiB;
    unsloth's recompute at 2 / 8: 7.2 / 10.8 GiB."""
    shape = seven_b(2048)
    for m, mode, measured in ((2, "off", 20.9), (8, "off", 66.5), (2, "unsloth", 7.2), (8, "unsloth", 10.8)):
        assert shape.predicted_peak(m, mode) / GIB == pytest.approx(measured, rel=0.12), (m, mode)


def test_auto_prefers_no_recompute_at_the_largest_micro_batch_that_fits():
    big = auto(seven_b(2048), 139, rows=16)
    assert (big[0].checkpointing, big[0].micro_batch, big[0].grad_accum) == ("off", 16, 1)
    at_24 = auto(seven_b(2048), 24, rows=16)
    assert (at_24[0].checkpointing, at_24[0].micro_batch) == ("off", 2)
    assert at_24[0].predicted_peak_gib <= 22
    # Falling back walks down the micro-batch, then to unsloth's recompute at larger micro-batches, keeping the
    # activations of as many layers as fit (fewer the larger the micro-batch), in the speed model's order.
    assert [(x.checkpointing, x.micro_batch, x.kept_layers) for x in at_24][1:5] == [
        ("off", 1, 0), ("unsloth", 4, 12), ("unsloth", 8, 5), ("unsloth", 16, 1)]
    assert all(x.predicted_peak_gib <= 24 * layouts.FILL for x in at_24[:5])
    # Stage 2 at seq 4096 in 16 GiB: no recompute-free layout fits; recompute with 13 of 28 layers keeping theirs.
    at_16 = auto(seven_b(4096), 16, rows=8)
    assert (at_16[0].checkpointing, at_16[0].micro_batch, at_16[0].kept_layers) == ("unsloth", 1, 13)
    assert at_16[0].predicted_peak_gib <= 16 * layouts.FILL
    assert all(x.micro_batch * x.grad_accum == 8 for x in at_16)


def test_dpo_at_24_gib_recomputes_only_the_layers_that_do_not_fit():
    """DPO (chosen + rejected, a frozen reference adapter) fits no recompute-free layout in 24 GiB; today's recipe
    recomputes all 28 layers. Auto keeps 12 layers' activations at one pair per micro-batch: predicted 1.14x."""
    shape = layouts.model_shape(SEVEN_B, tokens_per_row=2 * 4096, load_in_4bit=True, lora_rank=32, lora_modules=ALL,
                                adapters=2)
    options = layouts.candidates(rows=8, batch_size=1, setup=TrainSetup(layout="auto"), backend="unsloth", cuda=True,
                                 shape=shape, budget=24 * GIB, micro_batch=None, checkpointing=None)
    first, recipe = options[0], options[-1]
    assert (first.checkpointing, first.micro_batch, first.kept_layers) == ("unsloth", 1, 12)
    assert (recipe.chosen_by, recipe.checkpointing, recipe.kept_layers) == ("recipe", "unsloth", 0)
    speedup = shape.relative_speed(1, "unsloth", 12) / shape.relative_speed(1, "unsloth", 0)
    assert speedup == pytest.approx(1.14, abs=0.01)
    # Keeping one more layer would not fit; the recompute-free layout does not either.
    usable = 24 * GIB * layouts.FILL - layouts.RESERVE_GIB * GIB
    assert shape.predicted_peak(1, "unsloth", 12) <= usable < shape.predicted_peak(1, "unsloth", 13)
    assert shape.predicted_peak(1, "off") > usable


def test_kept_layers_are_spread_as_unsloth_spreads_them():
    assert layouts.kept_layer_indices(28, 0) == []
    assert layouts.kept_layer_indices(28, 4) == [6, 13, 20, 27]
    assert layouts.kept_layer_indices(2, 1) == [1]
    assert layouts.kept_layer_indices(28, 28) == list(range(28))


def test_pins_win_and_bad_pins_name_the_key():
    pinned = auto(seven_b(2048), 139, rows=16, checkpointing="unsloth")
    assert {x.checkpointing for x in pinned} == {"unsloth"} and pinned[0].chosen_by == "pinned"
    assert all(x.kept_layers == 0 for x in pinned)  # a pinned checkpointing recomputes every layer
    assert [(x.micro_batch, x.checkpointing) for x in auto(seven_b(2048), 139, rows=16, micro_batch=4)] == [
        (4, "off")]  # no recompute where every activation fits
    with pytest.raises(ParamsError, match=r"stage1\.micro_batch is 3.*\[16, 8, 4, 2, 1\]"):
        layouts.candidates(rows=16, batch_size=2, setup=TrainSetup(layout="auto"), micro_batch=3,
                           checkpointing=None, backend="unsloth", cuda=True, where="stage1.")
    with pytest.raises(ParamsError, match=r"dpo\.checkpointing is unsloth, but the backend is hf"):
        layouts.candidates(rows=8, batch_size=1, setup=TrainSetup(), micro_batch=None, checkpointing="unsloth",
                           backend="hf", cuda=True, where="dpo.")
    # The recipe, and any layout on a CPU: micro-batch = batch_size, the backend's checkpointing, no probe.
    recipe = layouts.candidates(rows=16, batch_size=2, setup=TrainSetup(layout="auto"), micro_batch=None,
                                checkpointing=None, backend="hf", cuda=False)
    assert recipe == [Layout(2, 8, "off", "recipe")]


def fake_trainers(built: list):
    """A build function recording the (checkpointing, kept layers) of each model it builds."""
    def build(layout):
        built.append((layout.checkpointing, layout.kept_layers))
        return SimpleNamespace(args=SimpleNamespace(), model=None, model_wrapped=None)

    return build


def test_an_out_of_memory_at_the_probe_falls_back_one_notch_and_rebuilds_only_for_a_new_model():
    """Stage 1 at 24 GiB: off at 2 and 1 run out of memory, unsloth's recompute at 4 (12 layers kept) fits. The
    next notch with a larger micro-batch is its rival; out of memory too, so the first one trains unraced."""
    options = auto(seven_b(2048), 24, rows=16)
    built, probed = [], []

    def probe(trainer, micro_batch):
        probed.append((trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps))
        if len(probed) < 3 or micro_batch > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return layouts.Probe(9.5, micro_batch * 2048)

    trainer, chosen = layouts.fit(fake_trainers(built), options, probe=probe)
    # The race's first timed probe of the winner, then the rival's (out of memory), then the winner rebuilt.
    assert probed == [(2, 8), (1, 16), (4, 4), (4, 4), (8, 2)]
    assert built == [("off", 0), ("unsloth", 12), ("unsloth", 5), ("unsloth", 12)]
    assert (chosen.checkpointing, chosen.micro_batch, chosen.kept_layers, chosen.fallbacks, chosen.probe_peak_gib) \
        == ("unsloth", 4, 12, 3, 9.5)
    assert chosen.rival is None and trainer.args.per_device_train_batch_size == 4

    def never(trainer, micro_batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    # Every probe out of memory: today's recipe trains, unprobed (auto never stops what the recipe would train).
    assert options[-1] == Layout(2, 8, "unsloth", "recipe", budget_gib=24.0)
    trainer, chosen = layouts.fit(fake_trainers([]), options, probe=never)
    assert (chosen.micro_batch, chosen.checkpointing, chosen.chosen_by) == (2, "unsloth", "recipe")
    assert chosen.fallbacks == len(options) - 1 and trainer.args.per_device_train_batch_size == 2
    # A pinned layout has no recipe to fall back to: its out-of-memory is the error.
    pinned = auto(seven_b(2048), 24, rows=16, checkpointing="unsloth")
    assert all(x.chosen_by == "pinned" for x in pinned)
    with pytest.raises(PipelineError, match="out of GPU memory at micro_batch 1 with checkpointing unsloth"):
        layouts.fit(fake_trainers([]), pinned, probe=never)

    def broken(trainer, micro_batch):
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug"):
        layouts.fit(fake_trainers([]), options, probe=broken)


@pytest.mark.parametrize("recompute_faster", [False, True])
def test_recompute_at_a_larger_micro_batch_is_raced_against_the_recompute_free_winner(recompute_faster):
    """Stage 1 at 24 GiB: off fits micro-batch 2; unsloth's recompute fits 4 with 12 layers kept. Each gets one
    more, timed probe step and the faster trains."""
    options = auto(seven_b(2048), 24, rows=16)
    # Seconds per probe step: off x2 (4,096 tokens) and unsloth x4 (8,192 tokens).
    seconds = {("off", 2): 0.30, ("unsloth", 4): 0.55 if recompute_faster else 0.70}
    now, built, probed = [0.0], [], []

    def probe(trainer, micro_batch):
        mode = built[-1][0]
        probed.append((mode, micro_batch))
        now[0] += seconds[mode, micro_batch]
        return layouts.Probe(5.0, micro_batch * 2048)

    trainer, chosen = layouts.fit(fake_trainers(built), options, probe=probe, clock=lambda: now[0])
    assert probed == [("off", 2), ("off", 2), ("unsloth", 4), ("unsloth", 4)]
    off_speed, unsloth_speed = round(4096 / 0.30), round(8192 / seconds["unsloth", 4])
    if recompute_faster:  # 14,895 tok/s against 13,653: the trainer built for the race trains
        assert built == [("off", 0), ("unsloth", 12)]
        assert (chosen.checkpointing, chosen.micro_batch, chosen.grad_accum, chosen.kept_layers) == \
            ("unsloth", 4, 4, 12)
        assert chosen.probe_tokens_per_s == unsloth_speed
        assert chosen.rival == {"micro_batch": 2, "checkpointing": "off", "kept_layers": 0,
                                "probe_tokens_per_s": off_speed}
    else:  # 11,703 tok/s: off wins and is built again
        assert built == [("off", 0), ("unsloth", 12), ("off", 0)]
        assert (chosen.checkpointing, chosen.micro_batch, chosen.grad_accum) == ("off", 2, 8)
        assert chosen.probe_tokens_per_s == off_speed
        assert chosen.rival == {"micro_batch": 4, "checkpointing": "unsloth", "kept_layers": 12,
                                "probe_tokens_per_s": unsloth_speed}
    assert chosen.fallbacks == 0 and trainer.args.per_device_train_batch_size == chosen.micro_batch


def test_the_probe_step_leaves_weights_gradients_and_rng_as_they_were(base_dir, tmp_path):
    """The probe runs forward + backward of the micro_batch longest rows and drops its gradients, so training
    afterwards starts exactly as without it."""
    params = SFTParams(**SFT, micro_batch=2)
    trainer = build_sft_trainer(params, model_name=base_dir, backend="hf", load_in_4bit=True,
                                data=load_conversations(FIXTURES / "stage1.jsonl"), init_adapter=None,
                                paths=run_paths(tmp_path, "s"))
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    rng = torch.random.get_rng_state()
    calls = []
    original = trainer.compute_loss

    def counting(model, inputs, *a, **kw):
        calls.append(inputs["input_ids"].numel())
        return original(model, inputs, *a, **kw)

    trainer.compute_loss = counting
    probed = layouts.probe_step(trainer, 2)
    assert probed.peak_gib == 0.0  # no CUDA: nothing to measure, but the step ran
    assert len(calls) == 1 and calls[0] > 0
    # The tokens it reports are those of the two longest rows (the collator pads to the longest of them).
    lengths = sorted(layouts._row_lengths(trainer.train_dataset), reverse=True)
    assert probed.tokens == lengths[0] + lengths[1] and probed.tokens <= calls[0]
    assert torch.equal(torch.random.get_rng_state(), rng)
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            assert p.grad is None and torch.equal(p, before[name]), name


def test_train_section_keys_are_validated():
    with pytest.raises(ValueError):
        TrainSetup(layout="fastest")
    with pytest.raises(ValueError):
        TrainSetup(memory_limit_gib=0)
    assert TrainSetup(layout="auto", memory_limit_gib=24).memory_limit_gib == 24

"""Benchmark: a training step's LM head on the CPU, three ways, measured in the same run on the same batches.

- every position: TRL 1.16's own CPU path (the fused head projects all positions: the baseline);
- label positions, TRL tiles: TRL's fused head told to project only the labelled positions (`_use_triton` switch);
- label positions, plain: what the stages run (`kospi_ft.training.lm_head.completion_only_scoring`).

One Stage 2 SFT step (one packed ~2,700-token row, ~21% labels) and one Stage 3 DPO step (a pair and the
reference forward), on the embedded base model, forward + backward. Process CPU time is reported besides wall time:
on a shared 2-core machine it moves less with the other load. Needs the synthesize + dpo_pairs + base_model outputs.

    python benchmarks/bench_lm_head.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def tiles_only():
    """TRL's fused head on label positions, with its own CPU tile kernel."""
    from trl.trainer import utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def main() -> None:
    import torch

    from kospi_ft import params
    from kospi_ft.training.common import RunPaths
    from kospi_ft.training.dpo import DPOParams, build_dpo_trainer, load_pairs
    from kospi_ft.training.lm_head import completion_only_scoring
    from kospi_ft.training.sft import SFTParams, build_sft_trainer, load_conversations

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    paths = params.load_paths(ROOT / "params.yaml")
    base = str(ROOT / paths.models_dir / "base")
    tmp = Path(tempfile.mkdtemp())
    ways = {"every position (TRL CPU default)": contextlib.nullcontext,
            "label positions, TRL tiles": tiles_only,
            "label positions, plain (stages)": completion_only_scoring}

    def run_paths(name: str) -> RunPaths:
        return RunPaths(tmp / name, tmp / f"ckpt-{name}", tmp / f"{name}.json", None)

    sft = build_sft_trainer(
        SFTParams(epochs=1, max_steps=1, lr=1e-3, batch_size=1, max_seq_length=3584, warmup_ratio=0.0),
        model_name=base, backend="hf", load_in_4bit=True,
        data=load_conversations(ROOT / paths.synthetic)[:4], init_adapter=None, paths=run_paths("sft"))
    # A fresh LoRA stands in for Stage 2 (B = 0: the reference equals the base; the cost is the same).
    dpo_start = tmp / "start"
    sft.model.save_pretrained(dpo_start)
    dpo = build_dpo_trainer(
        DPOParams(epochs=1, max_steps=1, lr=1e-4, batch_size=1, max_seq_length=3584, warmup_ratio=0.0),
        model_name=base, backend="hf", load_in_4bit=True, data=load_pairs(ROOT / paths.dpo_pairs)[:4],
        stage2_adapter=dpo_start, paths=run_paths("dpo"))

    for label, trainer in (("Stage 2 SFT step", sft), ("Stage 3 DPO step", dpo)):
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        labels = batch["labels"] if "labels" in batch else batch["completion_mask"]
        n_label = int((labels != -100).sum()) if "labels" in batch else int(labels.sum())
        print(f"{label}: {batch['input_ids'].numel()} tokens, {n_label} label positions")
        trainer.model.train()
        times: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
        losses = {}
        for _ in range(args.repeats):
            for way, switch in ways.items():  # interleaved, so drifting machine load hits every way alike
                with switch():
                    trainer.model.zero_grad()
                    wall, cpu = time.perf_counter(), time.process_time()
                    loss = trainer.compute_loss(trainer.model, dict(batch))
                    loss.backward()
                    times[way].append((time.perf_counter() - wall, time.process_time() - cpu))
                losses[way] = loss.item()
        baseline = min(c for _, c in times[next(iter(ways))])
        for way, runs in times.items():
            wall, cpu = min(w for w, _ in runs), min(c for _, c in runs)
            print(f"  {way:34s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  x{baseline / cpu:4.1f} vs every position "
                  f"(cpu)  loss {losses[way]:.6f}")
    del torch


if __name__ == "__main__":
    main()

"""One rank of a 2-process DDP run on the tiny model (test_ddp starts it through torchrun).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_training.py BASE_DIR ROOT

Stage 1 SFT, one optimizer step, then Stage 3 DPO, one step, on that adapter as Stage 2. Each rank dumps, beside
what the pipeline writes (rank 0 only), its own view for the test: its LoRA weights after the step
(ROOT/rank<R>/lora.safetensors) and the loss of its first DPO micro-batch (ROOT/rank<R>/dpo_first_loss.json).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIXTURES = Path(__file__).parent / "fixtures" / "training"


def main() -> None:
    base, root = sys.argv[1], Path(sys.argv[2])
    import torch
    from safetensors.torch import save_file
    from transformers import TrainerCallback

    from kospi_ft.training.common import RunPaths
    from kospi_ft.training.dpo import DPOParams, train_dpo
    from kospi_ft.training.sft import SFTParams, train_sft

    rank = int(os.environ["RANK"])
    mine = root / f"rank{rank}"
    mine.mkdir(parents=True, exist_ok=True)

    class DumpLora(TrainerCallback):
        @staticmethod
        def dump(model, name):
            weights = {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}
            save_file(weights, str(mine / name))

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.dump(model, "lora_start.safetensors")

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.dump(model, "lora.safetensors")

    def paths(name: str) -> RunPaths:
        return RunPaths(output_dir=root / name, checkpoint_dir=root / "checkpoints" / name,
                        metrics_file=root / f"{name}.json", live_dir=root / "live" / name)

    # grad_accum 2 over 2 processes: 1 micro-batch each, the effective batch 2 as on one process.
    sft = SFTParams(epochs=1, max_steps=1, lr=1e-3, batch_size=1, grad_accum=2, max_seq_length=256,
                    warmup_ratio=0.0, save_steps=1, seed=3)
    metrics = train_sft(sft, stage="stage1", model_name=base, backend="hf", load_in_4bit=True,
                        data_path=FIXTURES / "stage1.jsonl", init_adapter=None, paths=paths("stage1"),
                        callbacks=[DumpLora()])
    (mine / "sft_metrics.json").write_text(json.dumps(metrics))

    class FirstLoss(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            trainer = self.trainer
            compute = trainer.compute_loss

            def first(model, inputs, *a, **kw):
                loss = compute(model, inputs, *a, **kw)
                value = (loss[0] if isinstance(loss, tuple) else loss).item()
                if not (mine / "dpo_first_loss.json").exists():
                    (mine / "dpo_first_loss.json").write_text(json.dumps({"loss": value}))
                return loss

            trainer.compute_loss = first

    first = FirstLoss()
    import kospi_ft.training.dpo as dpo_module

    build = dpo_module.build_dpo_trainer

    def build_and_hook(*args, **kwargs):
        trainer = build(*args, **kwargs)
        first.trainer = trainer
        return trainer

    dpo_module.build_dpo_trainer = build_and_hook
    train_dpo(DPOParams(epochs=1, max_steps=1, lr=1e-4, batch_size=1, grad_accum=2, max_seq_length=256,
                        save_steps=10, warmup_ratio=0.0),
              model_name=base, backend="hf", load_in_4bit=True, data_path=FIXTURES / "dpo_pairs.jsonl",
              stage2_adapter=root / "stage1", paths=paths("stage3"), callbacks=[first])
    torch.distributed.barrier()


if __name__ == "__main__":
    main()

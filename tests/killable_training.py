"""A real Stage 1 SFT run on the tiny model that SIGKILLs itself at a chosen point (used by test_checkpoints).

    python tests/killable_training.py BASE_DIR ROOT none|after-step-3|while-saving-4 [--restart]

`after-step-3`: killed once step 3 ends (checkpoint-2 is complete). `while-saving-4`: killed in the middle of
writing checkpoint-4's optimizer state, before the Trainer finishes that save. Prints the run's metrics as JSON.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIXTURES = Path(__file__).parent / "fixtures" / "training"
PARAMS = dict(epochs=1, max_steps=6, lr=1e-3, batch_size=1, max_seq_length=256, warmup_ratio=0.0, save_steps=2,
              save_total_limit=2, seed=3)


def main() -> None:
    base, root, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # as stages/_main.py
    import torch
    from transformers import TrainerCallback

    from kospi_ft.training.common import RunPaths
    from kospi_ft.training.sft import SFTParams, train_sft

    callbacks = []
    if mode == "after-step-3":
        class KillAfterStep3(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 3:
                    os.kill(os.getpid(), signal.SIGKILL)

        callbacks.append(KillAfterStep3())
    elif mode == "while-saving-4":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if str(f).endswith(os.path.join("checkpoint-4", "optimizer.pt")):
                real_save(obj, f, *args, **kwargs)
                with open(f, "r+b") as half:  # the power went out half-way through the file
                    half.truncate(os.path.getsize(f) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    paths = RunPaths(output_dir=root / "stage1", checkpoint_dir=root / "checkpoints" / "stage1",
                     metrics_file=root / "stage1.json", live_dir=root / "live")
    metrics = train_sft(SFTParams(**PARAMS), stage="stage1", model_name=base, backend="hf", load_in_4bit=True,
                        data_path=FIXTURES / "stage1.jsonl", init_adapter=None, paths=paths, callbacks=callbacks,
                        restart="--restart" in sys.argv)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()

"""Stage stage3: DPO on the Stage 2 adapter, the Stage 2 model being the reference policy.

    python -m stages.dpo [--beta X --epochs N --lr X --batch-size N --max-seq-length N] [--restart]

Flags override params.yaml `dpo`. Reads paths.dpo_pairs, paths.eval_pairs (held out) and models/stage2; writes
models/stage3 (the trained adapter only, with tokenizer + resolved_config.json), metrics/train/stage3.json
(including the step-0 loss, ln 2 when the reference is right, and the held-out eval rewards) and dvclive curves
(loss, rewards/chosen, rewards/rejected, margins, accuracy; eval/ the same on the held-out pairs).
"""
from __future__ import annotations

import argparse
import logging

from kospi_ft import params
from kospi_ft.base_model import resolve_base
from kospi_ft.base_model import load_params as load_model_params
from kospi_ft.training import backends
from stages._main import run
from stages.sft import add_train_flags, launch, run_paths, train_setup

log = logging.getLogger("stages.dpo")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_train_flags(parser)
    parser.add_argument("--beta", type=float, help="DPO KL strength (0.05 aggressive ... 0.5 conservative)")
    args = parser.parse_args(argv)

    from kospi_ft.training.dpo import DPOParams, train_dpo

    raw = params.read_raw(args.params)
    model = load_model_params(raw)
    launch(raw, args, model, "stages.dpo", argv)
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "max_seq_length", "beta")}
    cfg = params.load("dpo", DPOParams, overrides=overrides, raw=raw)
    paths = params.load_paths(raw=raw)
    # The guardrails first: no CUDA / no unsloth stops the stage before anything is read or loaded.
    backend = backends.prepare_backend(model.backend, allow_cpu=model.allow_cpu, strict=params.is_real(raw))
    base = resolve_base(model, paths.models_dir)
    metrics = train_dpo(cfg, model_name=base.name, revision=base.revision, backend=backend,
                        load_in_4bit=model.load_in_4bit, data_path=paths.dpo_pairs, eval_path=paths.eval_pairs,
                        stage2_adapter=paths.models_dir / "stage2", paths=run_paths(paths, "stage3"),
                        restart=args.restart, setup=train_setup(raw, args))
    log.info("stage3 done: %s", metrics)


if __name__ == "__main__":
    run(main)

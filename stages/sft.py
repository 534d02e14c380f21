"""Stages stage1 and stage2: QLoRA SFT (TRL SFTTrainer, packing, assistant-only loss).

    python -m stages.sft --stage stage1 [--epochs N --lr X --batch-size N --max-seq-length N --lora-rank N]
    python -m stages.sft --stage stage2 [... --skip-stage1] [--restart]

A rerun after an interruption resumes from the newest complete checkpoint of the same run
(checkpoints/<stage>); --restart starts over (the old checkpoints are moved aside, not deleted).

Flags override params.yaml `stage1` / `stage2`. Stage 1 trains on paths.stage1_data (held out: paths.stage1_eval),
Stage 2 on paths.stage2_data (held out: paths.eval_set), continuing the Stage 1 adapter (or the base with
--skip-stage1). Writes models/<stage> (adapter + tokenizer + resolved_config.json), metrics/train/<stage>.json
(with the held-out eval_loss) and dvclive curves (train/ and eval/) in metrics/train/<stage>/.
"""
from __future__ import annotations

import argparse
import logging
import sys

from kospi_ft import params
from kospi_ft.base_model import ModelParams, resolve_base
from kospi_ft.base_model import load_params as load_model_params
from kospi_ft.errors import ParamsError
from kospi_ft.training import backends, distributed
from kospi_ft.training.common import RunPaths
from stages._main import run

log = logging.getLogger("stages.sft")


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """The spec's training flags; unset flags leave params.yaml values alone."""
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int, dest="batch_size")
    parser.add_argument("--max-seq-length", type=int, dest="max_seq_length")
    parser.add_argument("--restart", action="store_true",
                        help="start over instead of resuming from the newest checkpoint of the same run (the old "
                             "checkpoints are moved aside to checkpoints/<stage>.<fingerprint>/)")
    parser.add_argument("--num-processes", type=int, dest="num_processes",
                        help="DDP processes, one per GPU, started through torchrun (train.num_processes)")
    params.add_params_flag(parser)


def launch(raw: dict, args: argparse.Namespace, model: ModelParams, module: str, argv: list[str] | None) -> None:
    """With train.num_processes > 1, start this stage again under torchrun (see kospi_ft.training.distributed)
    and exit with its status; a process the launcher started goes on."""
    cfg = train_setup(raw, args)
    if cfg.num_processes == 1 or distributed.launched():
        return
    # The guardrails and the device count first, in this one process, before N processes load a model.
    backends.resolve_backend(model.backend, allow_cpu=model.allow_cpu, strict=params.is_real(raw))
    distributed.check_devices(cfg.num_processes, model.allow_cpu)
    distributed.relaunch(cfg.num_processes, module, sys.argv[1:] if argv is None else argv)


def train_setup(raw: dict, args: argparse.Namespace):
    """params.yaml `train` (processes, layout), with --num-processes."""
    from kospi_ft.training.layouts import TrainSetup

    return params.load("train", TrainSetup, raw=raw, overrides={"num_processes": args.num_processes})


def run_paths(paths: params.Paths, stage: str) -> RunPaths:
    return RunPaths(output_dir=paths.models_dir / stage, checkpoint_dir=paths.checkpoints_dir / stage,
                    metrics_file=paths.train_metrics_dir / f"{stage}.json",
                    live_dir=paths.train_metrics_dir / stage)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("stage1", "stage2"), required=True)
    add_train_flags(parser)
    parser.add_argument("--lora-rank", type=int, dest="lora_rank")
    parser.add_argument("--skip-stage1", action="store_true", default=None, dest="skip_stage1",
                        help="stage2 only: train a fresh adapter on the base instead of continuing Stage 1")
    args = parser.parse_args(argv)
    if args.stage == "stage1" and args.skip_stage1:
        raise ParamsError("--skip-stage1 applies to --stage stage2 only")

    from kospi_ft.training.sft import SFTParams, Stage2Params, train_sft

    raw = params.read_raw(args.params)
    model = load_model_params(raw)
    launch(raw, args, model, "stages.sft", argv)
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "max_seq_length", "lora_rank",
                                               "skip_stage1")}
    cfg = params.load(args.stage, SFTParams if args.stage == "stage1" else Stage2Params, overrides=overrides, raw=raw)
    paths = params.load_paths(raw=raw)

    init_adapter = None
    if args.stage == "stage2":
        stage1_dir = paths.models_dir / "stage1"
        if cfg.skip_stage1:
            log.warning("skip_stage1: Stage 2 trains a fresh adapter on the base model, without Stage 1")
        elif not (stage1_dir / "adapter_config.json").is_file():
            log.warning("no Stage 1 adapter in %s: Stage 2 trains on the base model directly", stage1_dir)
        else:
            init_adapter = stage1_dir
    # The guardrails first: no CUDA / no unsloth stops the stage before anything is read or loaded.
    backend = backends.prepare_backend(model.backend, allow_cpu=model.allow_cpu, strict=params.is_real(raw))
    base = resolve_base(model, paths.models_dir)
    metrics = train_sft(cfg, stage=args.stage, model_name=base.name, revision=base.revision, backend=backend,
                        load_in_4bit=model.load_in_4bit,
                        data_path=paths.stage1_data if args.stage == "stage1" else paths.stage2_data,
                        eval_path=paths.stage1_eval if args.stage == "stage1" else paths.eval_set,
                        init_adapter=init_adapter, paths=run_paths(paths, args.stage), restart=args.restart,
                        setup=train_setup(raw, args))
    log.info("%s done: %s", args.stage, metrics)


if __name__ == "__main__":
    run(main)

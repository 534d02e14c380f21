"""Stage base_model: build the embedded tiny random-init Qwen2 with the real Qwen tokenizer into models/base.

    python -m stages.base_model [--params params.yaml]

Preset real trains on a hub model (model.name is a hub id): then nothing is built and models/base/source.json
names the hub model.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kospi_ft import atomic, params
from kospi_ft.base_model import ModelParams, write_base_model
from stages._main import run

log = logging.getLogger("stages.base_model")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    params.add_params_flag(parser)
    args = parser.parse_args(argv)
    raw = params.read_raw(args.params)
    model = params.load("model", ModelParams, raw=raw)
    paths = params.load_paths(raw=raw)
    out_dir = paths.models_dir / "base"
    if Path(model.name) != out_dir:
        # DVC still expects the out: it records which hub model the later stages load instead.
        log.info("model.name is %s: no embedded base to build; %s only names it", model.name, out_dir)
        with atomic.atomic_path(out_dir, is_dir=True) as tmp:
            atomic.write_json(tmp / "source.json", {"hub_model": model.name})
        return
    info = write_base_model(model, out_dir)
    log.info("wrote %s: %s", out_dir, info)


if __name__ == "__main__":
    run(main)

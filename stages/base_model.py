"""Stage base_model: build the embedded tiny random-init Qwen2 with the real Qwen tokenizer into models/base.

    python -m stages.base_model [--params params.yaml]

Preset real trains on a hub model (model.name is a hub id): then nothing is built and models/base/source.json
records the hub model and the commit `model.revision` resolves to, which every later stage loads.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kospi_ft import params
from kospi_ft.base_model import ModelParams, record_hub_base, write_base_model
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
        # DVC still expects the out: it pins which hub commit the later stages load instead.
        source = record_hub_base(model, out_dir)
        log.info("model.name is %s: no embedded base to build; %s records %s", model.name, out_dir, source)
        return
    info = write_base_model(model, out_dir)
    log.info("wrote %s: %s", out_dir, info)


if __name__ == "__main__":
    run(main)

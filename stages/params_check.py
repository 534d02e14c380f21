"""Stage `params`: validate the whole params.yaml (every section, both presets, no unknown key) before any other
stage runs.

    python -m stages.params_check

dvc.yaml makes this stage depend on every value of params.yaml and the graph's first stages on its out, so a bad
`dvc exp run -S key=value` (or an edit) fails here, in one line naming the key, before DVC removes the outs of the
stage that reads the key: a typo never costs a finished training run. The out is the same bytes for every valid
params.yaml, so the stages after it rerun only for the values they read themselves.
"""
from __future__ import annotations

import argparse

from kospi_ft import atomic, params, presets

from ._main import run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    params.add_params_flag(p)
    args = p.parse_args(argv)
    where = args.params
    raw = params.read_raw(args.params)
    sections = presets.check_everything(raw, where)
    paths = params.load_paths(raw=raw)
    # Constant for any valid file: the stages that depend on it must not rerun because of it.
    atomic.write_text(paths.params_check, "params.yaml: valid\n")
    print(f"{where}: valid ({len(sections)} sections, presets {', '.join(params.PRESETS)})")


if __name__ == "__main__":
    run(main)

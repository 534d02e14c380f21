"""Write a preset's values into params.yaml's sections (comments and order kept), or check them.

    python -m stages.preset real        # Qwen2.5-7B, hub datasets, your KRX tree, the spec's sizes (CUDA GPU)
    python -m stages.preset embedded    # back to the tiny CPU default
    python -m stages.preset --check     # validate both presets; list the values that differ from `preset:`'s

The sections then hold the values that run: `dvc repro` (or `dvc exp run -S key=value` on top) uses them, and
`dvc params diff` shows exactly what changed. Not a DVC stage: it edits the params file the stages read.
"""
from __future__ import annotations

import argparse

from kospi_ft import params, presets

from ._main import run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stages.preset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", choices=presets.PRESETS, help="the preset to write into the sections")
    p.add_argument("--check", action="store_true", help="only validate, and list values that differ from the preset")
    params.add_params_flag(p)
    args = p.parse_args(argv)
    if (args.name is None) == (not args.check):
        p.error("give a preset name, or --check")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.check:
        raw = params.read_raw(args.params)  # validates both presets
        current = params.preset_of(raw)
        changed = presets.diff(raw, current)
        print(f"{args.params}: presets valid; sections hold preset {current!r}"
              + ("" if not changed else f", with {len(changed)} value(s) changed from it:"))
        for key, (now, preset_value) in sorted(changed.items()):
            print(f"  {key}: {now!r} (preset {current}: {preset_value!r})")
        return
    changed = presets.write(args.params, args.name)
    if not changed:
        print(f"{args.params}: already holds preset {args.name!r}")
        return
    print(f"{args.params}: wrote preset {args.name!r} ({len(changed)} value(s)):")
    for key, (old, new) in sorted(changed.items()):
        print(f"  {key}: {old!r} -> {new!r}")
    print("next: `dvc repro` (or `dvc exp run`) runs with these values; `dvc params diff` lists them")


if __name__ == "__main__":
    run(main)

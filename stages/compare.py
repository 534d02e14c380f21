"""Stage `compare`: deltas between the evaluated models and the data of the per-metric bar charts.

    python -m stages.compare     # metrics/eval/<model>.json -> metrics/eval_compare.json + metrics/eval_plot.json

Pairs come from evaluate.compare (default Stage 2 -> Stage 3 and base -> Stage 3); each delta is after - before.
`dvc plots show` draws one bar chart per headline metric with the models on the x axis.
"""
from __future__ import annotations

import argparse

from kospi_ft import atomic, params
from kospi_ft.evaluation.compare import comparison, load_metrics, plot_rows
from kospi_ft.evaluation.config import EvaluateParams

from ._main import run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    params.add_params_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raw = params.read_raw(args.params)
    cfg = params.load("evaluate", EvaluateParams, raw=raw)
    paths = params.load_paths(raw=raw)
    metrics = {name: load_metrics(paths.eval_dir / f"{name}.json") for name in cfg.models}
    result = comparison(metrics, cfg.compare)
    atomic.write_json(paths.eval_compare, result)
    atomic.write_json(paths.eval_plot, plot_rows(metrics))
    for pair, d in result.items():
        def fmt(v):
            return "n/a" if v is None else f"{v:+.3f}"

        print(f"{pair}: json {fmt(d['json']['valid_rate'])}, schema {fmt(d['schema']['compliance_rate'])}, "
              f"strategy {fmt(d['strategy']['consistency_rate'])}, korean {fmt(d['korean']['rationale_rate'])}, "
              f"answer nll {fmt(d['likelihood']['answer_nll'])}, preference accuracy "
              f"{fmt(d['preference']['accuracy'])} margin {fmt(d['preference']['margin_mean'])}, regime accuracy "
              f"{fmt(d['trading']['regime']['accuracy'])}, timing sharpe {fmt(d['trading']['timing']['sharpe'])}")


if __name__ == "__main__":
    run(main)

"""Compare the per-model metrics files: deltas between model pairs and the rows of the bar-chart plot.

`deltas(a, b)` is b - a for every numeric metric outside `per_task` (the per-model files keep the breakdown;
`dvc metrics diff` compares those across experiments). A metric that is null in either file has a null delta.
`plot_rows` gives one row per model with the headline metrics, for dvc.yaml's bar charts (one per metric,
model on the x axis).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataValidationError
from .metrics import flatten

#: The headline metrics plotted per model: plot column -> dotted key in the metrics file.
HEADLINE: dict[str, str] = {
    "json_valid_rate": "json.valid_rate",
    "schema_compliance_rate": "schema.compliance_rate",
    "signal_in_range_rate": "signal.in_range_rate",
    "korean_rationale_rate": "korean.rationale_rate",
    "strategy_consistency_rate": "strategy.consistency_rate",
    "rouge_l_f1": "rouge.l_f1_mean",
    "latency_p50_s": "latency.p50_s",
    "gen_tokens_per_s": "throughput.gen_tokens_per_s",
    # Likelihood-based (kospi_ft.evaluation.likelihood): they move on any model, the tiny embedded one included.
    "answer_nll": "likelihood.answer_nll",
    "preference_accuracy": "preference.accuracy",
    "preference_margin_mean": "preference.margin_mean",
    # Trading (kospi_ft.evaluation.trading): does the reply read the market right, and would acting on it pay.
    "regime_accuracy": "trading.regime.accuracy",
    "timing_sharpe": "trading.timing.sharpe",
    "timing_mean_return": "trading.timing.mean_return",
    "rank_ic_mean": "trading.selection.rank_ic_mean",
    # The guided pass (evaluate.guided_samples): what a trading system consuming guided replies sees.
    "guided_schema_compliance_rate": "guided.schema.compliance_rate",
    "guided_strategy_consistency_rate": "guided.strategy.consistency_rate",
}


def load_metrics(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: metrics file not found (run `dvc repro evaluate` first)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataValidationError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataValidationError(f"{path}: top level must be an object")
    return data


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """after - before for every numeric metric (nested like the metrics files, `per_task` left out)."""
    a = {k: v for k, v in flatten(before).items() if not k.startswith("per_task.")}
    b = {k: v for k, v in flatten(after).items() if not k.startswith("per_task.")}
    out: dict[str, float | None] = {}
    for key in sorted(set(a) | set(b)):
        x, y = _number(a.get(key)), _number(b.get(key))
        out[key] = None if x is None or y is None else round(y - x, 6)
    return _unflatten(out)


def comparison(metrics: dict[str, dict[str, Any]], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """{"<a>_to_<b>": deltas(a, b)} for each pair; every name must be in `metrics`."""
    out = {}
    for a, b in pairs:
        for name in (a, b):
            if name not in metrics:
                raise DataValidationError(f"comparison {a}->{b}: no metrics for model {name!r} "
                                          f"(evaluated: {sorted(metrics)})")
        out[f"{a}_to_{b}"] = deltas(metrics[a], metrics[b])
    return out


def plot_rows(metrics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model (in the given order): {"model": name, <headline column>: value or null}."""
    rows = []
    for name, m in metrics.items():
        flat = flatten(m)
        rows.append({"model": name, **{col: _number(flat.get(key)) for col, key in HEADLINE.items()}})
    return rows

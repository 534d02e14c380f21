"""Typed, validated access to params.yaml: one pydantic model per stage section, loaded once.

`preset: embedded` (the default) runs anywhere on CPU with the tiny model, fixtures and simulated market.
`preset: real` deep-merges the `real:` section over the stage sections: Qwen2.5-7B, hub datasets, the user's
KRX tree and the spec's sizes. Only values that differ between presets appear under `real:`.
"""
from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ParamsError

PARAMS_FILE = Path(os.environ.get("KOSPI_FT_PARAMS", "params.yaml"))
PRESETS = ("embedded", "real")

T = TypeVar("T", bound=BaseModel)


class Section(BaseModel):
    """Base for every params section: unknown keys are errors, so a typo never silently falls back."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    """Every artifact path of the pipeline, declared once in params.yaml `paths:` (dvc.yaml reads them too)."""

    market_dir: Path
    krx_source_dir: Path
    snapshots_dir: Path
    regimes_metric: Path
    regime_plot: Path
    stage1_fixtures: Path
    stage1_data: Path
    stage1_stats: Path
    synthetic: Path
    eval_set: Path
    synthetic_stats: Path
    dpo_pairs: Path
    models_dir: Path
    metrics_dir: Path
    checkpoints_dir: Path
    train_metrics_dir: Path
    gguf_dir: Path
    export_metrics_dir: Path
    eval_dir: Path
    eval_compare: Path
    eval_plot: Path
    eval_results: Path


def _yaml():
    from ruamel.yaml import YAML

    return YAML(typ="rt")


def read_raw(path: str | os.PathLike | None = None) -> dict:
    path = Path(path or PARAMS_FILE)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found (run from the project root, or set KOSPI_FT_PARAMS)")
    with path.open(encoding="utf-8") as f:
        data = _yaml().load(f)
    if not isinstance(data, Mapping):
        raise ParamsError(f"{path}: top level must be a mapping")
    return _plain(data)


def _plain(obj: Any) -> Any:
    """ruamel round-trip containers -> plain dict/list, so pydantic and deep-merge see ordinary types."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def preset_of(raw: Mapping) -> str:
    preset = raw.get("preset", "embedded")
    if preset not in PRESETS:
        raise ParamsError(f"params.yaml: preset: must be one of {PRESETS}, got {preset!r}")
    return preset


def resolved(raw: Mapping, section: str) -> dict:
    """The section's values after applying the `real:` overrides when preset == real."""
    if section not in raw:
        raise ParamsError(f"params.yaml: missing section `{section}`")
    values = raw[section]
    if preset_of(raw) == "real":
        over = (raw.get("real") or {}).get(section)
        if over is not None:
            values = _merge(values, over) if isinstance(values, Mapping) else over
    return values


def _format_error(section: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in (section, *e["loc"]))
        lines.append(f"params.yaml: {key}: {e['msg']}" + (f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], Mapping) else ""))
    return "\n".join(lines)


def load(section: str, model: type[T], overrides: Mapping[str, Any] | None = None,
         path: str | os.PathLike | None = None, raw: Mapping | None = None) -> T:
    """Load, merge and validate one section. `overrides` (CLI flags) win over the file; None values are ignored."""
    raw = read_raw(path) if raw is None else raw
    values = resolved(raw, section)
    if overrides:
        values = _merge(values, {k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise ParamsError(_format_error(section, err)) from None


def load_paths(path: str | os.PathLike | None = None, raw: Mapping | None = None) -> Paths:
    return load("paths", Paths, path=path, raw=raw)


def update(path: str | os.PathLike, dotted_key: str, value: Any) -> None:
    """Set one dotted key in a params file with ruamel round-trip, so comments and ordering survive."""
    from . import atomic

    path = Path(path)
    yaml = _yaml()
    with path.open(encoding="utf-8") as f:
        data = yaml.load(f)
    node = data
    *parents, leaf = dotted_key.split(".")
    for p in parents:
        if p not in node:
            raise ParamsError(f"{path}: no key `{dotted_key}` (missing `{p}`)")
        node = node[p]
    if leaf not in node:
        raise ParamsError(f"{path}: no key `{dotted_key}`")
    node[leaf] = value
    import io

    buf = io.StringIO()
    yaml.dump(data, buf)
    atomic.write_text(path, buf.getvalue())


Preset = Literal["embedded", "real"]


def add_params_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=str(PARAMS_FILE), help="params file (default: %(default)s)")


def parse_stage_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, dict, Paths]:
    """A stage's flags, then params.yaml (or --params) read once: (args, raw params, paths)."""
    args = parser.parse_args(argv)
    raw = read_raw(args.params)
    return args, raw, load_paths(raw=raw)

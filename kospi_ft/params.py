"""Typed, validated access to params.yaml: one pydantic model per stage section, loaded once.

A stage section holds exactly the values the stage runs with; CLI flags override them for one run. Presets
(`embedded`, the CPU default; `real`, Qwen2.5-7B on a GPU) are written into the sections by
`python -m stages.preset <name>` (`kospi_ft.presets`), and every read of params.yaml validates them.
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
#: What every read of a params file checks beyond its YAML (read_raw). This module knows no section: the package
#: (kospi_ft/__init__.py) registers kospi_ft.presets.check, which validates both presets against every section.
RAW_CHECKS: list = []

T = TypeVar("T", bound=BaseModel)


class Section(BaseModel):
    """Base for every params section: unknown keys are errors, so a typo never silently falls back."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    """Every artifact path of the pipeline, declared once in params.yaml `paths:` (dvc.yaml reads them too)."""

    params_check: Path
    market_dir: Path
    krx_source_dir: Path
    market_ingest: Path
    snapshots_dir: Path
    regimes_metric: Path
    regime_plot: Path
    stage1_fixtures: Path
    stage1_data: Path
    stage1_eval: Path
    stage1_stats: Path
    synthetic: Path
    eval_set: Path
    synthetic_stats: Path
    logs_dir: Path
    stage2_data: Path
    logs_eval: Path
    stage2_data_stats: Path
    dpo_pairs: Path
    eval_pairs: Path
    models_dir: Path
    metrics_dir: Path
    checkpoints_dir: Path
    train_metrics_dir: Path
    gguf_dir: Path
    export_metrics_dir: Path
    eval_dir: Path
    trading_dates: Path
    eval_compare: Path
    eval_plot: Path
    eval_results: Path


def yaml_rt():
    """ruamel's round-trip YAML: comments, order and quoting survive a load + dump."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a line
    # `null`, as written by hand, not ruamel's empty scalar.
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


class RawParams(dict):
    """A params file's contents as plain values, plus `root`: the dir its relative paths are relative to."""

    root: Path = Path(".")


def project_dir(params_file: str | os.PathLike) -> Path:
    """The dir a params file's relative paths resolve against: the file's own, the project root.

    `.` when that is the cwd, so a stage run from the project root (as dvc runs them) gets every path exactly as
    written (relative: dvc.yaml's outs, and the paths recorded in metrics and resolved configs)."""
    folder = Path(params_file).parent
    try:
        return Path(".") if folder.resolve() == Path.cwd().resolve() else folder
    except OSError:
        return folder


def read_raw(path: str | os.PathLike | None = None) -> RawParams:
    path = Path(path or PARAMS_FILE)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found (run from the project root, or set KOSPI_FT_PARAMS)")
    with path.open(encoding="utf-8") as f:
        data = yaml_rt().load(f)
    if not isinstance(data, Mapping):
        raise ParamsError(f"{path}: top level must be a mapping")
    data = RawParams(_plain(data))
    data.root = project_dir(path)
    for check in RAW_CHECKS:
        check(data, str(path))
    return data


def root_of(raw: Mapping) -> Path:
    """Where `raw`'s relative paths resolve: its file's dir (read_raw), else the default params file's."""
    return raw.root if isinstance(raw, RawParams) else project_dir(PARAMS_FILE)


def project_path(raw: Mapping, value: str | os.PathLike) -> Path:
    """A path value of `raw` as seen from the cwd (an absolute one stays as it is)."""
    return root_of(raw) / value


def local_dir_or_id(raw: Mapping, name: str) -> str:
    """A model/tokenizer value that is a local dir (relative to the project) or a hub id: the dir as seen from the
    cwd when it exists there, else `name` unchanged."""
    local = project_path(raw, name)
    return str(local) if local.is_dir() else name


def _plain(obj: Any) -> Any:
    """ruamel round-trip containers -> plain dict/list, so pydantic and deep-merge see ordinary types."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def merge(base: Mapping, over: Mapping) -> dict:
    """Deep merge: `over`'s values win, nested mappings are merged key by key."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def preset_of(raw: Mapping) -> str:
    preset = raw.get("preset", "embedded")
    if preset not in PRESETS:
        raise ParamsError(f"params.yaml: preset: must be one of {PRESETS}, got {preset!r}")
    return preset


def is_real(raw: Mapping) -> bool:
    """Whether the guardrails of the real preset apply (no quiet CPU or hf-backend fallback, GPU offload)."""
    return preset_of(raw) == "real"


def section_values(raw: Mapping, section: str) -> dict:
    """The section's values as params.yaml holds them: exactly what the stage runs with."""
    if section not in raw:
        raise ParamsError(f"params.yaml: missing section `{section}`")
    return raw[section]


def format_error(section: str, err: ValidationError, where: str = "params.yaml") -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in (section, *e["loc"]))
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], Mapping) else ""
        lines.append(f"{where}: {key}: {e['msg']}{got}")
    return "\n".join(lines)


def load(section: str, model: type[T], overrides: Mapping[str, Any] | None = None,
         path: str | os.PathLike | None = None, raw: Mapping | None = None) -> T:
    """Load, merge and validate one section. `overrides` (CLI flags) win over the file; None values are ignored."""
    raw = read_raw(path) if raw is None else raw
    values = section_values(raw, section)
    if overrides:
        values = merge(values, {k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise ParamsError(format_error(section, err)) from None


def load_paths(path: str | os.PathLike | None = None, raw: Mapping | None = None) -> Paths:
    """The `paths` section, relative paths resolved against the params file's dir (see `project_dir`): run from
    elsewhere (KOSPI_FT_PARAMS, --params), a stage still reads and writes the project's files."""
    raw = read_raw(path) if raw is None else raw
    paths = load("paths", Paths, raw=raw)
    root = root_of(raw)
    if root == Path("."):
        return paths
    return paths.model_copy(update={name: root / value for name, value in paths})


def update(path: str | os.PathLike, dotted_key: str, value: Any) -> None:
    """Set one dotted key in a params file with ruamel round-trip, so comments and ordering survive."""
    from . import atomic

    path = Path(path)
    yaml = yaml_rt()
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

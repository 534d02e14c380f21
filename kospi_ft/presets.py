"""Presets: named sets of params values that `python -m stages.preset <name>` writes into params.yaml.

params.yaml's stage sections always hold the values that run: a stage reads its section and nothing else, so
`dvc exp run -S dpo.lr=5e-6` changes what Stage 3 trains with and `dvc params diff` / `dvc exp show` record what
ran. The `presets:` block names, for each preset, the values that differ between presets (`embedded`: the tiny
CPU run; `real`: Qwen2.5-7B on a CUDA GPU). Every preset lists the same keys, so switching is a round trip, and
every preset's values are validated against their section's model whenever params are read, so a typo under
`presets.real` is an error while the embedded preset runs, not at the first GPU hour.

The top-level `preset:` names the preset the sections were last written from. It selects how strict the
guardrails are (`is_real`), and it must agree with `model.name` (the embedded base vs a hub model), so editing
only `preset:` (`-S preset=real`) is an error that names the command.
"""
from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from . import params
from .errors import ParamsError

PRESETS = params.PRESETS
BLOCK = "presets"


def section_models() -> dict[str, type[BaseModel]]:
    """Every params.yaml section and the model that validates it."""
    from .base_model import ModelParams
    from .data.dpo_pairs import DpoPairsParams
    from .data.hfdata import Stage1DataParams
    from .data.market import MarketParams
    from .data.reasoning_logs import Stage2DataParams
    from .data.snapshot import SnapshotParams
    from .data.synthetic import SynthesizeParams
    from .evaluation.config import EvaluateParams
    from .export.config import ExportParams
    from .training.dpo import DPOParams
    from .training.layouts import TrainSetup
    from .training.sft import SFTParams, Stage2Params

    return {"paths": params.Paths, "market": MarketParams, "snapshots": SnapshotParams,
            "synthesize": SynthesizeParams, "stage2_data": Stage2DataParams, "dpo_pairs": DpoPairsParams,
            "stage1_data": Stage1DataParams, "model": ModelParams, "train": TrainSetup, "stage1": SFTParams,
            "stage2": Stage2Params, "dpo": DPOParams, "export": ExportParams, "evaluate": EvaluateParams}


def _leaves(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"dpo": {"lr": 1}} -> {"dpo.lr": 1}: one entry per value a preset sets (lists stay whole)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_leaves(value, name + "."))
        else:
            out[name] = value
    return out


def values(raw: Mapping, name: str) -> dict:
    """The `presets.<name>` block: section -> the values that preset sets."""
    block = raw.get(BLOCK)
    if not isinstance(block, Mapping) or name not in block:
        raise ParamsError(f"params.yaml: {BLOCK}.{name}: missing (presets: {list(PRESETS)})")
    return block[name] or {}


def applied(raw: Mapping, name: str) -> dict:
    """A copy of `raw` with preset `name` written into its sections (what `stages.preset` writes)."""
    if name not in PRESETS:
        raise ParamsError(f"unknown preset {name!r}: choose one of {list(PRESETS)}")
    out = copy.deepcopy(dict(raw))
    for section, over in values(raw, name).items():
        out[section] = params.merge(out.get(section) or {}, over) if isinstance(over, Mapping) else over
    out["preset"] = name
    return out


def check(raw: Mapping, where: str = "params.yaml") -> None:
    """Validate the `presets:` block and the `preset:` key; raise ParamsError naming the key at fault."""
    block = raw.get(BLOCK)
    if block is None:
        return  # a params file without presets (tests, a user's own file): nothing to switch between
    if not isinstance(block, Mapping) or set(block) != set(PRESETS):
        raise ParamsError(f"{where}: {BLOCK}: must hold exactly {list(PRESETS)}, got {list(block or [])}")
    models = section_models()
    keys: dict[str, set[str]] = {}
    for name in PRESETS:
        over = values(raw, name)
        if not isinstance(over, Mapping):
            raise ParamsError(f"{where}: {BLOCK}.{name}: must be a mapping of sections")
        for section, section_values in over.items():
            if section not in models:
                raise ParamsError(f"{where}: {BLOCK}.{name}.{section}: no such section (sections: {list(models)})")
            if section not in raw:
                raise ParamsError(f"{where}: {BLOCK}.{name}.{section}: params.yaml has no `{section}` section")
            merged = params.merge(raw[section], section_values)
            try:
                models[section].model_validate(merged)
            except ValidationError as err:
                raise ParamsError(params.format_error(f"{BLOCK}.{name}.{section}", err, where)) from None
        keys[name] = set(_leaves(over))
    first, *rest = PRESETS
    for name in rest:
        if keys[name] != keys[first]:
            only = sorted(keys[first] ^ keys[name])
            raise ParamsError(f"{where}: {BLOCK}.{first} and {BLOCK}.{name} must set the same keys, so switching "
                              f"presets is a round trip; set in one only: {only}")
    check_preset_matches(raw, where)


def check_everything(raw: Mapping, where: str = "params.yaml") -> list[str]:
    """Every section validated as it stands and no key outside them, for `raw` as `params.read_raw` returns it
    (which ran `check`: both presets and `preset:`): what the `params` stage runs before any other, so a bad value
    fails before DVC removes a stage's outs. Returns the sections."""
    models = section_models()
    unknown = sorted(set(raw) - set(models) - {"preset", BLOCK})
    if unknown:
        raise ParamsError(f"{where}: {', '.join(unknown)}: no such section (sections: {list(models)}; `preset` "
                          f"and `{BLOCK}` hold the presets)")
    for section, model in models.items():
        try:
            model.model_validate(params.section_values(raw, section))
        except ValidationError as err:
            raise ParamsError(params.format_error(section, err, where)) from None
    return list(models)


def check_preset_matches(raw: Mapping, where: str = "params.yaml") -> None:
    """`preset:` must not contradict the sections: model.name may not be the other preset's model."""
    preset = params.preset_of(raw)
    model = (raw.get("model") or {}).get("name")
    for other in PRESETS:
        other_model = (values(raw, other).get("model") or {}).get("name")
        if other != preset and model is not None and str(model) == str(other_model):
            raise ParamsError(
                f"{where}: preset: {preset}, but model.name is {model!r}, the {other} preset's model. `preset:` only "
                f"records which preset the sections hold; switch presets with `python -m stages.preset {other}` "
                f"(or `{preset}`), which writes all of the preset's values")


def diff(raw: Mapping, name: str) -> dict[str, tuple[Any, Any]]:
    """Keys whose current value differs from preset `name`: dotted key -> (current, preset)."""
    current = _leaves({s: raw.get(s) for s in values(raw, name)})
    wanted = _leaves(values(raw, name))
    return {k: (current.get(k), v) for k, v in wanted.items() if current.get(k) != v}


def write(path: str | os.PathLike, name: str) -> dict[str, tuple[Any, Any]]:
    """Write preset `name` into the params file's sections (comments and order kept); returns what changed."""
    from . import atomic

    path = Path(path)
    raw = params.read_raw(path)
    target = applied(raw, name)
    check(target, str(path))
    changed = diff(raw, name)
    if raw.get("preset") != name:
        changed["preset"] = (raw.get("preset"), name)
    yaml = params.yaml_rt()
    with path.open(encoding="utf-8") as f:
        doc = yaml.load(f)
    for dotted, (_, value) in changed.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for p in parents:
            if p not in node:
                node[p] = {}
            node = node[p]
        node[leaf] = copy.deepcopy(value)
    buf = io.StringIO()
    yaml.dump(doc, buf)
    atomic.write_text(path, buf.getvalue())
    return changed

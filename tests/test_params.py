"""params.yaml: sections hold the values that run; presets are written into them, validated on every read."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from kospi_ft import params, presets
from kospi_ft.errors import ParamsError


class Demo(params.Section):
    epochs: int
    lr: float
    name: str = "x"


RAW = {"preset": "embedded", "demo": {"epochs": 1, "lr": 0.1}}


def test_cli_overrides_win_and_none_is_ignored():
    assert params.load("demo", Demo, raw=RAW, overrides={"epochs": 5, "lr": None}).epochs == 5


@pytest.mark.parametrize("raw,pattern", [
    ({**RAW, "demo": {"epochs": 1, "lr": 0.1, "lrr": 2}}, r"demo\.lrr: Extra inputs are not permitted"),
    ({**RAW, "demo": {"epochs": "many", "lr": 0.1}}, r"demo\.epochs: .*integer.*\(got 'many'\)"),
    ({**RAW, "demo": {"lr": 0.1}}, r"demo\.epochs: Field required"),
    ({"preset": "embedded"}, r"missing section `demo`"),
])
def test_errors_name_the_key(raw, pattern):
    with pytest.raises(ParamsError, match=pattern):
        params.load("demo", Demo, raw=raw)


def test_update_keeps_comments(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("# top comment\ndemo:\n  epochs: 1   # why one\n  lr: 0.1\n")
    params.update(p, "demo.epochs", 4)
    text = p.read_text()
    assert "# top comment" in text and "epochs: 4   # why one" in text
    with pytest.raises(ParamsError, match="demo.nope"):
        params.update(p, "demo.nope", 1)


def test_shipped_paths_load():
    paths = params.load_paths()
    assert paths.market_dir.as_posix() == "data/market_daily"


def test_paths_resolve_against_the_params_files_dir(tmp_path, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    shutil.copy("params.yaml", project / "params.yaml")
    # From the project root, as dvc runs the stages: the paths exactly as written, whichever way the file is named.
    monkeypatch.chdir(project)
    for name in ("params.yaml", project / "params.yaml"):
        assert params.load_paths(name).market_dir.as_posix() == "data/market_daily"
    monkeypatch.chdir(elsewhere)
    raw = params.read_raw(project / "params.yaml")
    paths = params.load_paths(raw=raw)
    assert paths.market_dir == project / "data/market_daily" and paths.models_dir == project / "models"
    assert params.load_paths("../project/params.yaml").stage1_data.as_posix() == "../project/data/stage1/train.jsonl"
    (project / "models" / "base").mkdir(parents=True)
    assert params.local_dir_or_id(raw, "models/base") == str(project / "models" / "base")
    assert params.local_dir_or_id(raw, "unsloth/Qwen2.5-7B-Instruct") == "unsloth/Qwen2.5-7B-Instruct"


def test_a_stage_run_from_another_dir_with_kospi_ft_params_writes_into_the_project(tmp_path):
    """`KOSPI_FT_PARAMS=<project>/params.yaml python -m stages.market` from elsewhere: the market tree and its
    metrics land in the project, nothing in the cwd."""
    import os
    from pathlib import Path

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    shutil.copy("params.yaml", project / "params.yaml")
    params.update(project / "params.yaml", "market.start", "2024-01")  # two months: a second to simulate
    params.update(project / "params.yaml", "market.end", "2024-02")
    env = {**os.environ, "KOSPI_FT_PARAMS": str(project / "params.yaml"),
           "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "stages.market"], cwd=elsewhere, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (project / "data" / "market_daily" / "year=2024").iterdir()) == ["month=1",
                                                                                                    "month=2"]
    assert (project / "metrics" / "market_ingest.json").is_file()
    assert list(elsewhere.iterdir()) == []


# --- presets ----------------------------------------------------------------------------------------------------

def shipped_copy(tmp_path):
    target = tmp_path / "params.yaml"
    shutil.copy("params.yaml", target)
    return target


def test_shipped_sections_hold_the_named_preset_and_every_section_validates():
    raw = params.read_raw()
    assert presets.diff(raw, raw["preset"]) == {}
    for name in presets.PRESETS:
        applied = presets.applied(raw, name)
        for section, model in presets.section_models().items():
            params.load(section, model, raw=applied)  # every section of every preset is valid as it runs


def test_switching_presets_is_a_byte_identical_round_trip(tmp_path):
    target = shipped_copy(tmp_path)
    original = target.read_bytes()
    changed = presets.write(target, "real")
    assert changed["model.name"] == ("models/base", "unsloth/Qwen2.5-7B-Instruct")
    text = target.read_text()
    assert "preset: real" in text and "# Stage 3 DPO (paths.dpo_pairs)" in text  # comments survive
    assert params.read_raw(target)["dpo"]["lr"] == 5e-6
    assert presets.write(target, "embedded") and target.read_bytes() == original


def test_a_set_value_is_the_value_that_runs_under_either_preset(tmp_path):
    """`dvc exp run -S dpo.lr=...` edits the section: under the real preset nothing overrides it any more."""
    from kospi_ft.training.dpo import DPOParams
    from kospi_ft.training.sft import Stage2Params

    target = shipped_copy(tmp_path)
    for name in presets.PRESETS:
        presets.write(target, name)
        params.update(target, "dpo.lr", 1.5e-6)
        params.update(target, "stage2.epochs", 5)
        raw = params.read_raw(target)
        assert params.load("dpo", DPOParams, raw=raw).lr == 1.5e-6
        assert params.load("stage2", Stage2Params, raw=raw).epochs == 5


def test_dvc_stages_track_only_section_keys():
    """No stage that builds an artifact reads the presets block or `preset:`; only the `params` stage tracks the
    whole file, which it validates (its out does not change with the values)."""
    stages = YAML(typ="safe").load(open("dvc.yaml", encoding="utf-8"))["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for key in body.get("params", []):
            if isinstance(key, dict):
                assert name == "params" and key == {"params.yaml": None}, (name, key)
                continue
            assert not re.match(r"(real|presets)\b", key) and key != "preset", (name, key)
    assert stages["params"]["params"] == [{"params.yaml": None}]


@pytest.mark.parametrize("preset", presets.PRESETS)
def test_a_typo_in_any_preset_is_an_error_under_every_preset(tmp_path, preset):
    target = shipped_copy(tmp_path)
    text = target.read_text().replace("      lr: 5.0e-6\n", "      lrr: 5.0e-6\n")  # presets.real.dpo
    target.write_text(text)
    if preset == "real":
        with pytest.raises(ParamsError, match=r"presets\.real\.dpo\.lrr: Extra inputs are not permitted"):
            presets.write(target, "real")
        return
    with pytest.raises(ParamsError, match=r"presets\.real\.dpo\.lrr: Extra inputs are not permitted"):
        params.read_raw(target)  # what every stage does first, under the embedded preset


def test_presets_must_set_the_same_keys(tmp_path):
    target = shipped_copy(tmp_path)
    params.update(target, "presets.embedded.dpo.lr", 5.0e-5)  # still fine
    doc = YAML(typ="rt").load(target.read_text())
    del doc["presets"]["embedded"]["dpo"]["lr"]
    with target.open("w") as f:
        YAML(typ="rt").dump(doc, f)
    with pytest.raises(ParamsError, match=r"must set the same keys.*\['dpo\.lr'\]"):
        params.read_raw(target)


def test_editing_only_the_preset_key_is_an_error_naming_the_command(tmp_path):
    target = shipped_copy(tmp_path)
    params.update(target, "preset", "real")  # what `dvc exp run -S preset=real` would do
    with pytest.raises(ParamsError, match=r"python -m stages\.preset"):
        params.read_raw(target)


def test_preset_command_writes_and_checks(tmp_path):
    target = shipped_copy(tmp_path)
    run = [sys.executable, "-m", "stages.preset"]
    out = subprocess.run([*run, "real", "--params", str(target)], capture_output=True, text=True, check=True).stdout
    assert "dpo.lr: 0.001 -> 5e-06" in out and "model.backend: 'auto' -> 'unsloth'" in out
    params.update(target, "dpo.beta", 0.3)
    out = subprocess.run([*run, "--check", "--params", str(target)], capture_output=True, text=True, check=True).stdout
    assert "hold preset 'real'" in out and "dpo.beta" not in out  # beta is not a preset value
    params.update(target, "dpo.lr", 1e-6)
    out = subprocess.run([*run, "--check", "--params", str(target)], capture_output=True, text=True, check=True).stdout
    assert "dpo.lr: 1e-06 (preset real: 5e-06)" in out
    r = subprocess.run([*run, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "real" in r.stdout


def _imports(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere (function-level imports included)."""
    import ast

    modules = {".".join(f.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): f
               for f in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        here = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module or ""
                found = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            deps |= {d for d in found if d in modules and d != name}
        graph[name] = deps
    return graph


def test_the_package_has_no_import_cycle_and_params_knows_no_section():
    """Function-level imports count: a cycle through them is still a cycle (params -> presets -> every section ->
    params was one). The package root, which wires presets' check into params, is left out as a target."""
    graph = _imports(Path(params.__file__).parent)
    assert graph["kospi_ft.params"] - {"kospi_ft"} <= {"kospi_ft.errors", "kospi_ft.atomic"}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node] - {"kospi_ft"}):
            assert state.get(dep) != 1, f"import cycle: {' -> '.join(path[path.index(dep):] + [dep])}"
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # Every read still checks the presets, through the check the package registered.
    assert presets.check in params.RAW_CHECKS

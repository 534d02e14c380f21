"""`dvc repro` drives the market and snapshots stages; an unchanged second repro runs nothing."""
import json

import pytest

from conftest import copy_project, dvc
from kospi_ft import params


@pytest.mark.slow
def test_market_and_snapshots_under_dvc_repro(tmp_path):
    proj = copy_project(tmp_path / "proj")
    params.update(proj / "params.yaml", "market.start", "2021-01")
    params.update(proj / "params.yaml", "market.end", "2021-06")
    params.update(proj / "params.yaml", "snapshots.start_date", "2021-01-01")
    r = dvc(proj, "repro", "snapshots")
    assert "Running stage 'market'" in r.stdout and "Running stage 'snapshots'" in r.stdout
    counts = json.loads((proj / "metrics/regimes.json").read_text())["regime_days"]
    assert counts["total"] > 100
    again = dvc(proj, "repro", "snapshots")
    assert "Running stage" not in again.stdout
    # a snapshots-only param reruns snapshots, not the market simulator
    params.update(proj / "params.yaml", "snapshots.start_date", "2021-02-01")
    third = dvc(proj, "repro", "snapshots")
    assert "Running stage 'snapshots'" in third.stdout and "Running stage 'market'" not in third.stdout
    shown = dvc(proj, "metrics", "show", "--json")
    assert "regime_days" in shown.stdout


@pytest.mark.slow
def test_dvc_add_of_the_users_tree_then_repro_under_the_real_preset(tmp_path):
    """The README's steps: your tree in data/krx_source, `dvc add data/krx_source`, preset real, `dvc repro`."""
    import datetime as dt
    import subprocess
    import sys

    from kospi_ft.data.simulate import SimConfig, simulate, write_vendor_tree

    proj = copy_project(tmp_path / "proj")
    assert not (proj / "data/krx_source").exists()  # nothing tracked in it: `dvc add` must not refuse
    write_vendor_tree(simulate(SimConfig(dt.date(2021, 1, 1), dt.date(2021, 2, 28), seed=2)),
                      proj / "data/krx_source", "seed", missing_close=0.01)
    dvc(proj, "add", "data/krx_source")
    assert (proj / "data/krx_source.dvc").is_file() and "/krx_source" in (proj / "data/.gitignore").read_text()
    subprocess.run([sys.executable, "-m", "stages.preset", "real"], cwd=proj, check=True, capture_output=True)
    r = dvc(proj, "repro", "market")
    assert "Running stage 'market'" in r.stdout
    ingest = json.loads((proj / "metrics/market_ingest.json").read_text())
    assert ingest["source"] == "krx" and ingest["rows_dropped"]["missing_close"] > 0 and ingest["months"] == 2
    assert "Running stage" not in dvc(proj, "repro", "market").stdout

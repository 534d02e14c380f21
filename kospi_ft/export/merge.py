"""Merge a PEFT LoRA adapter into a 16-bit copy of the base and save an HF dir ready for GGUF conversion.

The base is always loaded from its unquantized weights in `dtype` (bf16 by default, Qwen2.5's native type),
never from a 4-bit copy: an adapter trained with QLoRA (unsloth / bitsandbytes NF4) is merged into the
full-precision matrices, as merging into NF4 weights would bake the 4-bit rounding into the export.
Without an adapter (the "base" export used by evaluation) nothing is loaded or saved: `base_view` links the
base's own safetensors into the scratch dir beside the training tokenizer (a 7B base: 15 GB not written again).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import PipelineError
from ..tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")
ADAPTER_CONFIG = "adapter_config.json"

def check_adapter_dir(adapter_dir: Path) -> dict:
    """The adapter's PEFT config; a clear error naming the path when it is missing or not an adapter."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise PipelineError(f"{adapter_dir}: adapter dir not found (run the training stage that writes it first)")
    config_file = adapter_dir / ADAPTER_CONFIG
    if not config_file.is_file():
        raise PipelineError(f"{config_file}: missing; {adapter_dir} is not a PEFT adapter dir")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PipelineError(f"{config_file}: invalid JSON ({err})") from err


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise PipelineError(f"export.merge_dtype: {dtype!r} is not one of {DTYPES}")
    return getattr(torch, dtype)


def _revision(revision: str | None) -> dict:
    return {} if revision is None else {"revision": revision}


def check_unquantized(base: str | Path, revision: str | None = None) -> None:
    """Refuse a pre-quantized checkpoint: its weights are not the real base."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(base), **_revision(revision))
    except OSError as err:
        raise PipelineError(f"base model {str(base)!r} could not be loaded: {err}") from err
    if getattr(config, "quantization_config", None):
        raise PipelineError(
            f"base model {str(base)!r} is a quantized checkpoint; merging needs the unquantized 16-bit weights "
            "(set model.name to the full-precision repo, e.g. unsloth/Qwen2.5-7B-Instruct)")


def load_base(base: str | Path, dtype: str, revision: str | None = None):
    """The base model in `dtype`, refusing a pre-quantized checkpoint."""
    from transformers import AutoModelForCausalLM

    check_unquantized(base, revision)
    return AutoModelForCausalLM.from_pretrained(str(base), dtype=_torch_dtype(dtype), **_revision(revision))


#: What the converter reads from a model dir besides the tokenizer (which comes from `load_tokenizer`).
WEIGHT_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


def local_model_dir(base: str | Path, revision: str | None = None) -> Path:
    """The folder holding the base's files: the dir itself, or the hub snapshot (downloaded once, then cached)."""
    if Path(base).is_dir():
        return Path(base)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(base), **_revision(revision),
                                      allow_patterns=[*WEIGHT_FILES, "*.safetensors"]))
    except Exception as err:  # noqa: BLE001 - offline, no such repo or revision
        raise PipelineError(f"base model {str(base)!r}: cannot get its safetensors ({err})") from None


def base_view(base: str | Path, out_dir: Path, revision: str | None = None) -> Path:
    """An HF dir for the converter made of links to the base's own weights plus the training tokenizer: the
    base export converts the weights as they are stored, without loading or re-saving them."""
    check_unquantized(base, revision)
    src = local_model_dir(base, revision)
    weights = sorted(src.glob("*.safetensors"))
    if not weights:
        raise PipelineError(f"{src}: no *.safetensors weights to convert (a PyTorch .bin checkpoint? re-save it "
                            f"with save_pretrained(safe_serialization=True))")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in [*weights, *(src / name for name in WEIGHT_FILES)]:
        if f.is_file():
            (out_dir / f.name).symlink_to(f.resolve())
    # load_tokenizer pins the training chat template, pad and eos, so the GGUF carries exactly those.
    load_tokenizer(base, revision=revision).save_pretrained(out_dir)
    return out_dir


def merge_to_hf(base: str | Path, adapter_dir: Path | None, out_dir: Path, dtype: str = "bfloat16",
                revision: str | None = None) -> Path:
    """Write base (+ merged adapter) as safetensors with the tokenizer and the training chat template."""
    from peft import PeftModel

    out_dir = Path(out_dir)
    adapter_config = check_adapter_dir(adapter_dir) if adapter_dir is not None else None
    model = load_base(base, dtype, revision)
    if adapter_config is not None:
        trained_on = adapter_config.get("base_model_name_or_path")
        if trained_on and str(trained_on) != str(base):
            # Expected with QLoRA: unsloth records its bnb-4bit repo; we merge into the 16-bit weights instead.
            logger.info("adapter %s was trained on %s; merging into %s (%s)", adapter_dir, trained_on, base, dtype)
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    # The adapter dir carries the tokenizer training used; fall back to the base's.
    from_adapter = adapter_dir is not None and (Path(adapter_dir) / "tokenizer_config.json").is_file()
    # load_tokenizer pins the training chat template, pad and eos, so the GGUF carries exactly those.
    tokenizer = load_tokenizer(adapter_dir) if from_adapter else load_tokenizer(base, revision=revision)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir

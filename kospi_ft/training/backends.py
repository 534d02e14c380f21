"""Model loading for training: the `unsloth` and `hf` backends, the spec's LoRA, and device helpers.

- unsloth (CUDA): FastLanguageModel, 4-bit NF4 base, unsloth's fused LoRA kernels and its offloaded gradient
  checkpointing (`use_gradient_checkpointing="unsloth"`), which is what keeps a 7B QLoRA step at seq 2048 near 7 GiB.
- hf: transformers + PEFT. On CUDA a bitsandbytes 4-bit NF4 base (double quant, bf16 compute) with gradient
  checkpointing; on CPU a plain fp32 model without checkpointing (bf16 on an AVX2 CPU is ~2.3x slower, and
  checkpointing only trades speed for memory a tiny model does not need).
- auto: unsloth when CUDA is present and unsloth is installed, else hf (see `resolve_backend` for what is an error).
Both backends apply the same LoRA (rank, alpha, dropout, the 7 projection modules).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from ..errors import ParamsError, PipelineError
from ..params import Section
from ..tokenizer import configure as configure_tokenizer
from ..tokenizer import load_tokenizer
from .distributed import local_rank

log = logging.getLogger(__name__)

# Every linear layer of a Qwen2 decoder block: attention q/k/v/o and the SwiGLU MLP (28 layers x 7 = 196 adapters).
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Resolved = Literal["unsloth", "hf"]
# A layout's checkpointing as unsloth's use_gradient_checkpointing: offloaded recompute, plain recompute, none.
UNSLOTH_CHECKPOINTING = {"unsloth": "unsloth", "on": True, "off": False}


class LoraParams(Section):
    """The spec's LoRA: r 32, alpha 16 (scale alpha/r = 0.5), dropout 0, all 7 projections."""

    lora_rank: int = Field(32, gt=0)
    lora_alpha: int = Field(16, gt=0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = TARGET_MODULES

    @field_validator("target_modules")
    @classmethod
    def _known_modules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in value if m not in TARGET_MODULES]
        if unknown:
            raise ValueError(f"unknown module name(s) {unknown}; a Qwen2 block has {list(TARGET_MODULES)}")
        if not value:
            raise ValueError(f"at least one module is needed, from {list(TARGET_MODULES)}")
        return value


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def no_cuda_reason() -> str:
    """Why torch sees no GPU, in words a user can act on."""
    import torch

    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build (install the CUDA stack: "
                f"`pip install -r requirements-cuda.txt`)")
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU: check `nvidia-smi`, the driver "
            f"and CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!s}")


def resolve_backend(requested: str, allow_cpu: bool = True, strict: bool = False) -> Resolved:
    """The backend to train with; never a quiet downgrade a user did not ask for.

    - No CUDA: only the hf backend on the CPU, and only with `allow_cpu` (a 7B model in fp32 needs ~30 GB of RAM
      and runs for months); otherwise a ParamsError that names the fix.
    - auto: unsloth when CUDA and unsloth are both there. CUDA without unsloth falls back to hf (3.4x slower on an
      H200) with a warning, or is an error when `strict` (the real preset): asking for `hf` is explicit.
    """
    has_cuda = cuda_available()
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested not in ("auto", "unsloth", "hf"):
        raise ParamsError(f"params.yaml: model.backend: must be auto, unsloth or hf, got {requested!r}")
    if not has_cuda:
        if requested == "unsloth":
            raise ParamsError(f"params.yaml: model.backend: unsloth needs a CUDA GPU, and {no_cuda_reason()}; "
                              "to train on the CPU instead set model.backend: hf and model.allow_cpu: true")
        if not allow_cpu:
            raise ParamsError(f"params.yaml: model.allow_cpu is false and {no_cuda_reason()}; to train on the CPU "
                              "anyway set model.allow_cpu: true (a 7B model: ~30 GB of RAM, fp32, months)")
        return "hf"
    if requested == "hf":
        return "hf"
    if not has_unsloth:
        fix = "pip install -r requirements-cuda.txt, or set model.backend: hf to train without unsloth"
        if requested == "unsloth":
            raise ParamsError(f"params.yaml: model.backend: unsloth is not installed ({fix})")
        if strict:
            raise ParamsError(f"params.yaml: model.backend: auto found CUDA but not unsloth; the real preset does "
                              f"not fall back to the 3.4x slower hf backend on its own ({fix})")
        log.warning("unsloth is not installed: training on the hf backend, 3.4x slower on an H200 (%s)", fix)
        return "hf"
    return "unsloth"


def prepare_backend(requested: str, allow_cpu: bool = True, strict: bool = False) -> Resolved:
    """Resolve the backend and, for unsloth, import it now: it must patch transformers/TRL before they load."""
    backend = resolve_backend(requested, allow_cpu=allow_cpu, strict=strict)
    if backend == "unsloth":
        import unsloth  # noqa: F401
        import torch

        # On H100/H200 with torch 2.11 SDPA picks cuDNN attention, which builds a plan per sequence length and ran
        # slower than the flash kernel here: 7B QLoRA, seq 2048 x 2, ga 8, H200: 8.9k -> 10.3k tok/s (wrapped
        # packing), 5.2k -> 8.1k (bfd, one SDPA call per document). Flash needs no per-length plan.
        torch.backends.cuda.enable_cudnn_sdp(False)
    log.info("training backend: %s (requested %s, CUDA %s)", backend, requested, cuda_available())
    return backend


def load_base(name: str, backend: Resolved, max_seq_length: int, load_in_4bit: bool = True,
              revision: str | None = None, checkpointing: str = "unsloth"):
    """(model, tokenizer) for the base model `name` (local dir, or hub id at `revision`), ready for LoRA.

    `checkpointing` (unsloth: unsloth|on|off): what the training layout chose; the hf backend's recompute is
    switched on by the Trainer (see common.trainer_arguments)."""
    import torch

    if backend == "unsloth":
        from unsloth import FastLanguageModel

        # A pinned revision names a commit of `name` itself: unsloth would otherwise load its own pre-quantized
        # mirror repo, where that commit does not exist, and drop the pin (it quantizes the 16-bit weights on load
        # instead, the same weights the export merges into).
        pin = {} if revision is None else {"revision": revision, "use_exact_model_name": True}
        model, tokenizer = FastLanguageModel.from_pretrained(
            name, max_seq_length=max_seq_length, load_in_4bit=load_in_4bit, dtype=torch.bfloat16,
            use_gradient_checkpointing=UNSLOTH_CHECKPOINTING[checkpointing], **pin)
        return model, configure_tokenizer(tokenizer)

    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(name, revision=revision)
    if cuda_available():
        # One whole model per DDP process on its own GPU (device_map="auto" would split one model across the
        # GPUs and run as a single process).
        kwargs = dict(dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": local_rank()})
        if load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        kwargs = dict(dtype=torch.float32, attn_implementation="sdpa")
    if revision is not None:
        kwargs["revision"] = revision
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as err:
        raise PipelineError(f"base model {name!r} could not be loaded (params.yaml model.name): {err}") from err
    if cuda_available() and load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # Freezes the 4-bit base and upcasts norms to fp32; recompute is the layout's (the Trainer turns it on).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, tokenizer


def attach_lora(model, lora: LoraParams, backend: Resolved, seed: int, checkpointing: str = "unsloth",
                kept_layers: int = 0):
    """A fresh LoRA adapter (B = 0, so the model starts exactly as the base); unsloth applies `checkpointing`, with
    `kept_layers` decoder layers keeping their activations instead of recomputing them."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(
            model, r=lora.lora_rank, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout, bias="none",
            target_modules=list(lora.target_modules),
            use_gradient_checkpointing=UNSLOTH_CHECKPOINTING[checkpointing], random_state=seed,
            checkpoint_skip_layers=kept_layers)
    import torch
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # LoRA A init: same seed -> bit-identical adapters
        return get_peft_model(model, LoraConfig(
            r=lora.lora_rank, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout, bias="none",
            target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))


def load_adapter(model, adapter_dir: Path, backend: Resolved, trainable: bool = True,
                 checkpointing: str = "unsloth", kept_layers: int = 0):
    """Load a saved adapter onto `model`; trainable=True continues training it (Stage 2 on Stage 1, DPO on Stage 2).
    `checkpointing`, `kept_layers`: as attach_lora's."""
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise PipelineError(f"{adapter_dir}: no adapter_config.json (run the stage that writes this adapter first)")
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        # What FastLanguageModel.get_peft_model does after creating an adapter: swap in unsloth's fused LoRA
        # MLP/QKV kernels and its offloaded gradient checkpointing. Without it the loaded adapter runs unsloth's
        # base model through plain PEFT layers (slower, more memory).
        model = FastLanguageModel.patch_peft_model(
            model, use_gradient_checkpointing=UNSLOTH_CHECKPOINTING[checkpointing])
        if kept_layers:
            # What get_peft_model(checkpoint_skip_layers=K) runs after patch_peft_model.
            from unsloth.models._utils import skip_checkpointing

            skip_checkpointing(model, kept_layers)
    return model


def adapter_config(adapter_dir: Path) -> dict:
    import json

    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))


def reset_peak_memory() -> None:
    if cuda_available():
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float:
    """Peak GPU memory allocated by torch on CUDA; on CPU the process's peak resident set size."""
    if cuda_available():
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB

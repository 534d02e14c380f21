"""The base model: params section `model`, and the embedded tiny random-init Qwen2 built for the default preset.

The embedded base has Qwen2.5's architecture and the real Qwen tokenizer, only tiny: hidden 256, intermediate 512,
2 layers. Both sizes are multiples of 256 so llama.cpp's Q4_K (256-wide super-blocks) really quantizes its
matrices at export. Its embedding rows are the tokenizer's 151,669 tokens padded up to a multiple of 128, as the
released Qwen2.5 checkpoints pad theirs (151,936 / 152,064 rows).
The real preset sets `name` to a hub id: nothing is built, and `record_hub_base` pins the commit that
`model.revision` names in `models/base/source.json`, which every later stage loads (`resolve_base`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import Field, model_validator

from . import atomic
from .errors import PipelineError
from .params import Section
from .tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID, load_tokenizer

Backend = Literal["auto", "unsloth", "hf"]


class TinyShape(Section):
    """Shape of the embedded random-init Qwen2ForCausalLM."""

    hidden_size: int = Field(256, gt=0)
    intermediate_size: int = Field(512, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    num_key_value_heads: int = Field(2, gt=0)
    vocab_multiple: int = Field(128, gt=0)
    max_position_embeddings: int = Field(32768, gt=0)

    @model_validator(mode="after")
    def _check(self):
        if self.hidden_size % 256 or self.intermediate_size % 256:
            raise ValueError("hidden_size and intermediate_size must be multiples of 256 (llama.cpp Q4_K blocks)")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        return self


class ModelParams(Section):
    """params.yaml `model`: which base model every stage trains on, and with which backend."""

    name: str  # a local HF dir (embedded: models/base) or a hub id (real: unsloth/Qwen2.5-7B-Instruct)
    revision: str | None = None  # hub id only: a branch, tag or commit, pinned to its commit in models/base
    backend: Backend = "auto"
    allow_cpu: bool = True  # False: training without a visible CUDA GPU is an error (the real preset)
    load_in_4bit: bool = True  # CUDA only (QLoRA NF4); CPU always trains in fp32
    seed: int = 0
    tiny: TinyShape = TinyShape()


def load_params(raw) -> ModelParams:
    """params.yaml `model`, a local `name` (embedded: models/base) resolved against the project: the project's
    base, wherever a stage runs from (KOSPI_FT_PARAMS, --params)."""
    from . import params

    model = params.load("model", ModelParams, raw=raw)
    return model.model_copy(update={"name": params.local_dir_or_id(raw, model.name)})


def padded_vocab_size(n_tokens: int, multiple: int) -> int:
    return -(-n_tokens // multiple) * multiple


def build_tiny_model(shape: TinyShape, seed: int, tokenizer):
    """A deterministic random-init Qwen2ForCausalLM sized for `tokenizer` (same seed -> same weights)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=padded_vocab_size(len(tokenizer), shape.vocab_multiple),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,  # as Qwen2.5-0.5B; keeps the 151k x hidden matrix single
        bos_token_id=PAD_TOKEN_ID,  # Qwen2.5 config.json: bos = <|endoftext|>, never prepended
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        torch_dtype="float32",
    )
    # fork_rng keeps the caller's global RNG untouched; the seed alone fixes every weight.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = [EOS_TOKEN_ID, PAD_TOKEN_ID]
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    return model


def write_base_model(params: ModelParams, out_dir: Path) -> dict:
    """Build the embedded base and save it with tokenizer + chat template to `out_dir` atomically."""
    tokenizer = load_tokenizer()
    model = build_tiny_model(params.tiny, params.seed, tokenizer)
    with atomic.atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.config.vocab_size,
        "hidden_size": model.config.hidden_size,
        "layers": model.config.num_hidden_layers,
    }


SOURCE_FILE = "source.json"
_COMMIT = re.compile(r"[0-9a-f]{40}")


class BaseRef(NamedTuple):
    """The base model every stage loads: a local dir (revision None) or a hub repo at one commit."""

    name: str
    revision: str | None = None


def resolve_commit(name: str, revision: str) -> str:
    """The commit sha a hub revision names: asked of the hub, else read from the local HF cache (offline)."""
    if _COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi, snapshot_download

    try:
        return HfApi().model_info(name, revision=revision).sha
    except Exception as online:  # noqa: BLE001 - offline, unknown repo or revision: try the cache, then explain
        try:
            folder = snapshot_download(name, revision=revision, local_files_only=True, allow_patterns=["config.json"])
            return Path(folder).name
        except Exception:  # noqa: BLE001
            raise PipelineError(
                f"params.yaml: model.revision: cannot resolve {revision!r} of {name} to a commit ({online}); "
                f"without hub access set model.revision to the repo's 40-hex commit sha") from None


def record_hub_base(params: ModelParams, out_dir: Path) -> dict:
    """Write models/base/source.json: the hub repo and the commit later stages load (`resolve_base`), or the local
    model dir `model.name` names (a base of your own; it is loaded as it is)."""
    if Path(params.name).is_dir():
        source = {"local_model": str(Path(params.name).resolve())}
    else:
        commit = resolve_commit(params.name, params.revision or "main")
        source = {"hub_model": params.name, "revision": params.revision, "commit": commit}
    with atomic.atomic_path(out_dir, is_dir=True) as tmp:
        atomic.write_json(tmp / SOURCE_FILE, source)
    return source


def resolve_base(params: ModelParams, models_dir: Path) -> BaseRef:
    """The base to load: `model.name` as it is when it is a local dir, else the hub commit recorded in
    models/base/source.json by the base_model stage (so a new `model.revision` reruns what depends on it)."""
    if Path(params.name).is_dir():
        return BaseRef(params.name)
    source_file = Path(models_dir) / "base" / SOURCE_FILE
    try:
        source = json.loads(source_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PipelineError(f"{source_file}: cannot read the recorded hub base ({err}); run `dvc repro base_model`")
    if source.get("hub_model") != params.name or source.get("revision") != params.revision:
        raise PipelineError(f"{source_file} records {source.get('hub_model')}@{source.get('revision')}, params.yaml "
                            f"says {params.name}@{params.revision}: run `dvc repro base_model`")
    return BaseRef(params.name, source["commit"])

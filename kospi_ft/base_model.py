"""The base model: params section `model`, and the embedded tiny random-init Qwen2 built for the default preset.

The embedded base has Qwen2.5's architecture and the real Qwen tokenizer, only tiny: hidden 256, intermediate 512,
2 layers. Both sizes are multiples of 256 so llama.cpp's Q4_K (256-wide super-blocks) really quantizes its
matrices at export. Its embedding rows are the tokenizer's 151,669 tokens padded up to a multiple of 128, as the
released Qwen2.5 checkpoints pad theirs (151,936 / 152,064 rows).
The real preset sets `name` to a hub id and this module is not used to build anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from . import atomic
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
    backend: Backend = "auto"
    allow_cpu: bool = True  # False: training without a visible CUDA GPU is an error (the real preset)
    load_in_4bit: bool = True  # CUDA only (QLoRA NF4); CPU always trains in fp32
    seed: int = 0
    tiny: TinyShape = TinyShape()


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

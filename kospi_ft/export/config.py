"""params.yaml `export`: what to export, how to quantize, the Modelfile's settings and Ollama registration."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..params import Section
from .quantize import QuantType

ModelName = Literal["base", "stage1", "stage2", "stage3"]


class ExportParams(Section):
    # dvc.yaml's `foreach` reads this list; "base" is the untuned base (evaluation's baseline).
    models: list[ModelName] = ["base", "stage2", "stage3"]
    quant: QuantType = "Q4_K_M"
    num_ctx: int = Field(4096, gt=0)        # Modelfile PARAMETER num_ctx
    temperature: float = Field(0.2, ge=0)   # Modelfile PARAMETER temperature
    threads: int = 0                        # llama.cpp threads for quantize + parity; 0 = all cores
    parity_tokens: int = Field(4, ge=1)     # tokens the gate decodes through llama.cpp
    ollama_register: bool = False           # stages/register.py runs `ollama create` only when true
    ollama_prefix: str = "qwen2.5-kospi-ft"  # -> qwen2.5-kospi-ft-s2 / -s3 / -base

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("names must be unique")
        return v

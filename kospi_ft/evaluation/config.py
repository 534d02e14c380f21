"""params.yaml `evaluate`, and how a model name becomes a backend.

A model is referred to by its pipeline name (base, stage2, stage3) or, outside the pipeline, directly:
- llamacpp: a name -> `<paths.gguf_dir>/<name>/model-<export.quant>.gguf`; or a path to any .gguf file.
- ollama:   a name -> the name `stages.register` gives it (`<export.ollama_prefix>-s3`, ...); any other string
            is an Ollama model as it is (`qwen2.5:32b`).
- hf:       `base` -> `model.name`; a name with an adapter in `<paths.models_dir>/<name>` -> that adapter on
            `model.name` too, so base and fine-tunes run on the same weights in the same precision (unsloth records
            its 4-bit mirror as an adapter's base); another adapter dir -> on the base its adapter_config.json
            names; else a HF model dir or hub id as given.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..errors import PipelineError
from ..params import Section
from .backends import (Backend, HFBackend, LlamaCppBackend, OllamaBackend, adapter_base, check_gpu_offload,
                       missing_gguf)

BackendName = Literal["llamacpp", "ollama", "hf"]


class EvaluateParams(Section):
    """Evaluation settings shared by stages `evaluate` (one model per run) and `compare`."""

    # dvc.yaml's `foreach` reads this list: one metrics file per model.
    models: list[str] = ["base", "stage2", "stage3"]
    backend: BackendName = "llamacpp"
    n_samples: int | None = Field(12, ge=1)     # records per model (round-robin over tasks); null = all
    max_new_tokens: int = Field(96, ge=1)
    # The guided pass (kospi_ft.guidance): the first `guided_samples` of the selected records (round-robin over
    # tasks) decoded guided by their task's JSON schema; its metrics go under `guided`. 0: no guided pass.
    guided_samples: int | None = Field(2, ge=0)
    guided_max_new_tokens: int = Field(5120, ge=1)
    # The regime pass: regime_classification asked, guided, on this many of the snapshot store's eval-month days
    # (spread evenly; null = every one; 0 = none): regime accuracy and timing over far more dates than the eval
    # set holds. Metrics under `regime_pass`.
    regime_dates: int | None = Field(0, ge=0)
    rouge: bool = True                          # ROUGE-L vs the reference answer
    # Held-out likelihood (every eval record's reference answer) and preference accuracy/margin (paths.eval_pairs)
    # through transformers + PEFT on the model's weights, whatever `backend` generates with (evaluation.likelihood).
    likelihood: bool = True
    korean_threshold: float = Field(0.5, ge=0.0, le=1.0)  # Hangul share for a rationale to count as Korean
    ollama_url: str = "http://localhost:11434"
    n_ctx: int = Field(8192, ge=256)            # llama.cpp context window (prompt + reply)
    # llama.cpp: replies decoded at once, one batch (continuous: a finished reply's slot takes the next record),
    # each with its own n_ctx of a shared KV cache. A GPU reads the weights once per step whatever the batch holds.
    parallel: int = Field(1, ge=1)
    threads: int = Field(1, ge=0)               # llama.cpp threads; 0 = all cores
    gpu_layers: int = Field(0, ge=-1)           # llama.cpp layers offloaded to the GPU; -1 = all (GPU build only)
    seed: int = 0
    # The trading metrics (kospi_ft.evaluation.trading): each real-snapshot record's exposure and position scores
    # are held for this many trading days after its date. At most synthetic.EMBARGO_TRADING_DAYS, the gap that
    # keeps every eval date's forward window away from the training dates.
    horizon_days: int = Field(20, ge=1)
    base_model: str = "base"                    # the spec's --base-model / --ft-model defaults
    ft_model: str = "stage3"
    # Stage `compare`: deltas after - before for each pair.
    compare: list[tuple[str, str]] = [("stage2", "stage3"), ("base", "stage3")]

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.models)) != len(self.models):
            raise ValueError("models: names must be unique")
        from ..data.synthetic import EMBARGO_TRADING_DAYS

        if self.horizon_days > EMBARGO_TRADING_DAYS:
            raise ValueError(f"horizon_days: {self.horizon_days} is longer than the {EMBARGO_TRADING_DAYS} trading "
                             f"days that separate eval dates from training dates (kospi_ft.data.synthetic), so a "
                             f"training snapshot could contain an eval answer's outcome")
        unknown = sorted({n for pair in self.compare for n in pair} - set(self.models))
        if unknown:
            raise ValueError(f"compare: {unknown} not in models {self.models}")
        return self


@dataclass(frozen=True)
class ModelLocator:
    """Where the pipeline keeps each model, for turning a name into a backend."""

    gguf_dir: Path
    models_dir: Path
    quant: str             # export.quant
    ollama_prefix: str     # export.ollama_prefix
    hf_base: str           # model.name
    require_gpu: bool = False  # the real preset: gpu_layers != 0 without GPU offload is an error, not a warning
    hf_revision: str | None = None  # model.revision (a hub base's commit is read from models/base when hf runs)

    @classmethod
    def from_params(cls, raw: dict) -> "ModelLocator":
        """The locator for a params.yaml (`paths`, `export.quant`, `export.ollama_prefix`, `model.name`)."""
        from .. import params
        from ..base_model import load_params as load_model_params
        from ..export.config import ExportParams

        paths = params.load_paths(raw=raw)
        export = params.load("export", ExportParams, raw=raw)
        model = load_model_params(raw)
        return cls(gguf_dir=paths.gguf_dir, models_dir=paths.models_dir, quant=export.quant,
                   ollama_prefix=export.ollama_prefix, hf_base=model.name, require_gpu=params.is_real(raw),
                   hf_revision=model.revision)

    @staticmethod
    def is_pipeline(ref: str) -> bool:
        """Whether `ref` names one of the pipeline's models (base, stage1, stage2, stage3), not a file or an
        Ollama model of the user's."""
        return ref == "base" or ref.startswith("stage")

    def gguf(self, ref: str) -> Path:
        from ..export.chain import gguf_name

        return Path(ref) if ref.endswith(".gguf") else self.gguf_dir / ref / gguf_name(self.quant)

    def ollama_name(self, ref: str) -> str:
        from ..export.ollama import ollama_model_name

        return ollama_model_name(self.ollama_prefix, ref) if self.is_pipeline(ref) else ref

    def hf(self, ref: str) -> tuple[str, Path | None]:
        """(model, adapter or None) for the HF backend."""
        if ref == "base":
            return self.hf_base, None
        if Path(ref).name == ref and (self.models_dir / ref / "adapter_config.json").is_file():  # a pipeline name
            return self.hf_base, self.models_dir / ref
        local = Path(ref)
        if (local / "adapter_config.json").is_file():
            return adapter_base(local), local
        return str(local) if local.is_dir() else ref, None

    def hf_pinned(self, ref: str) -> tuple[str, Path | None, str | None]:
        """`hf(ref)` plus the hub commit to load: the one models/base pins when the model is the pipeline's base."""
        model, adapter = self.hf(ref)
        if model != self.hf_base:
            return model, adapter, None
        from ..base_model import ModelParams, resolve_base

        return model, adapter, resolve_base(ModelParams(name=self.hf_base, revision=self.hf_revision),
                                            self.models_dir).revision

    def preflight(self, cfg: EvaluateParams, ref: str) -> None:
        """Fail before any model runs when a local model file is missing (the llamacpp GGUF) or when the GPU
        offload asked for is not there."""
        if cfg.backend == "llamacpp":
            if not self.gguf(ref).is_file():
                raise missing_gguf(self.gguf(ref))
            check_gpu_offload(cfg.gpu_layers, self.require_gpu)

    def open(self, cfg: EvaluateParams, ref: str, *, temperature: float = 0.0) -> Backend:
        """A backend for model `ref`; greedy unless `temperature` > 0 (llamacpp and ollama only)."""
        if cfg.backend == "llamacpp":
            return LlamaCppBackend(self.gguf(ref), seed=cfg.seed, n_ctx=cfg.n_ctx, n_threads=cfg.threads,
                                   gpu_layers=cfg.gpu_layers, temperature=temperature, require_gpu=self.require_gpu,
                                   parallel=1 if temperature else cfg.parallel)
        if cfg.backend == "ollama":
            return OllamaBackend(self.ollama_name(ref), base_url=cfg.ollama_url, seed=cfg.seed,
                                 temperature=temperature)
        if temperature:
            raise PipelineError(f"backend hf decodes greedily only; sampling at temperature {temperature} needs "
                                f"llamacpp or ollama")
        model, adapter, revision = self.hf_pinned(ref)
        return HFBackend(model, adapter=adapter, seed=cfg.seed, revision=revision)

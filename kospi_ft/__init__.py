"""KOSPI quant LLM fine-tuning pipeline: market data, synthetic SFT/DPO data, QLoRA training, GGUF export, eval."""

__version__ = "0.1.0"

from . import params, presets  # noqa: E402

# Every read of params.yaml validates both presets against every section. The check lives above the sections
# (presets imports each section's model, and each imports params), so params itself knows none of them.
params.RAW_CHECKS.append(presets.check)


def __getattr__(name: str):
    # `kospi_ft.ask(...)` without importing the data and evaluation modules on `import kospi_ft`. (The module is
    # kospi_ft.answering: a submodule named `ask` would replace this function with itself once imported.)
    if name == "ask":
        from .answering import ask

        return ask
    raise AttributeError(f"module 'kospi_ft' has no attribute {name!r}")

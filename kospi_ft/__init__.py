"""KOSPI quant LLM fine-tuning pipeline: market data, synthetic SFT/DPO data, QLoRA training, GGUF export, eval."""

__version__ = "0.1.0"

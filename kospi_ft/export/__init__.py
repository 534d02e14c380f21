"""Export: merge a LoRA adapter into its 16-bit base, convert to GGUF, quantize, write the Ollama Modelfile and
check template/tokenizer parity. Entry point: `kospi_ft.export.chain.export_model`; stage: `stages/export.py`."""

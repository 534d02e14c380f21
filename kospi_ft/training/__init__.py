"""QLoRA training for the three stages: backends (unsloth / HF+PEFT), SFT (Stage 1 and 2) and DPO (Stage 3).

Modules import transformers, TRL and PEFT inside functions: when the unsloth backend is chosen, `unsloth` must be
imported before them so its patches apply (see `backends.prepare_backend`).
"""

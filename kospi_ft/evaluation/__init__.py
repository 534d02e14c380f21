"""Evaluation of base vs fine-tuned models on the held-out eval set.

- `parsing`: the JSON object in a reply (bare, fenced or in prose), never raising.
- `text`: Hangul share and Korean-aware ROUGE-L.
- `metrics`: per-reply scoring (schema, signal range, Korean rationale, strategy rules) and aggregation.
- `backends`: llama.cpp on a GGUF (default), Ollama HTTP API, transformers + PEFT.
- `runner`: eval-set loading, task-balanced sampling, the generate-and-score loop.
- `compare`: deltas between models and the plot rows.
- `config`: params.yaml `evaluate`, model name -> backend.
"""

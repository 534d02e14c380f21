"""`kospi_ft.ask`: ask a model one question, get back an answer a trading system can consume: the prompt built as
training built it, decoding guided by the task's JSON schema (kospi_ft.json_schema), the reply validated by
kospi_ft.schema.

    from kospi_ft import ask
    answer = ask("stage3", "full_analysis", date="2024-03-15")     # a dict, valid under schema.RESPONSE_MODELS
    answer = ask("models/gguf/stage3/model-Q4_K_M.gguf", "what_if", prompt_file="question.txt")
    answer = ask("qwen2.5-kospi-ft-s3", "regime_classification", date="2024-03-15", backend="ollama")

The CLI is `python -m stages.ask`. A model is a pipeline name (base, stage2, stage3: the exported GGUF), a .gguf
path (both run on llama.cpp, in a process of its own) or an Ollama model name (Ollama's `format`); with
`backend="hf"`, a pipeline name is its adapter on the base weights (transformers + PEFT, no export needed) and a
path an HF model or adapter dir. llama.cpp and hf decode guided by kospi_ft.guidance.

The prompt: with `date`, the synthetic generator's own builders (kospi_ft.data.synthetic) render that snapshot
day of the store (paths.snapshots_dir): account context, market block, the task's scenario block and question,
after the quant system prompt; `seed` picks the stocks on screen and the scenario, as the generator's seed does.
With `prompt_file`: the file's text is the user turn (the system prompt goes before it), or, when the file is JSON,
its `messages` (a record of the eval set or SFT set: the assistant turn, if any, is dropped).
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from .errors import PipelineError

Message = dict[str, str]


def prompt_for_date(store, day: dt.date, task, *, seed: int = 0) -> list[Message]:
    """The chat prompt (system + user) the synthetic generator renders for `task` on the store's snapshot `day`."""
    return record_for_date(store, day, task, seed=seed)["messages"][:2]


def record_for_date(store, day: dt.date, task, *, seed: int = 0) -> dict[str, Any]:
    """The eval-set record the synthetic generator builds for `task` on the store's snapshot `day`: the prompt,
    the rule's reference answer, and meta (date, the store's regime, source "real")."""
    import numpy as np

    from .data import synthetic as syn
    from .data.templates import FORMAT_SHARES
    from .schema import TaskType

    task = TaskType(task)
    try:
        snap = store.snapshot(day)
    except KeyError as err:
        dates = store.dates
        span = f"{dates[0]}..{dates[-1]}" if dates else "none"
        raise PipelineError(f"--date {day}: {err.args[0]} (the store's days: {span})") from None
    # The generator's own steps for one record (synthetic.generate), on this one day.
    rng = syn.Draws(np.random.default_rng([seed, day.toordinal()]))
    pick, scenario = syn._stock_pick(task, rng)
    fmt = list(FORMAT_SHARES)[rng.integers(len(FORMAT_SHARES))]
    user, built, view, template_id = syn.compose(task, syn.real_view(snap, pick, rng), rng, fmt, scenario)
    return syn.composed_record(task, user, built, view, fmt, template_id)


def prompt_from_file(path: Path) -> list[Message]:
    """The chat prompt in `path`: plain text is the user turn; JSON is a record with `messages` (or the list)."""
    from .prompts import QUANT_SYSTEM_PROMPT

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PipelineError(f"--prompt-file {path}: cannot read it ({err.strerror})") from None
    if not text.strip():
        raise PipelineError(f"--prompt-file {path}: the file is empty")
    try:
        data = json.loads(text)
    except ValueError:
        return [{"role": "system", "content": QUANT_SYSTEM_PROMPT}, {"role": "user", "content": text.strip()}]
    messages = data.get("messages") if isinstance(data, dict) else data
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)):
        raise PipelineError(f"--prompt-file {path}: JSON, but not a list of {{role, content}} messages nor an "
                            f"object with one under 'messages'")
    messages = [m for m in messages if m["role"] != "assistant"]
    if messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": QUANT_SYSTEM_PROMPT})
    return messages


def _open_backend(model: str, backend: str | None, raw: dict, *, seed: int, threads: int | None,
                  ollama_url: str | None, progress: bool):
    from . import params
    from .evaluation.config import EvaluateParams, ModelLocator

    locator = ModelLocator.from_params(raw)
    cfg = params.load("evaluate", EvaluateParams, raw=raw)
    gguf = locator.gguf(model)
    if backend is None:
        local = model.endswith(".gguf") or locator.is_pipeline(model) or gguf.is_file()
        backend = "llamacpp" if local else "ollama"
    if backend not in ("llamacpp", "ollama", "hf"):
        raise PipelineError(f"--backend {backend}: ask decodes guided with llamacpp, ollama or hf")
    update: dict[str, Any] = {"backend": backend, "seed": seed}
    if threads is not None:
        update["threads"] = threads
    if ollama_url is not None:
        update["ollama_url"] = ollama_url
    cfg = cfg.model_copy(update=update)
    where = {"llamacpp": gguf, "ollama": f"{locator.ollama_name(model)} at {cfg.ollama_url}",
             "hf": " + ".join(str(p) for p in locator.hf(model) if p is not None)}[backend]
    locator.preflight(cfg, model)
    t0 = time.perf_counter()
    if progress:
        print(f"loading {where} ({backend}) ...", file=sys.stderr, flush=True)
    opened = locator.open(cfg, model)
    if progress:
        print(f"loaded in {time.perf_counter() - t0:.1f} s; answering", file=sys.stderr, flush=True)
    return opened


def ask(model: str, task: str, *, date: str | dt.date | None = None, prompt_file: str | Path | None = None,
        backend: str | None = None, seed: int = 0, max_new_tokens: int = 2048, threads: int | None = None,
        ollama_url: str | None = None, params_file: str | Path = "params.yaml", progress: bool = False,
        ) -> dict[str, Any]:
    """The model's answer to `task` for `date` (a snapshot day) or `prompt_file`, as a dict that
    `kospi_ft.schema` validates. Raises PipelineError naming what failed: the inputs, the model, or the reply."""
    from . import params
    from .json_schema import task_schema
    from .schema import TaskType, schema_errors

    try:
        task = TaskType(task)
    except ValueError:
        raise PipelineError(f"--task {task!r}: not a task ({', '.join(t.value for t in TaskType)})") from None
    if (date is None) == (prompt_file is None):
        raise PipelineError("give exactly one of --date and --prompt-file")
    raw = params.read_raw(Path(params_file))
    if date is not None:
        from .data.snapshot import MarketSnapshotStore

        try:
            day = date if isinstance(date, dt.date) else dt.date.fromisoformat(str(date))
        except ValueError:
            raise PipelineError(f"--date {date!r}: not a date (YYYY-MM-DD)") from None
        store = MarketSnapshotStore.from_dir(params.load_paths(raw=raw).snapshots_dir)
        messages = prompt_for_date(store, day, task, seed=seed)
    else:
        messages = prompt_from_file(Path(prompt_file))

    engine = _open_backend(model, backend, raw, seed=seed, threads=threads, ollama_url=ollama_url,
                           progress=progress)
    try:
        reply = engine.generate(messages, max_new_tokens, schema=task_schema(task))
    finally:
        engine.close()
    try:
        answer = json.loads(reply.text)
    except ValueError as err:
        cut = (f" (it stopped at --max-new-tokens {max_new_tokens}: raise it)"
               if reply.completion_tokens >= max_new_tokens else "")
        raise PipelineError(f"{engine.description}: the {task.value} reply is not JSON: {err}{cut}") from None
    errors = schema_errors(task, answer)
    if errors:
        raise PipelineError(f"{engine.description}: the {task.value} reply is not a valid answer: "
                            f"{'; '.join(errors[:3])}" + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""))
    return answer

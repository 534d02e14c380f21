"""Run one backend over the held-out eval set and score every reply.

The eval set is the synthetic stage's JSONL (`paths.eval_set`): `{"messages": [system, user, assistant],
"task": ..., "meta": {...}}`. The model sees the system and user turns; the assistant turn is the reference. A
record with `meta.reasoning` (the held-out reasoning logs, `paths.logs_eval`) is scored for ROUGE-L against that
reasoning text instead (the spec: "ROUGE score: reasoning log 대비 오버랩").
`select` takes the first `n` records round-robin over task types (in file order within a task), so a small
`n_samples` still covers every task and the same `n` always picks the same records.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import DataValidationError
from ..jsonl import read_jsonl
from ..schema import TaskType
from .backends import Backend, Message
from .metrics import ReplyScore, aggregate, score_reply
from .text import RougeL

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalRecord:
    task: str
    prompt: list[Message]   # system + user
    reference: str          # the reference assistant answer (JSON text)
    rouge_reference: str | None = None  # the text ROUGE-L compares with, when not the answer (a log's reasoning)
    meta: dict[str, Any] = field(default_factory=dict)  # date, regime, source: what the trading metrics score


def load_eval_set(path: Path) -> list[EvalRecord]:
    """Read and check the eval JSONL; errors name the file, line and field."""
    path = Path(path)
    tasks = {t.value for t in TaskType}
    records: list[EvalRecord] = []
    for lineno, row in read_jsonl(path, what="eval set", hint="run the synthesize stage: `dvc repro synthesize`",
                                  missing=DataValidationError):
        where = f"{path}:{lineno}"
        task = row.get("task") if isinstance(row, dict) else None
        if task not in tasks:
            raise DataValidationError(f"{where}: field `task` is {task!r}, expected one of {sorted(tasks)}")
        messages = row.get("messages")
        if (not isinstance(messages, list) or len(messages) < 2
                or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
                or messages[-1].get("role") != "assistant"):
            raise DataValidationError(f"{where}: field `messages` must be a list of {{role, content}} "
                                      f"ending with the assistant's reference answer")
        prompt = [{"role": str(m["role"]), "content": m["content"]} for m in messages[:-1]]
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        reasoning = meta.get("reasoning")
        records.append(EvalRecord(task=task, prompt=prompt, reference=messages[-1]["content"],
                                  rouge_reference=reasoning if isinstance(reasoning, str) else None, meta=meta))
    return records


def select(records: list[EvalRecord], n: int | None) -> list[EvalRecord]:
    """The first `n` records taken round-robin over task types (TaskType order); all of them when n is None."""
    if n is None or n >= len(records):
        return list(records)
    by_task: dict[str, list[EvalRecord]] = defaultdict(list)
    for r in records:
        by_task[r.task].append(r)
    order = [t.value for t in TaskType if t.value in by_task]
    picked: list[EvalRecord] = []
    depth = 0
    while len(picked) < n:
        for task in order:
            if depth < len(by_task[task]) and len(picked) < n:
                picked.append(by_task[task][depth])
        depth += 1
    return picked


def date_records(store, task: str, n: int | None, seed: int = 0) -> list[EvalRecord]:
    """`task` asked on the store's eval-month days (`synthetic.date_split`: out of sample, embargoed from training),
    `n` of them spread evenly over the days in date order (None: every one), as the generator asks it: the prompt,
    the rule's reference answer, meta with the date and the store's regime (kospi_ft.answering.record_for_date)."""
    from ..answering import record_for_date
    from ..data.synthetic import date_split

    days = [d for d in store.dates if date_split(d) == "eval"]
    if n is not None and n < len(days):
        days = [days[i * len(days) // n] for i in range(n)]
    out = []
    for day in days:
        row = record_for_date(store, day, task, seed=seed)
        out.append(EvalRecord(task=row["task"], prompt=row["messages"][:2], reference=row["messages"][2]["content"],
                              meta=row["meta"]))
    return out


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    scores: list[ReplyScore]
    replies: list[str]
    trading: list = field(default_factory=list)  # trading.TradingSample per record with a date and regime

    def predictions(self, records: list[EvalRecord]) -> list[dict[str, Any]]:
        """One row per sample for inspection: task, reply, and what the scorer found."""
        return [{"task": s.task, "reply": reply, "json": str(s.json_method), "schema_valid": s.schema_valid,
                 "strategy_ok": s.strategy_ok, "signal_ok": s.signal_ok, "hangul_share": round(s.hangul_share, 4),
                 "latency_s": round(s.latency_s, 4), "completion_tokens": s.completion_tokens,
                 "errors": list(s.errors), "reference": r.reference}
                for s, reply, r in zip(self.scores, self.replies, records)]


def evaluate(backend: Backend, records: list[EvalRecord], *, max_new_tokens: int, rouge: bool = False,
             korean_threshold: float = 0.5, progress: bool = True, desc: str = "evaluate",
             guided: bool = False) -> EvalResult:
    """Generate a reply for every record with `backend`, score it, and aggregate. `guided`: each reply decoded
    guided by its task's JSON schema (kospi_ft.json_schema). A backend with `parallel` > 1 (llama.cpp) decodes
    that many replies at once."""
    from ..json_schema import task_schema

    scorer = RougeL() if rouge else None
    requests = [(r.prompt, task_schema(r.task) if guided else None) for r in records]
    t0 = time.perf_counter()
    with tqdm(total=len(records), desc=desc, unit="sample", disable=not progress) as bar:
        if getattr(backend, "parallel", 1) > 1:  # llama.cpp: many replies per batch
            gens = backend.generate_many(requests, max_new_tokens, on_reply=lambda _: bar.update())
        else:
            gens = []
            for prompt, schema in requests:
                gens.append(backend.generate(prompt, max_new_tokens, schema=schema))
                bar.update()
    wall_s = time.perf_counter() - t0
    scores = [score_reply(r.task, g.text, r.reference, latency_s=g.latency_s, completion_tokens=g.completion_tokens,
                          rouge=scorer, korean_threshold=korean_threshold, rouge_reference=r.rouge_reference)
              for r, g in zip(records, gens)]
    return EvalResult(metrics=aggregate(scores, wall_s=wall_s), scores=scores, replies=[g.text for g in gens])

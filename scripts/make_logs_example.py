"""Write the example reasoning-logs file (data/logs/example.jsonl; the embedded preset's stage2_data.logs).

    python scripts/make_logs_example.py [--out data/logs/example.jsonl]

Twenty decisions in the format of `kospi_ft.data.reasoning_logs`, made from records of the synthetic generator
on the embedded market (simulated with the embedded preset's market params, 2019-10..2025-12): all 12 task types,
14 lines whose context is text and 6 that refer to a snapshot day (`snapshot_date`, some with a `format`), three
of them on eval dates (held out of training). The reasoning text is written from the decision's own summary and
rationales. Deterministic: the file is committed, this script documents and regenerates it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kospi_ft.data.simulate import SimConfig, simulate  # noqa: E402
from kospi_ft.data.snapshot import MarketSnapshotStore, compute_features  # noqa: E402
from kospi_ft.data.synthetic import generate  # noqa: E402
from kospi_ft.schema import TaskType  # noqa: E402

WINDOW = (dt.date(2020, 1, 1), dt.date(2025, 12, 31))
# Tasks whose prompt is account context + market block + question (no task block): they can refer to a snapshot.
SNAPSHOT_TASKS = ("full_analysis", "regime_classification", "multi_step")


def reasoning_of(task: str, answer: dict) -> str:
    """A reasoning paragraph in Korean from the decision's own words."""
    parts = [f"먼저 시장 국면을 {answer['regime']}로 판단했습니다.", answer["summary"]]
    if task == "regime_classification":
        parts += answer["signals"][:3]
    parts += [s["content"] for s in answer.get("steps", [])[:3]]
    for key in ("positions", "actions", "decisions", "sector_impacts"):
        parts += [x["rationale"] for x in answer.get(key, [])[:2]]
    return " ".join(parts)


def split_prompt(user: str) -> tuple[str, str]:
    """(everything before the question, the question): the question is the last blank-line-separated block."""
    head, _, question = user.rpartition("\n\n")
    return head, question


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "data" / "logs" / "example.jsonl"))
    args = ap.parse_args()
    table = simulate(SimConfig(dt.date(2019, 10, 1), WINDOW[1], seed=7))
    stocks, market = compute_features(table, WINDOW[0])
    store = MarketSnapshotStore(market, stocks)

    picked: list[tuple[dict, bool]] = []   # (record, refers to its snapshot)
    for split, seed, n_text, n_snap in (("train", 101, 12, 5), ("eval", 102, 2, 1)):
        records = generate(240, seed=seed, split=split, start_date=WINDOW[0], end_date=WINDOW[1], store=store,
                           real_data_ratio=0.5)
        # Text lines: the first record of each task (train), any record (eval); snapshot lines: real records of
        # SNAPSHOT_TASKS.
        text = [r for r in records if split == "eval" or r is next(x for x in records if x["task"] == r["task"])]
        text = text[:n_text]
        snap = [r for r in records if r["meta"]["source"] == "real" and r["task"] in SNAPSHOT_TASKS
                and all(r is not t for t in text)]
        picked += [(r, False) for r in text] + [(r, True) for r in snap[:n_snap]]
    lines = []
    for k, (r, from_snapshot) in enumerate(picked):
        task, meta = r["task"], r["meta"]
        answer = json.loads(r["messages"][2]["content"])
        head, question = split_prompt(r["messages"][1]["content"])
        if from_snapshot:
            # The account block stays text; the market block is rendered from the snapshot day.
            line = {"snapshot_date": meta["date"], "task": task, "question": question,
                    "context": head.split("\n\n", 1)[0]}
            if k % 2 == 0:
                line["format"] = meta["format"]
        else:
            line = {"date": meta["date"], "task": task, "question": question, "context": head}
        line.update(reasoning=reasoning_of(task, answer), decision=answer, id=f"log-{k + 1:04d}")
        lines.append(line)
    by_task = {t.value: sum(x["task"] == t.value for x in lines) for t in TaskType}
    assert all(by_task.values()), f"a task without an example line: {by_task}"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    print(f"{out}: {len(lines)} lines, tasks {dict(sorted(by_task.items()))}")


if __name__ == "__main__":
    main()

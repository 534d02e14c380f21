"""Held-out likelihood and preference metrics: whether a stage helped, on any model, from one forward per answer.

Generation metrics need a model that already writes the answer format; these need only its probabilities, so they
move with every training step, for the tiny embedded model as for a 7B one, and they are what TRL users watch
during training (eval loss, eval rewards/accuracies).

- `likelihood.answer_nll`: mean negative log-likelihood per answer token (nats) of the held-out eval set's
  reference answers (paths.eval_set, every record), teacher-forced on their prompts, over all answer tokens of all
  records; `per_task.<task>.answer_nll` the same per task type. Lower is better; a random-init model sits near
  ln(vocab) = ln 151,936 = 11.93. The answer tokens are the ones SFT trains on: the assistant turn and its
  <|im_end|>, as the chat template's generation block marks them, the same tokens for every model.
- `preference.accuracy`: share of the held-out preference pairs (paths.eval_pairs: the eval set's prompts, with
  the answers broken by the same rejecter as the training pairs) where the model's length-normalised
  log-probability (mean per-token log-prob) of the chosen answer exceeds the rejected one's;
  `preference.margin_mean`: the mean of that difference (nats per token, higher is better);
  `preference.per_type.<rejection_type>.accuracy` / `.margin_mean` per rejection type. Length-normalised, so a
  rejected answer that is merely shorter (a quality_degradation's cut rationale) is not preferred for being short.

One function (`score_model`) computes them for every model with one backend: transformers + PEFT (the model's
adapter on the base it was trained on; fp32 on CPU, bf16 on CUDA), the exported GGUF is not involved. The LM head
projects only the answer positions (the backbone runs over the whole row): a ~2,700-token eval row has ~550 answer
tokens, so this is ~5x less of the 151,936-wide projection (see `LikelihoodScorer` for the pairs' savings).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tqdm.auto import tqdm

from ..data.dpo_pairs import REJECTION_SHARES
from ..errors import DataValidationError
from ..jsonl import read_jsonl
from ..schema import TaskType
from ..training.lm_head import label_log_probs
from .backends import Message, load_hf_model
from .runner import EvalRecord

@dataclass(frozen=True)
class Scored:
    """Log-probability of one answer given its prompt: the sum over its tokens, and their count."""

    logprob_sum: float
    tokens: int

    @property
    def mean(self) -> float:
        return self.logprob_sum / self.tokens


@dataclass(frozen=True)
class HeldOutPair:
    task: str
    rejection_type: str
    prompt: list[Message]
    chosen: str
    rejected: str


def answer_logprobs(model, input_ids, answer_mask, first: int = 1):
    """(target positions, their log-probabilities): every position t >= `first` where `answer_mask` (1-D bool over
    `input_ids`) is set, with log p(input_ids[t] | input_ids[:t]). The backbone runs over the whole row, the LM head
    only at the positions that predict those targets. `model`: a causal LM, or a PeftModel around one (adapter on).
    """
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = lm.base_model(input_ids=input_ids[None], use_cache=False).last_hidden_state[0]
    targets = answer_mask.nonzero().squeeze(-1)
    targets = targets[targets >= max(first, 1)]
    head = lm.get_output_embeddings()
    # The hidden state at t - 1 predicts token t; the training stages' label-only head, in tiles, with no extras.
    logprobs, *_ = label_log_probs(hidden[targets - 1], head.weight, head.bias, input_ids[targets], temperature=1.0,
                                   chunk_size=0, softcap=None, logit_scale=1.0, outputs=())
    return targets, logprobs


@dataclass(frozen=True)
class _Answer:
    ids: Any          # the whole row's token ids (prompt + answer)
    targets: Any      # positions of the answer tokens
    logprobs: Any     # their log-probabilities

    def scored(self) -> Scored:
        return Scored(logprob_sum=float(self.logprobs.double().sum()), tokens=int(self.logprobs.numel()))


class LikelihoodScorer:
    """Teacher-forced answer log-probabilities under one model (transformers + PEFT, see `load_hf_model`).

    Two savings, both exact by causality: an answer already scored for the same prompt is not scored again (a
    held-out pair's chosen answer is its eval record's reference), and a rejected answer reuses the chosen one's
    log-probs up to the first token where they differ (the rejecter breaks one spot of the chosen answer: on the
    embedded pairs 38% of the rejected tokens come before it).
    """

    def __init__(self, model: str | Path, *, adapter: Path | None = None, revision: str | None = None) -> None:
        import torch

        self._torch = torch
        self.description = f"hf:{model}" + (f"+{adapter}" if adapter else "")
        self._model, self._tokenizer, self._device = load_hf_model(model, adapter, revision)
        self._cache: dict[tuple[str, str], _Answer] = {}

    def _encode(self, prompt: Sequence[Message], answer: str):
        torch = self._torch
        enc = self._tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": answer}],
                                                  tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        return (torch.tensor(enc["input_ids"], device=self._device),
                torch.tensor(enc["assistant_masks"], dtype=torch.bool, device=self._device))

    def _answer(self, prompt: Sequence[Message], answer: str, like: _Answer | None = None) -> _Answer:
        """The answer's log-probs; with `like` (another answer to the same prompt), its values are reused before
        the first token where the two rows differ."""
        key = (json.dumps(prompt, ensure_ascii=False, sort_keys=True), answer)
        if key in self._cache:
            return self._cache[key]
        torch = self._torch
        ids, mask = self._encode(prompt, answer)
        first = 1
        if like is not None:
            n = min(len(ids), len(like.ids))
            differ = (ids[:n] != like.ids[:n]).nonzero()
            first = int(differ[0]) if len(differ) else n
        with torch.inference_mode():
            targets, logprobs = answer_logprobs(self._model, ids, mask, first)
        if like is not None and first > 1:
            reused = like.targets < first
            targets = torch.cat([like.targets[reused], targets])
            logprobs = torch.cat([like.logprobs[reused], logprobs])
            if not torch.equal(targets, mask.nonzero().squeeze(-1)):  # a shared prefix is a shared answer start
                raise AssertionError("answer positions of two answers to one prompt do not line up")
        self._cache[key] = found = _Answer(ids=ids, targets=targets, logprobs=logprobs)
        return found

    def score(self, prompt: Sequence[Message], answer: str) -> Scored:
        """log p(answer | prompt): the answer rendered as the assistant turn, as in training."""
        return self._answer(prompt, answer).scored()

    def score_pair(self, prompt: Sequence[Message], chosen: str, rejected: str) -> tuple[Scored, Scored]:
        good = self._answer(prompt, chosen)
        return good.scored(), self._answer(prompt, rejected, like=good).scored()

    def close(self) -> None:
        self._cache.clear()


def load_pairs(path: Path) -> list[HeldOutPair]:
    """The held-out pairs file (the dpo_pairs stage's TRL conversational format)."""
    out = []
    for n, row in read_jsonl(path, what="held-out pairs", hint="run the dpo_pairs stage: `dvc repro dpo_pairs`",
                             missing=DataValidationError):
        try:
            out.append(HeldOutPair(task=row["task"], rejection_type=row["rejection_type"],
                                   prompt=[{"role": m["role"], "content": m["content"]} for m in row["prompt"]],
                                   chosen=row["chosen"][0]["content"], rejected=row["rejected"][0]["content"]))
        except (KeyError, TypeError, IndexError) as err:
            raise DataValidationError(f"{path}:{n}: not a preference pair ({err!r}); expected prompt/chosen/"
                                      f"rejected/rejection_type/task") from None
    return out


def _nll(scored: Iterable[Scored]) -> float | None:
    scored = list(scored)
    tokens = sum(s.tokens for s in scored)
    return round(-sum(s.logprob_sum for s in scored) / tokens, 6) if tokens else None


def _preference(margins: list[float]) -> dict[str, float | int | None]:
    return {"accuracy": round(sum(m > 0 for m in margins) / len(margins), 6) if margins else None,
            "margin_mean": round(math.fsum(margins) / len(margins), 6) if margins else None,
            "n": len(margins)}


def aggregate(records: Sequence[EvalRecord], answers: Sequence[Scored], pairs: Sequence[HeldOutPair],
              chosen: Sequence[Scored], rejected: Sequence[Scored]) -> dict[str, Any]:
    """The likelihood and preference blocks, plus `per_task.<task>.answer_nll`, with the same keys whatever the
    input (every task type and rejection type, null where there is nothing to measure)."""
    margins = [c.mean - r.mean for c, r in zip(chosen, rejected)]
    types = [*REJECTION_SHARES, *sorted({p.rejection_type for p in pairs} - set(REJECTION_SHARES))]
    overall = _preference(margins)
    return {
        "likelihood": {
            "answer_nll": _nll(answers),
            "answer_tokens": sum(s.tokens for s in answers),
            "n_records": len(answers),
        },
        "preference": {
            "accuracy": overall["accuracy"],
            "margin_mean": overall["margin_mean"],
            "n_pairs": overall["n"],
            "chosen_logp_mean": round(math.fsum(c.mean for c in chosen) / len(chosen), 6) if chosen else None,
            "rejected_logp_mean": round(math.fsum(r.mean for r in rejected) / len(rejected), 6) if rejected else None,
            "per_type": {t: _preference([m for m, p in zip(margins, pairs) if p.rejection_type == t]) for t in types},
        },
        "per_task": {t.value: {"answer_nll": _nll(s for s, r in zip(answers, records) if r.task == t.value)}
                     for t in TaskType},
    }


def score_model(scorer: LikelihoodScorer, records: Sequence[EvalRecord], pairs: Sequence[HeldOutPair], *,
                progress: bool = True, desc: str = "likelihood") -> dict[str, Any]:
    """Score every eval record's reference answer and both answers of every held-out pair under one model."""
    t0 = time.perf_counter()
    answers = [scorer.score(r.prompt, r.reference)
               for r in tqdm(records, desc=f"{desc}: answers", unit="answer", disable=not progress)]
    t1 = time.perf_counter()
    chosen, rejected = [], []
    for p in tqdm(pairs, desc=f"{desc}: pairs", unit="pair", disable=not progress):
        good, bad = scorer.score_pair(p.prompt, p.chosen, p.rejected)
        chosen.append(good)
        rejected.append(bad)
    out = aggregate(records, answers, pairs, chosen, rejected)
    out["likelihood"]["seconds"] = round(t1 - t0, 3)
    out["preference"]["seconds"] = round(time.perf_counter() - t1, 3)
    return out


def merge(metrics: dict[str, Any], blocks: dict[str, Any]) -> dict[str, Any]:
    """`metrics` (the generation metrics file) with the likelihood blocks added; per_task entries are merged."""
    out = dict(metrics)
    for key, value in blocks.items():
        if key == "per_task":
            out["per_task"] = {t: {**out.get("per_task", {}).get(t, {}), **v} for t, v in value.items()}
        else:
            out[key] = value
    return out


def empty_blocks() -> dict[str, Any]:
    """The same keys with nothing measured (likelihood metrics switched off), so every metrics file matches."""
    out = aggregate([], [], [], [], [])
    out["likelihood"]["seconds"] = out["preference"]["seconds"] = None
    return out

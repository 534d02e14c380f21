"""Held-out likelihood and preference metrics (kospi_ft.evaluation.likelihood), checked against the model's plain
forward (full logits) worked out here, on a tiny real Qwen2 with the real tokenizer, and against hand-worked sums."""
from __future__ import annotations

import json
import math

import pytest
import torch

from kospi_ft.errors import DataValidationError
from kospi_ft.evaluation import likelihood
from kospi_ft.evaluation.likelihood import HeldOutPair, LikelihoodScorer, Scored, aggregate
from kospi_ft.evaluation.runner import EvalRecord
from kospi_ft.tokenizer import EOS_TOKEN

from model_fixtures import build_tiny_hf

PROMPT = [{"role": "system", "content": "한국 주식시장 퀀트 분석가입니다. JSON으로 답하세요."},
          {"role": "user", "content": "KOSPI -2.3%, breadth 25%. 레짐과 익스포저는?"}]
CHOSEN = '{"regime": "BEAR", "exposure": 0.2, "summary": "약세장: 현금 비중 확대, 손절 -5%"}'
# Broken in the middle, as the rejecter does: the rows agree up to "exposure": and differ after it.
REJECTED = '{"regime": "BEAR", "exposure": "high", "summary": "약세장: 현금 비중 확대, 손절 -5%"}'


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_hf(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    """A LoRA adapter far from zero (random A and B), so the adapted model scores differently from the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny[0]), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def scorer(tiny):
    return LikelihoodScorer(tiny[0])


def by_hand(model_dir, prompt, answer, adapter=None) -> torch.Tensor:
    """The answer tokens' log-probs from the model's ordinary forward: full logits, log-softmax, then the positions
    the chat template marks as the assistant's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kospi_ft.tokenizer import load_tokenizer

    net = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        net = PeftModel.from_pretrained(net, str(adapter))
    tok = load_tokenizer(model_dir)
    enc = tok.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=True,
                                  return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = torch.tensor(enc["input_ids"]), torch.tensor(enc["assistant_masks"], dtype=torch.bool)
    assert tok.decode(ids[mask]) == answer + EOS_TOKEN  # the answer and its stop token, as SFT trains on them
    with torch.no_grad():
        logprobs = net.eval()(input_ids=ids[None]).logits[0].log_softmax(-1)
    positions = mask.nonzero().squeeze(-1)
    return logprobs[positions - 1, ids[positions]]


def test_answer_log_probs_equal_the_full_logits(tiny, scorer):
    hand = by_hand(tiny[0], PROMPT, CHOSEN)
    got = scorer.score(PROMPT, CHOSEN)
    assert got.tokens == len(hand) == len(tiny[1](CHOSEN).input_ids) + 1
    assert got.logprob_sum == pytest.approx(float(hand.sum()), rel=1e-5)
    # A random-init model is close to uniform over the 151,936-token vocabulary.
    assert -got.mean == pytest.approx(math.log(151_936), abs=0.5)


def test_the_adapter_is_applied(tiny, adapter):
    adapted = LikelihoodScorer(tiny[0], adapter=adapter).score(PROMPT, CHOSEN)
    assert adapted.logprob_sum == pytest.approx(float(by_hand(tiny[0], PROMPT, CHOSEN, adapter).sum()), rel=1e-5)
    assert abs(adapted.logprob_sum - LikelihoodScorer(tiny[0]).score(PROMPT, CHOSEN).logprob_sum) > 1e-2


def test_a_rejected_answer_reuses_the_chosen_prefix_exactly(tiny, adapter, monkeypatch):
    projected = []
    original = likelihood.answer_logprobs

    def counting(*args):
        targets, logprobs = original(*args)
        projected.append(len(targets))
        return targets, logprobs

    monkeypatch.setattr(likelihood, "answer_logprobs", counting)
    pair_scorer = LikelihoodScorer(tiny[0], adapter=adapter)
    good, bad = pair_scorer.score_pair(PROMPT, CHOSEN, REJECTED)
    rejected_tokens = len(tiny[1](REJECTED).input_ids) + 1
    assert bad.tokens == rejected_tokens and projected[0] == good.tokens
    assert projected[1] < rejected_tokens * 0.8  # the shared start was not projected again
    hand = by_hand(tiny[0], PROMPT, REJECTED, adapter)
    assert bad.logprob_sum == pytest.approx(float(hand.sum()), rel=1e-5)
    assert pair_scorer.score(PROMPT, CHOSEN) == good and len(projected) == 2  # scored once, then remembered


def test_aggregate_hand_worked():
    records = [EvalRecord("full_analysis", PROMPT, "a"), EvalRecord("full_analysis", PROMPT, "b"),
               EvalRecord("what_if", PROMPT, "c")]
    answers = [Scored(-10.0, 5), Scored(-6.0, 5), Scored(-3.0, 1)]
    pairs = [HeldOutPair("full_analysis", t, PROMPT, "c", "r")
             for t in ("strategy_violation", "strategy_violation", "hallucination")]
    chosen = [Scored(-4.0, 2), Scored(-3.0, 3), Scored(-5.0, 5)]       # means -2, -1, -1
    rejected = [Scored(-3.0, 1), Scored(-4.0, 2), Scored(-2.0, 2)]     # means -3, -2, -1: margins 1, 1, 0
    out = aggregate(records, answers, pairs, chosen, rejected)
    assert out["likelihood"] == {"answer_nll": round(19 / 11, 6), "answer_tokens": 11, "n_records": 3}
    assert out["per_task"]["full_analysis"] == {"answer_nll": 1.6} and out["per_task"]["what_if"]["answer_nll"] == 3.0
    assert out["per_task"]["fx_impact"]["answer_nll"] is None
    pref = out["preference"]
    # A tie (margin 0) is not a preference for the chosen answer.
    assert (pref["accuracy"], pref["margin_mean"], pref["n_pairs"]) == (round(2 / 3, 6), round(2 / 3, 6), 3)
    assert (pref["chosen_logp_mean"], pref["rejected_logp_mean"]) == (round(-4 / 3, 6), -2.0)
    assert pref["per_type"]["strategy_violation"] == {"accuracy": 1.0, "margin_mean": 1.0, "n": 2}
    assert pref["per_type"]["hallucination"] == {"accuracy": 0.0, "margin_mean": 0.0, "n": 1}
    assert pref["per_type"]["schema_violation"] == {"accuracy": None, "margin_mean": None, "n": 0}


def test_metrics_keys_are_the_same_with_or_without_anything_measured(tiny, scorer):
    from kospi_ft.evaluation.metrics import flatten

    pairs = [HeldOutPair("full_analysis", "schema_violation", PROMPT, CHOSEN, REJECTED)]
    measured = likelihood.score_model(scorer, [EvalRecord("full_analysis", PROMPT, CHOSEN)], pairs, progress=False)
    assert list(flatten(measured)) == list(flatten(likelihood.empty_blocks()))
    assert measured["preference"]["per_type"]["schema_violation"]["n"] == 1
    merged = likelihood.merge({"json": {"valid_rate": 0.0}, "per_task": {"what_if": {"n": 0}}}, measured)
    assert merged["per_task"]["what_if"] == {"n": 0, "answer_nll": None} and merged["json"] == {"valid_rate": 0.0}


def test_load_pairs_names_the_bad_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": CHOSEN}],
            "rejected": [{"role": "assistant", "content": REJECTED}], "rejection_type": "schema_violation",
            "task": "full_analysis"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "chosen": []}) + "\n")
    with pytest.raises(DataValidationError, match=r"pairs.jsonl:2: not a preference pair"):
        likelihood.load_pairs(path)
    with pytest.raises(DataValidationError, match="not found"):
        likelihood.load_pairs(tmp_path / "missing.jsonl")

"""Parity gate: the exported GGUF must prompt exactly like the HF model that was trained.

Checks, each a hard failure (ParityError lists every mismatch):
- GGUF metadata: the chat template is the training template, eos / pad ids match the HF tokenizer,
  `tokenizer.ggml.pre` is `qwen2` (the Qwen pre-tokenizer regex; a wrong one splits Korean and digits
  differently) and the tokenizer model is byte-level BPE (`gpt2`);
- for every conversation (Korean ones included) the GGUF's template rendered the way llama-cpp-python's server
  renders it gives the same text as `tokenizer.apply_chat_template`, and llama.cpp's tokenizer gives the same
  ids as the HF tokenizer (special tokens parsed, default special-token handling on both sides);
- the model decodes a few tokens through llama.cpp without error (skipped for a vocab-only GGUF).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import PipelineError

logger = logging.getLogger(__name__)

EXPECTED_PRE = "qwen2"
EXPECTED_TOKENIZER_MODEL = "gpt2"

Message = dict[str, str]


class ParityError(PipelineError):
    """The GGUF and the HF tokenizer / template disagree."""


def parity_conversations(system_prompt: str) -> list[list[Message]]:
    """Chats that exercise the template branches and the tokenizer: Korean, digits, tickers, JSON, emoji,
    whitespace runs, a conversation without a system message (default system prompt) and a multi-turn one."""
    return [
        [{"role": "system", "content": system_prompt},
         {"role": "user", "content": "KOSPI -2.3%, 외국인 순매도 -8,000억원, 상승 종목 비율 25%. "
                                     "현재 시장 국면을 분류하고 포지션을 추천해 주세요."}],
        [{"role": "user", "content": "KOSPI -2.3%, breadth 25%, momentum -6%. Classify regime and recommend positions."}],
        [{"role": "system", "content": system_prompt},
         {"role": "user", "content": "삼성전자(005930) PER 12.3배, PBR 1.10 — 밸류에이션은?\n\n  들여쓰기\t탭"},
         {"role": "assistant", "content": '{"regime": "SHORT_TERM_STRESS", "signal": -0.35, '
                                          '"rationale": "외국인 매도세와 약한 시장 폭으로 단기 스트레스 국면입니다."}'},
         {"role": "user", "content": "손절 기준은? 🙂 SK하이닉스(000660)도 같이 봐 주세요."}],
    ]


@dataclass
class ParityReport:
    conversations: int = 0
    tokens_compared: int = 0
    generated_tokens: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)  # the GGUF key/values as llama.cpp reports them


def _first_diff(a: Sequence, b: Sequence) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def check_metadata(metadata: dict[str, str], tokenizer, expected_template: str) -> list[str]:
    """Compare llama.cpp's view of the GGUF key/values (`Llama.metadata`) with the HF tokenizer."""
    errors = []
    template = metadata.get("tokenizer.chat_template")
    if template != expected_template:
        errors.append(f"tokenizer.chat_template differs from the training chat template "
                      f"(GGUF {len(template or '')} chars, expected {len(expected_template)})")
    eos, pad = _int(metadata.get("tokenizer.ggml.eos_token_id")), _int(metadata.get("tokenizer.ggml.padding_token_id"))
    if eos != tokenizer.eos_token_id:
        errors.append(f"tokenizer.ggml.eos_token_id = {eos}, HF eos id = {tokenizer.eos_token_id}")
    if pad != tokenizer.pad_token_id:
        errors.append(f"tokenizer.ggml.padding_token_id = {pad}, HF pad id = {tokenizer.pad_token_id}")
    pre, model = metadata.get("tokenizer.ggml.pre"), metadata.get("tokenizer.ggml.model")
    if pre != EXPECTED_PRE:
        errors.append(f"tokenizer.ggml.pre = {pre!r}, expected {EXPECTED_PRE!r}")
    if model != EXPECTED_TOKENIZER_MODEL:
        errors.append(f"tokenizer.ggml.model = {model!r}, expected {EXPECTED_TOKENIZER_MODEL!r}")
    return errors


def check_parity(gguf_path: Path, tokenizer, expected_template: str, conversations: list[list[Message]],
                 generate_tokens: int = 4, threads: int = 0) -> ParityReport:
    """Run the gate on `gguf_path`; raise ParityError naming every mismatch. `generate_tokens=0` skips decoding
    (a vocab-only GGUF has no weights). llama.cpp's side runs in a llama.cpp process (kospi_ft.llama_process:
    the export stage's process holds torch)."""
    from .. import llama_process

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise PipelineError(f"{gguf_path}: GGUF file not found")
    hf_texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
    hf_ids = [tokenizer(text)["input_ids"] for text in hf_texts]
    # Decoding needs a prompt, not a long one: the shortest conversation's (a 7B on the CPU build decodes the
    # system prompt's 1.4k tokens in ~25 s, the default system prompt's ~30 in under 1 s).
    seen = llama_process.call("kospi_ft.export.parity:llama_view", gguf_path=str(gguf_path),
                              conversations=conversations, texts=hf_texts, prompt_ids=list(min(hf_ids, key=len)),
                              eos_token=tokenizer.eos_token, bos_token=tokenizer.bos_token or "",
                              generate_tokens=generate_tokens, threads=threads)
    report = ParityReport(metadata=seen["metadata"])
    report.errors = check_metadata(report.metadata, tokenizer, expected_template)
    for i, (served_text, hf_text, gguf_ids, ids) in enumerate(zip(seen["served_texts"], hf_texts, seen["ids"],
                                                                   hf_ids)):
        if served_text != hf_text:
            at = _first_diff(served_text, hf_text)
            report.errors.append(f"conversation {i}: GGUF template renders differently from training at char "
                                 f"{at}: {served_text[max(0, at - 20):at + 20]!r} vs {hf_text[max(0, at - 20):at + 20]!r}")
        report.conversations += 1
        report.tokens_compared += len(ids)
        if list(gguf_ids) != list(ids):
            at = _first_diff(gguf_ids, ids)
            report.errors.append(f"conversation {i}: llama.cpp token ids differ from HF at position {at}: "
                                 f"{list(gguf_ids[at:at + 5])} vs {list(ids[at:at + 5])} "
                                 f"({len(gguf_ids)} vs {len(ids)} tokens)")
    if generate_tokens and not report.errors:
        n_vocab = seen["n_vocab"]
        for token in seen["generated"]:
            if not 0 <= token < n_vocab:
                report.errors.append(f"llama.cpp generated an out-of-vocab token id {token}")
                break
            report.generated_tokens.append(int(token))
    if report.errors:
        raise ParityError(f"{gguf_path}: parity gate failed:\n  - " + "\n  - ".join(report.errors))
    logger.info("parity gate passed: %d conversations, %d tokens identical, generated %s",
                report.conversations, report.tokens_compared, report.generated_tokens)
    return report


def llama_view(gguf_path: str, conversations: list[list[Message]], texts: list[str], prompt_ids: list[int],
               eos_token: str, bos_token: str, generate_tokens: int, threads: int) -> dict:
    """(In the llama.cpp process) what llama.cpp makes of the GGUF: its metadata, the chats rendered by its template
    the way llama-cpp-python's chat completion (and its OpenAI-compatible server) renders them, its token ids of
    `texts`, and `generate_tokens` greedy tokens after `prompt_ids` (counted past any early eos: a random-weight
    model may "stop" at once, proving nothing)."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    # llama.cpp reads the metadata in well under a second; the gguf package's reader takes ~10-25 s on a
    # 151k-token vocabulary (it builds an object per string), so the gate uses llama.cpp's view.
    llm = Llama(model_path=gguf_path, vocab_only=generate_tokens == 0, n_ctx=len(prompt_ids) + generate_tokens + 16,
                n_batch=512, n_threads=threads or None, verbose=False)
    try:
        metadata = dict(llm.metadata)
        formatter = Jinja2ChatFormatter(template=metadata.get("tokenizer.chat_template", ""), eos_token=eos_token,
                                        bos_token=bos_token)
        served = [formatter(messages=m).prompt for m in conversations]
        # add_bos=True is llama.cpp's default special-token handling; for Qwen it adds nothing, like HF.
        ids = [list(llm.tokenize(t.encode("utf-8"), add_bos=True, special=True)) for t in texts]
        generated: list[int] = []
        if generate_tokens:
            for token in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
                generated.append(int(token))
                if len(generated) >= generate_tokens or not 0 <= token < llm.n_vocab():
                    break
        return {"metadata": metadata, "served_texts": served, "ids": ids, "generated": generated,
                "n_vocab": llm.n_vocab()}
    finally:
        llm.close()

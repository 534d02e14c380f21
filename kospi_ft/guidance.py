"""Guided decoding: a reply held, token by token, to its task's JSON schema (`kospi_ft.json_schema`), by llguidance.

One engine for both in-process backends: llama.cpp (`llama_processor`, a llama-cpp-python logits processor over
the GGUF's vocabulary) and transformers (`HFGuide`, a `LogitsProcessor` over the HF tokenizer). llguidance builds
the mask of allowed tokens with a lexer over a token trie, ~0.2-1.5 ms per token over Qwen's 151,680 tokens.
llama.cpp's own GBNF sampler checks every candidate against the grammar's stacks: ~18 ms per token, so guided
decoding ran 0.14x free on the embedded model; here 0.84x (12 records x 256 tokens, `benchmarks/bench_guided.py`),
~0.5 ms a token of it llama-cpp-python's own cost of calling any logits processor.

What the JSON schema carries reaches the mask: required fields, no extra fields, enums and consts (the
ticker/name pairs), number and integer ranges, list and text lengths, the Korean pattern. Numbers also get at
most FRACTION_DIGITS decimals (`multipleOf`, added here and not to the published schema: a float `multipleOf` makes
validators reject 0.1234 by rounding), so a number ends. The JSON is compact: no whitespace between tokens.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from llguidance import LLMatcher
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from .errors import PipelineError

FRACTION_DIGITS = 4      # decimals a guided number may have (generated answers use at most 4)
COMPILE_OPTIONS = {"whitespace_flexible": False}


def decoding_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every number held to FRACTION_DIGITS decimals."""
    def walk(node):
        if isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
            if out.get("type") == "number" and "multipleOf" not in out:
                out["multipleOf"] = 10.0 ** -FRACTION_DIGITS
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar whose sentences are compact JSON texts valid under `schema` (see the module)."""
    return LLMatcher.grammar_from_json_schema(json.dumps(decoding_schema(schema)), defaults=COMPILE_OPTIONS)


class Guide:
    """One reply's constraint. Each call sees the whole sequence so far (prompt and reply): the first call takes its
    length as the prompt's, later calls feed the matcher the tokens generated since; `allowed()` is then the mask of
    the tokens that keep the reply a prefix of a valid JSON text (end of text only once it is complete)."""

    def __init__(self, tokenizer, grammar_text: str, n_vocab: int) -> None:
        self.matcher = LLMatcher(tokenizer, grammar_text, log_level=0)
        if self.matcher.is_error():
            raise PipelineError(f"guided decoding: the schema's grammar does not compile: {self.matcher.get_error()}")
        self.n_vocab = n_vocab
        self._bitmask = allocate_token_bitmask(1, n_vocab)
        self._seen: int | None = None

    def advance(self, ids) -> None:
        if self._seen is None:
            self._seen = len(ids)
            return
        new = [int(t) for t in ids[self._seen:]]
        self._seen = len(ids)
        if new and not self.matcher.consume_tokens(new):
            raise PipelineError(f"guided decoding: token {new} left the grammar: {self.matcher.get_error()}")

    def allows(self, token: int) -> bool:
        """Whether the grammar allows `token` next (a check of one token, ~1 us; a whole mask takes ~0.1-1.5 ms)."""
        return self.matcher.validate_tokens([token]) == 1

    def allowed(self):
        """Boolean mask over the vocabulary: the tokens the grammar allows next."""
        fill_next_token_bitmask(self.matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        return bits[:self.n_vocab].astype(bool)


def llama_tokenizer(llm):
    """llguidance's view of a loaded `llama_cpp.Llama`'s vocabulary (~1 s: build it once per model)."""
    from llguidance.llamacpp import lltokenizer_from_vocab

    return lltokenizer_from_vocab(llm._model.vocab)


def llama_processor(tokenizer, grammar_text: str, n_vocab: int, greedy: bool):
    """A llama-cpp-python logits processor that masks every token the grammar does not allow.

    `greedy` (temperature 0): the token greedy decoding picks is checked first, and when the grammar allows it the
    logits go on unmasked, since masking cannot change an argmax the grammar allows. llama.cpp's own sampler orders
    its grammar check the same way (sample, check, resample only on a rejection); a trained model's tokens mostly
    pass, so a reply pays for whole masks only where the model strays."""
    guide = Guide(tokenizer, grammar_text, n_vocab)
    neg_inf = float("-inf")

    def process(input_ids, scores):
        guide.advance(input_ids)
        if greedy and guide.allows(int(np.argmax(scores))):
            return scores
        scores[~guide.allowed()] = neg_inf
        return scores

    return process


def hf_processor(hf_tokenizer, grammar_text: str, n_vocab: int, eos_token_ids: list[int], greedy: bool):
    """A transformers `LogitsProcessor` that masks every token the grammar does not allow (batch of one); `greedy`
    as in `llama_processor`."""
    import torch
    from llguidance.hf import from_tokenizer
    from transformers import LogitsProcessor

    tokenizer = from_tokenizer(hf_tokenizer, n_vocab=n_vocab, eos_token=eos_token_ids)
    guide = Guide(tokenizer, grammar_text, n_vocab)

    class HFGuide(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if input_ids.shape[0] != 1:
                raise PipelineError("guided decoding with hf generates one reply at a time")
            guide.advance(input_ids[0].tolist())
            if greedy and guide.allows(int(torch.argmax(scores[0]))):  # as in llama_processor
                return scores
            allowed = torch.from_numpy(guide.allowed()).to(scores.device)
            return scores.masked_fill(~allowed[:scores.shape[-1]], float("-inf"))

    return HFGuide()

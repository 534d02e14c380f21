"""Text measures for Korean answers: Hangul share of a rationale, and ROUGE-L that sees Korean.

`hangul_share` counts letters only (digits, punctuation, spaces and symbols are ignored), so "PER 12.3배로
저평가" is judged on its words: 2 Latin letters against 5 Hangul syllables.

ROUGE-L uses the pinned `rouge-score` package, whose default tokenizer lower-cases and keeps only [a-z0-9]
runs: every Korean character is dropped, and a Korean reference scores 0 against anything. `RougeL` therefore
passes its own tokenizer: Latin letters and digits stay whole words ("per", "12", "3"), and every Hangul or
other non-Latin letter is its own token. Character tokens for Korean sidestep the lack of a morphological
analyser (Korean words carry particles: "삼성전자는" vs "삼성전자가" would never match as whitespace words)
and are the usual choice for ROUGE on Korean. No stemming (Porter stemming is English-only).
"""
from __future__ import annotations

import re
import unicodedata


# Hangul Jamo, compatibility Jamo, Jamo extended A/B, and the precomposed syllables.
_HANGUL_RANGES = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xD7B0, 0xD7FF), (0xAC00, 0xD7A3))


def is_hangul(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _HANGUL_RANGES)


def hangul_share(text: str) -> float:
    """Hangul letters / all letters in `text` (0.0 when it has no letters)."""
    letters = hangul = 0
    for ch in text:
        if ch.isalpha():
            letters += 1
            hangul += is_hangul(ch)
    return hangul / letters if letters else 0.0


_LATIN_RUN = re.compile(r"[a-z0-9]+")


def tokenize_mixed(text: str) -> list[str]:
    """Latin/digit runs as words, every other letter (Hangul, CJK, ...) as one token; the rest is dropped."""
    text = unicodedata.normalize("NFC", text).lower()
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _LATIN_RUN.match(text, pos)
        if m:
            tokens.append(m.group())
            pos = m.end()
            continue
        ch = text[pos]
        if ch.isalpha():
            tokens.append(ch)
        pos += 1
    return tokens


class _MixedTokenizer:
    """The `tokenize(text) -> list[str]` object rouge-score accepts in place of its Latin-only default."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize_mixed(text)


class RougeL:
    """ROUGE-L F1 of a prediction against a reference, Korean-aware (see the module docstring)."""

    def __init__(self) -> None:
        from rouge_score import rouge_scorer  # only when ROUGE is on (evaluate.rouge): it pulls in nltk

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_MixedTokenizer())

    def f1(self, reference: str, prediction: str) -> float:
        return float(self._scorer.score(reference, prediction)["rougeL"].fmeasure)

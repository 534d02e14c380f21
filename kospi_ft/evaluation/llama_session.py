"""llama.cpp on a GGUF, in the process that imports this module: what the llama.cpp process runs
(`kospi_ft.llama_process`, a `Session`).

Prompts are rendered with the chat template stored in the GGUF (the one the export wrote and its parity gate
checked), and generation stops at its eos token. Every eval prompt opens with the same ~1.4k-token system prompt:
it is decoded once, alone, and each prompt starts from that KV cache with everything after it cleared, so only the
~0.7k-token rest of a prompt is processed and a reply still does not depend on the one before it.

Import this module only where llama.cpp's native libraries may be the first heavy ones loaded (see
`kospi_ft.llama_process`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import PipelineError

Message = dict[str, str]

GGUF_TEMPLATE_FORMAT = "chat_template.default"  # llama-cpp-python's name for the GGUF's tokenizer.chat_template


class LlamaSession:
    """One GGUF loaded by llama-cpp-python. `n_threads=0` uses every core; `gpu_layers=-1` offloads all layers."""

    def __init__(self, gguf: Path, *, seed: int = 0, n_ctx: int = 4096, n_threads: int = 0, gpu_layers: int = 0,
                 temperature: float = 0.0) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.seed = seed
        self.temperature = temperature
        self.description = f"llamacpp:{gguf}"
        try:
            # llama-cpp-python's own default is half the cores for generation; 0 here means all of them.
            threads = n_threads or os.cpu_count() or 1
            self._llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                              n_gpu_layers=gpu_layers, seed=seed, verbose=False)
        except ValueError as err:  # llama-cpp-python's "Failed to load model from file"
            raise PipelineError(f"{gguf}: llama.cpp cannot load it: {err}") from None
        if "tokenizer.chat_template" not in self._llm.metadata:
            self._llm.close()
            raise PipelineError(f"{gguf}: no tokenizer.chat_template in the GGUF metadata; re-export it so the "
                                f"prompt format matches training")
        # Always the GGUF's own template: llama-cpp-python would otherwise swap in a built-in format whenever
        # the template happens to look like one it knows.
        self._llm.chat_format = GGUF_TEMPLATE_FORMAT
        # The same template without the assistant header: renders the system turn alone, as the prompt opens.
        self._system_formatter = Jinja2ChatFormatter(
            template=self._llm.metadata["tokenizer.chat_template"], eos_token="", bos_token="",
            add_generation_prompt=False)
        self.prefix_tokens: list[int] = []  # the system prompt whose KV cache every prompt starts from
        self._grammars: dict[str, str] = {}  # JSON schema text -> its llguidance grammar
        self._guide_tokenizer = None

    def guide(self, schema: dict):
        """A logits processor guiding one reply by `schema` (kospi_ft.guidance): the vocabulary's llguidance
        tokenizer is built on first use, each schema's grammar compiled once."""
        import json

        from llama_cpp import LogitsProcessorList

        from .. import guidance

        if self._guide_tokenizer is None:
            self._guide_tokenizer = guidance.llama_tokenizer(self._llm)
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = guidance.grammar(schema)
        return LogitsProcessorList([guidance.llama_processor(self._guide_tokenizer, self._grammars[key],
                                                             self._llm.n_vocab(), greedy=self.temperature == 0)])

    def start_from_system_prompt(self, messages: list[Message]) -> int:
        """Leave exactly the system prompt's KV cache in place (decoding it, alone, when it is new); the number of
        tokens decoded.

        llama-cpp-python then reuses that prefix and decodes only the rest of the prompt (its prefix match); a
        prompt that does not open with it is simply decoded in full by the same match."""
        system = messages[:1] if messages and messages[0].get("role") == "system" else []
        if not system:
            self._llm.reset()
            return 0
        text = self._system_formatter(messages=system).prompt
        tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        if tokens != self.prefix_tokens:
            self._llm.reset()
            self._llm.eval(tokens)
            self.prefix_tokens = tokens
            return len(tokens)
        self._llm.n_tokens = len(tokens)  # drop the previous prompt and reply; the prefix's cache stays
        return 0

    def generate(self, messages: list[Message], max_new_tokens: int, seed: int | None = None,
                 schema: dict | None = None) -> dict:
        """{text, latency_s, prompt_tokens, completion_tokens, prefix_tokens, prefix_s}: the one-time system prompt
        decode (prefix_tokens decoded in prefix_s seconds, 0 when its cache was reused) counts in the latency.
        With `schema` (a JSON schema), decoding is guided by it (kospi_ft.guidance): every token keeps the reply a
        prefix of a JSON text valid under it, and the end of text comes only once that text is complete."""
        guide = None if schema is None else self.guide(schema)
        t0 = time.perf_counter()
        prefix = self.start_from_system_prompt(messages)
        prefix_s = time.perf_counter() - t0
        try:
            out = self._llm.create_chat_completion(
                messages=messages, max_tokens=max_new_tokens, temperature=self.temperature, repeat_penalty=1.0,
                seed=self.seed if seed is None else seed, logits_processor=guide)
        except ValueError as err:  # prompt longer than the context window
            raise PipelineError(f"{self.description}: {err} (raise evaluate.n_ctx)") from None
        latency = time.perf_counter() - t0
        usage = out.get("usage") or {}
        return {"text": out["choices"][0]["message"].get("content") or "", "latency_s": latency,
                "prompt_tokens": int(usage.get("prompt_tokens", 0)),
                "completion_tokens": int(usage.get("completion_tokens", 0)),
                "prefix_tokens": prefix, "prefix_s": prefix_s}

    def close(self) -> None:
        self._llm.close()

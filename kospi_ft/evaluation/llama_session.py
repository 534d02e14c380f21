"""llama.cpp on a GGUF, in the process that imports this module: what the llama.cpp process runs
(`kospi_ft.llama_process`, a `Session`).

Prompts are rendered with the chat template stored in the GGUF (the one the export wrote and its parity gate
checked), and generation stops at its eos token. Every eval prompt opens with the same ~1.4k-token system prompt:
it is decoded once, alone, and each prompt starts from that KV cache with everything after it cleared, so only the
~0.7k-token rest of a prompt is processed and a reply still does not depend on the one before it.
`generate_many` decodes many replies at once in one batch (evaluate.parallel), the system prompt decoded once for
all of them.

Import this module only where llama.cpp's native libraries may be the first heavy ones loaded (see
`kospi_ft.llama_process`).
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
        # The whole prompt as create_chat_completion renders it (generate_many tokenizes it itself).
        special = lambda token: self._llm.detokenize([token], special=True).decode("utf-8") if token >= 0 else ""
        self._formatter = Jinja2ChatFormatter(template=self._llm.metadata["tokenizer.chat_template"],
                                              eos_token=special(self._llm.token_eos()),
                                              bos_token=special(self._llm.token_bos()))
        # The same template without the assistant header: renders the system turn alone, as the prompt opens.
        self._system_formatter = Jinja2ChatFormatter(
            template=self._llm.metadata["tokenizer.chat_template"], eos_token="", bos_token="",
            add_generation_prompt=False)
        self.prefix_tokens: list[int] = []  # the system prompt whose KV cache every prompt starts from
        self._grammars: dict[str, str] = {}  # JSON schema text -> its llguidance grammar
        self._guide_tokenizer = None
        self._batched: tuple[int, object, object] | None = None  # (parallel, llama context, llama_batch)

    def _processor(self, schema: dict):
        """llguidance's logits processor for one reply guided by `schema` (kospi_ft.guidance): the vocabulary's
        llguidance tokenizer is built on first use, each schema's grammar compiled once."""
        import json

        from .. import guidance

        if self._guide_tokenizer is None:
            self._guide_tokenizer = guidance.llama_tokenizer(self._llm)
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = guidance.grammar(schema)
        return guidance.llama_processor(self._guide_tokenizer, self._grammars[key], self._llm.n_vocab(),
                                        greedy=self.temperature == 0)

    def guide(self, schema: dict):
        """A llama-cpp-python logits processor list guiding one reply by `schema`."""
        from llama_cpp import LogitsProcessorList

        return LogitsProcessorList([self._processor(schema)])

    def system_tokens(self, messages: list[Message]) -> list[int]:
        """The tokens of the conversation's system turn alone, as its prompt opens ([] without one)."""
        system = messages[:1] if messages and messages[0].get("role") == "system" else []
        if not system:
            return []
        text = self._system_formatter(messages=system).prompt
        return self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def start_from_system_prompt(self, messages: list[Message]) -> int:
        """Leave exactly the system prompt's KV cache in place (decoding it, alone, when it is new); the number of
        tokens decoded.

        llama-cpp-python then reuses that prefix and decodes only the rest of the prompt (its prefix match); a
        prompt that does not open with it is simply decoded in full by the same match."""
        tokens = self.system_tokens(messages)
        if not tokens:
            self._llm.reset()
            return 0
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

    # ---- many replies at once ----------------------------------------------------------------------------

    def prompt_tokens(self, messages: list[Message]) -> list[int]:
        """`messages` as `create_chat_completion` tokenizes them: the GGUF's template with the generation prompt."""
        result = self._formatter(messages=messages)
        return self._llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)

    def _batch_context(self, parallel: int):
        """A second llama.cpp context on the loaded weights: `parallel` sequences of up to n_ctx tokens each in one
        unified KV cache, so a prompt's shared system prefix is decoded once and its cells shared (seq_cp)."""
        import llama_cpp

        if self._batched is not None and self._batched[0] == parallel:
            return self._batched[1], self._batched[2]
        self._free_batch_context()
        params = llama_cpp.llama_context_params.from_buffer_copy(self._llm.context_params)
        params.n_ctx = self._llm.n_ctx() * parallel
        params.n_seq_max = parallel
        params.kv_unified = True
        ctx = llama_cpp.llama_init_from_model(self._llm.model, params)
        if not ctx:
            raise PipelineError(f"{self.description}: llama.cpp cannot make a context of {parallel} x "
                                f"{self._llm.n_ctx()} tokens (lower evaluate.parallel or evaluate.n_ctx)")
        batch = llama_cpp.llama_batch_init(self._llm.n_batch, 0, 1)
        self._batched = (parallel, ctx, batch)
        return ctx, batch

    def _free_batch_context(self) -> None:
        import llama_cpp

        if self._batched is not None:
            _, ctx, batch = self._batched
            self._batched = None
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)

    def generate_many(self, requests: list[dict], max_new_tokens: int, parallel: int,
                      on_reply: Callable[[int, dict], None] | None = None) -> list[dict]:
        """Greedy replies to `requests` ({messages, schema?}), up to `parallel` decoded at once in one batch
        (continuous batching: a finished reply's slot takes the next request). Each reply is `generate`'s dict;
        `on_reply(index, reply)` is called as each one ends. The system prompt shared by the requests is decoded
        once. One 7B forward on a GPU reads every weight whatever the batch holds, so `parallel` replies cost little
        more than one; the replies are the same greedy decoding, up to the rounding of batched kernels."""
        import llama_cpp
        import numpy as np

        if self.temperature:
            raise PipelineError("batched generation decodes greedily; sample one reply at a time")
        prompts = [self.prompt_tokens(r["messages"]) for r in requests]
        n_ctx = self._llm.n_ctx()
        for i, tokens in enumerate(prompts):
            if len(tokens) >= n_ctx:
                raise PipelineError(f"{self.description}: request {i}: the prompt's {len(tokens)} tokens exceed "
                                    f"the context window ({n_ctx}) (raise evaluate.n_ctx)")
        shared = self.system_tokens(requests[0]["messages"]) if requests else []
        if not all(p[:len(shared)] == shared for p in prompts):
            shared = []
        n_slots = max(1, min(parallel, len(requests)))
        ctx, batch = self._batch_context(parallel)
        memory = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_clear(memory, True)
        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        n_vocab, n_batch = self._llm.n_vocab(), self._llm.n_batch

        def decode(entries: list[tuple[int, list[int], int, bool]]) -> None:
            """One llama_decode of (sequence, tokens, first position, logits for the last token)."""
            batch.n_tokens = 0
            for seq, tokens, pos, logits in entries:
                for k, token in enumerate(tokens):
                    j = batch.n_tokens
                    batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, pos + k, 1
                    batch.seq_id[j][0], batch.logits[j] = seq, False
                    batch.n_tokens += 1
                if logits:
                    batch.logits[batch.n_tokens - 1] = True
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise PipelineError(f"{self.description}: llama_decode returned {rc} with {batch.n_tokens} tokens of "
                                    f"{len(entries)} sequences (out of KV cache: lower evaluate.parallel)")

        t0 = time.perf_counter()
        for start in range(0, len(shared), n_batch):
            decode([(0, shared[start:start + n_batch], start, False)])
        for seq in range(1, n_slots):
            llama_cpp.llama_memory_seq_cp(memory, 0, seq, -1, -1)
        prefix_s = time.perf_counter() - t0

        replies: list[dict | None] = [None] * len(requests)
        queue = deque(range(len(requests)))
        slots: list[_Slot | None] = [None] * n_slots
        while queue or any(slots):
            for seq in range(n_slots):
                if slots[seq] is None and queue:
                    i = queue.popleft()
                    # At least the prompt's last token is decoded here: its logits give the first reply token.
                    start = min(len(shared), len(prompts[i]) - 1)
                    llama_cpp.llama_memory_seq_rm(memory, seq, start, -1)
                    schema = requests[i].get("schema")
                    slots[seq] = _Slot(index=i, pending=list(prompts[i][start:]), pos=start,
                                       budget=min(max_new_tokens, n_ctx - len(prompts[i])),
                                       guide=None if schema is None else self._processor(schema),
                                       t0=time.perf_counter())
            # Replies being generated first (one token each), then prompts, chunked to what the batch has left.
            order = sorted((s for s in range(n_slots) if slots[s] is not None), key=lambda s: len(slots[s].pending))
            entries, used, ready = [], 0, []   # ready: (sequence, batch index of its last token)
            for seq in order:
                slot = slots[seq]
                if used == n_batch:
                    break
                take = slot.pending[:n_batch - used]
                slot.pending = slot.pending[len(take):]
                entries.append((seq, take, slot.pos, not slot.pending))
                slot.pos += len(take)
                used += len(take)
                if not slot.pending:
                    ready.append((seq, used - 1))
            decode(entries)
            for seq, index in ready:
                slot = slots[seq]
                scores = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,)).copy()
                if slot.guide is not None:
                    scores = slot.guide(prompts[slot.index] + slot.generated, scores)  # all it has seen
                token = int(np.argmax(scores))
                done = llama_cpp.llama_vocab_is_eog(vocab, token)
                if not done:
                    slot.generated.append(token)
                    slot.pending = [token]
                    done = len(slot.generated) >= slot.budget
                if done:
                    reply = {"text": self._llm.detokenize(slot.generated).decode("utf-8", errors="ignore"),
                             "latency_s": time.perf_counter() - slot.t0, "prompt_tokens": len(prompts[slot.index]),
                             "completion_tokens": len(slot.generated),
                             "prefix_tokens": len(shared) if slot.index == 0 else 0,
                             "prefix_s": prefix_s if slot.index == 0 else 0.0}
                    replies[slot.index] = reply
                    slots[seq] = None
                    if on_reply is not None:
                        on_reply(slot.index, reply)
        return replies

    def close(self) -> None:
        self._free_batch_context()
        self._llm.close()


@dataclass
class _Slot:
    """One request being answered in a batch sequence."""
    index: int
    pending: list[int]            # tokens still to decode for this sequence
    pos: int                      # the position of pending[0]
    budget: int                   # reply tokens allowed
    guide: Callable | None
    t0: float
    generated: list[int] = field(default_factory=list)

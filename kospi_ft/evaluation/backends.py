"""Where replies come from: llama.cpp in-process on a GGUF (default), an Ollama server, or transformers + PEFT.

Every backend answers `generate(messages, max_new_tokens) -> Generation` with greedy decoding and a fixed
seed, so the same model file gives the same replies, and therefore the same scores, run after run.
`LlamaCppBackend` and `OllamaBackend` also sample (`temperature` > 0, for the DPO stage's model rejects); a
`seed` passed to `generate` replaces the backend's for that one call, so each sample is reproducible on its own.

- `LlamaCppBackend`: llama-cpp-python on `models/gguf/<name>/model-<QUANT>.gguf`, in a llama.cpp process of its
  own (`kospi_ft.llama_process`: llama.cpp's CUDA libraries crash a process that loaded numpy's, pyarrow's or
  torch's first), rendering prompts with the chat template stored in the GGUF, every prompt starting from the system
  prompt's KV cache (`llama_session`).
- `OllamaBackend`: POST /api/chat (stream off) on a running Ollama; models by name (`ollama create` first).
- `HFBackend`: a HF model dir or hub id, plus a PEFT adapter dir when given (the training stages' outputs).

Every backend takes a `schema` (a task's JSON schema, `kospi_ft.json_schema`) to decode guided by it: llguidance
over the GGUF's or the HF tokenizer's vocabulary (`kospi_ft.guidance`), Ollama's `format`.
"""
from __future__ import annotations

import functools
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .. import llama_process
from ..errors import PipelineError

logger = logging.getLogger(__name__)

Message = dict[str, str]


@dataclass(frozen=True)
class Generation:
    text: str
    latency_s: float          # wall time of the whole request (prompt processing + decoding)
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_reply(cls, reply: dict) -> "Generation":
        """From a `LlamaSession.generate` reply (the llama.cpp process's, or an in-process session's)."""
        return cls(text=reply["text"], latency_s=reply["latency_s"], prompt_tokens=reply["prompt_tokens"],
                   completion_tokens=reply["completion_tokens"])


class Backend(Protocol):
    description: str

    def generate(self, messages: list[Message], max_new_tokens: int, seed: int | None = None,
                 schema: dict | None = None) -> Generation: ...

    def close(self) -> None: ...


# ---- llama.cpp ----------------------------------------------------------------------------------------------

def missing_gguf(gguf: Path) -> PipelineError:
    return PipelineError(f"{gguf}: GGUF not found (run the export stage: `dvc repro export`, or "
                         f"`python -m stages.export --model {gguf.parent.name}`)")


@functools.lru_cache(maxsize=None)
def llama_supports_gpu_offload() -> bool:
    """Whether the installed llama-cpp-python can offload to a GPU, asked in a llama.cpp process: loading its CUDA
    libraries here, beside pyarrow or torch, would crash this process (kospi_ft.llama_process)."""
    return bool(llama_process.call("kospi_ft.llama_process:gpu_offload_here"))


def check_gpu_offload(gpu_layers: int, required: bool) -> None:
    """gpu_layers != 0 on a llama.cpp built without GPU offload would run on the CPU (a 7B eval: hours):
    an error when `required` (the real preset), else a warning."""
    if gpu_layers == 0 or llama_supports_gpu_offload():
        return
    message = (f"evaluate.gpu_layers is {gpu_layers}, but this llama-cpp-python was built without GPU offload, "
               f"so every layer would run on the CPU (7B: ~21 s per 1.5k-token prompt on 16 threads). Install the "
               f"CUDA build: `bash scripts/setup.sh cuda` (it builds llama-cpp-python with GGML_CUDA=on), or set "
               f"evaluate.gpu_layers: 0")
    if required:
        raise PipelineError(message)
    logger.warning(message)


class LlamaCppBackend:
    """llama-cpp-python on a GGUF, in a llama.cpp process of its own (kospi_ft.llama_process says why).

    The process renders prompts with the GGUF's chat template and starts every prompt from the system prompt's KV
    cache (`llama_session.LlamaSession`). `n_threads=0` uses every core; `gpu_layers=-1` offloads all layers (a
    CUDA build of llama-cpp-python). `worker` is the process's load reply (pid, gpu_offload, and the heavy modules
    it held when llama.cpp loaded: none); `last` the last generation's whole reply."""

    def __init__(self, gguf: Path, *, seed: int = 0, n_ctx: int = 4096, n_threads: int = 0,
                 gpu_layers: int = 0, temperature: float = 0.0, require_gpu: bool = False, parallel: int = 1) -> None:
        gguf = Path(gguf)
        if not gguf.is_file():
            raise missing_gguf(gguf)
        check_gpu_offload(gpu_layers, require_gpu)
        self.description = f"llamacpp:{gguf}"
        self.parallel = parallel  # replies decoded at once by generate_many
        self._session = llama_process.Session(gguf.resolve(), {
            "seed": seed, "n_ctx": n_ctx, "n_threads": n_threads, "gpu_layers": gpu_layers,
            "temperature": temperature}, self.description)
        self.last: dict = {}

    @property
    def worker(self) -> dict:
        return self._session.info

    def generate(self, messages: list[Message], max_new_tokens: int, seed: int | None = None,
                 schema: dict | None = None) -> Generation:
        """A reply; with `schema` (a task's JSON schema, kospi_ft.json_schema), decoded guided by it."""
        guided = {} if schema is None else {"schema": schema}
        self.last = self._session.request(op="generate", messages=messages, max_new_tokens=max_new_tokens,
                                          seed=seed, **guided)
        return Generation.from_reply(self.last)

    def generate_many(self, requests: list[tuple[list[Message], dict | None]], max_new_tokens: int,
                      on_reply=None) -> list[Generation]:
        """Greedy replies to (messages, schema or None) pairs, `parallel` decoded at once in one batch
        (`LlamaSession.generate_many`); `on_reply(index)` as each ends."""
        out: list[Generation | None] = [None] * len(requests)
        for reply in self._session.stream(
                op="generate_many", max_new_tokens=max_new_tokens, parallel=self.parallel,
                requests=[{"messages": m, **({} if s is None else {"schema": s})} for m, s in requests]):
            out[reply["index"]] = Generation.from_reply(reply)
            if on_reply is not None:
                on_reply(reply["index"])
        return out

    def close(self) -> None:
        self._session.close()


# ---- Ollama ---------------------------------------------------------------------------------------------------

class OllamaBackend:
    """Ollama's REST API (https://github.com/ollama/ollama/blob/main/docs/api.md), standard library HTTP only."""

    def __init__(self, model: str, *, base_url: str = "http://localhost:11434", seed: int = 0,
                 timeout_s: float = 600.0, temperature: float = 0.0) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.seed = seed
        self.temperature = temperature
        self.timeout_s = timeout_s
        self.description = f"ollama:{model}@{self.base_url}"
        version = self._request("GET", "/api/version", timeout=10.0)
        logger.info("ollama %s at %s", version.get("version", "?"), self.base_url)

    def _request(self, method: str, route: str, body: dict | None = None, timeout: float | None = None) -> dict:
        url = self.base_url + route
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout_s) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except (ValueError, AttributeError):
                pass
            hint = ""
            if err.code == 404 and route == "/api/chat":
                hint = f" (register it first: `python -m stages.register --enable`, or `ollama pull {self.model}`)"
            raise PipelineError(f"ollama {method} {url}: HTTP {err.code}: {detail}{hint}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise PipelineError(f"ollama is not reachable at {self.base_url} ({reason}); start it with "
                                f"`ollama serve` or set evaluate.ollama_url / --ollama-url") from None
        try:
            return json.loads(payload)
        except ValueError:
            raise PipelineError(f"ollama {method} {url}: response is not JSON: {payload[:200]!r}") from None

    def generate(self, messages: list[Message], max_new_tokens: int, seed: int | None = None,
                 schema: dict | None = None) -> Generation:
        """A reply; with `schema` (a JSON schema), Ollama constrains decoding to it (`format`)."""
        body = {
            "model": self.model,
            "messages": messages,
            "stream": False,
            **({} if schema is None else {"format": schema}),
            # temperature 0 is greedy in Ollama; the seed pins anything left to chance.
            "options": {"temperature": self.temperature or 0, "seed": self.seed if seed is None else seed,
                        "num_predict": max_new_tokens},
        }
        t0 = time.perf_counter()
        out = self._request("POST", "/api/chat", body)
        latency = time.perf_counter() - t0
        message = out.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise PipelineError(f"{self.description}: /api/chat response has no message.content: "
                                f"{json.dumps(out)[:200]}")
        return Generation(text=message["content"], latency_s=latency,
                          prompt_tokens=int(out.get("prompt_eval_count") or 0),
                          completion_tokens=int(out.get("eval_count") or 0))

    def close(self) -> None:
        pass


# ---- transformers + PEFT --------------------------------------------------------------------------------------

def load_hf_model(model: str | Path, adapter: Path | None = None, revision: str | None = None):
    """(model in eval mode, tokenizer, device) for a HF causal LM dir or hub id (at `revision`), with a PEFT adapter
    on top when `adapter` is given. CPU runs fp32, CUDA bf16, base and fine-tunes alike. The tokenizer comes from the
    adapter dir when it has one (training saves it there), else from the model, with the project's chat template
    (`kospi_ft.tokenizer`)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..tokenizer import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tok_source = adapter if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file() else model
    pin = {} if revision is None else {"revision": revision}
    try:
        tokenizer = load_tokenizer(str(tok_source), **(pin if tok_source == model else {}))
        net = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype, **pin)
    except OSError as err:
        raise PipelineError(f"{model}: cannot load the HF model/tokenizer: {err}") from None
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise PipelineError(f"{adapter}: not a PEFT adapter dir (no adapter_config.json)")
        net = PeftModel.from_pretrained(net, str(adapter))
    return net.to(device).eval(), tokenizer, device


class HFBackend:
    """A HF causal LM (dir or hub id), with a PEFT adapter on top when `adapter` is given (see `load_hf_model`)."""

    def __init__(self, model: str | Path, *, adapter: Path | None = None, seed: int = 0,
                 revision: str | None = None) -> None:
        import torch

        from ..tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID

        self.seed = seed
        self.description = f"hf:{model}" + (f"+{adapter}" if adapter else "")
        self._torch = torch
        self._model, self._tokenizer, self._device = load_hf_model(model, adapter, revision)
        self._stop_ids = [EOS_TOKEN_ID, PAD_TOKEN_ID]
        self._pad_id = PAD_TOKEN_ID

    def generate(self, messages: list[Message], max_new_tokens: int, seed: int | None = None,
                 schema: dict | None = None) -> Generation:
        """A greedy reply; with `schema`, decoded guided by it (kospi_ft.guidance: llguidance's mask as a
        transformers logits processor)."""
        torch = self._torch
        guided = {}
        if schema is not None:
            from transformers import LogitsProcessorList

            from .. import guidance

            guided["logits_processor"] = LogitsProcessorList([guidance.hf_processor(
                self._tokenizer, guidance.grammar(schema), self._model.config.get_text_config().vocab_size,
                self._stop_ids[:1], greedy=True)])
        enc = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True).to(self._device)
        prompt_len = enc["input_ids"].shape[1]
        torch.manual_seed(self.seed if seed is None else seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self._model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                       eos_token_id=self._stop_ids, pad_token_id=self._pad_id, **guided)
        latency = time.perf_counter() - t0
        new = out[0, prompt_len:].tolist()
        n = len(new)
        while n and new[n - 1] in self._stop_ids:  # the stop token is not part of the answer
            n -= 1
        text = self._tokenizer.decode(new[:n], skip_special_tokens=True)
        return Generation(text=text, latency_s=latency, prompt_tokens=prompt_len, completion_tokens=n)

    def close(self) -> None:
        pass


def adapter_base(adapter: Path) -> str:
    """The base model an adapter was trained on (PEFT records it in adapter_config.json)."""
    config = Path(adapter) / "adapter_config.json"
    try:
        base = json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as err:
        raise PipelineError(f"{config}: cannot read base_model_name_or_path ({err})") from None
    if not base:
        raise PipelineError(f"{config}: base_model_name_or_path is empty")
    return str(base)

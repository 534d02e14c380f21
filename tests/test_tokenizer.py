"""The embedded Qwen tokenizer and the ChatML template: special ids, rendering, assistant-only loss mask."""
import pytest

from kospi_ft.tokenizer import CHATML_TEMPLATE, DEFAULT_SYSTEM_PROMPT, configure, load_tokenizer

CONVERSATION = [
    {"role": "system", "content": "시스템"},
    {"role": "user", "content": "삼성전자 전망은?"},
    {"role": "assistant", "content": '{"signal": 0.5}'},
    {"role": "user", "content": "Why?"},
    {"role": "assistant", "content": "PER is low."},
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_special_token_ids(tok):
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.chat_template == CHATML_TEMPLATE
    # Qwen never prepends a BOS token.
    assert tok("hi").input_ids == tok.convert_tokens_to_ids(["hi"])


def test_renders_spec_chatml_layout(tok):
    # The spec's section 1.2 layout, turn by turn.
    expected = ("<|im_start|>system\n시스템<|im_end|>\n"
                "<|im_start|>user\n삼성전자 전망은?<|im_end|>\n"
                '<|im_start|>assistant\n{"signal": 0.5}<|im_end|>\n'
                "<|im_start|>user\nWhy?<|im_end|>\n"
                "<|im_start|>assistant\nPER is low.<|im_end|>\n")
    assert tok.apply_chat_template(CONVERSATION, tokenize=False) == expected


def test_default_system_prompt_and_generation_prompt(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == (f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
                    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_assistant_mask_covers_answers_and_their_eos_only(tok):
    out = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    masked = [i for i, m in zip(ids, mask) if m]
    expected = (tok('{"signal": 0.5}').input_ids + [tok.eos_token_id] + tok("PER is low.").input_ids
                + [tok.eos_token_id])
    assert masked == expected
    # Both answers end the masked spans: exactly the two assistant <|im_end|> are learned, not the prompt ones.
    assert sum(1 for i, m in zip(ids, mask) if m and i == tok.eos_token_id) == 2
    assert ids.count(tok.eos_token_id) == 5


def test_configure_rejects_a_non_qwen_vocabulary(tok):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")))
    with pytest.raises(Exception, match="<\\|endoftext\\|> has id None"):
        configure(other)


def test_save_and_reload_keeps_template(tok, tmp_path):
    """The saved files carry the template, pad and eos (what the GGUF converter and any plain transformers user
    read). Reloaded with AutoTokenizer, not load_tokenizer, which would set the template again either way."""
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.chat_template == CHATML_TEMPLATE
    assert (again.pad_token, again.eos_token) == ("<|endoftext|>", "<|im_end|>")
    assert again.apply_chat_template(CONVERSATION, tokenize=False) == tok.apply_chat_template(CONVERSATION,
                                                                                              tokenize=False)
    assert again(" 코스피 200").input_ids == tok(" 코스피 200").input_ids

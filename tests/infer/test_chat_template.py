"""Chat templates: ChatML against its definition (exact text and special-token ids), HF Jinja templates against
the text transformers' `apply_chat_template` renders (exact; written out by hand here, transformers is not a
test dependency): trim_blocks/lstrip_blocks, bos_token, tojson without ASCII escapes, raise_exception, loop
controls, {% generation %}, tools; and the sandbox refusing Python internals."""

from __future__ import annotations

import json

import pytest

from llmlab.errors import LlmlabError
from llmlab.infer.chat_template import ChatTemplate, load_chat_template, render
from llmlab.tokenizer import ByteTokenizer, train_tokenizer

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": [{"type": "text", "text": "中文?"}]}]

# a Llama-3-like template using what HF templates use: bos_token, a system-message split, loop controls,
# raise_exception, tojson (non-ASCII kept), tools, {% generation %}; whitespace handled by trim/lstrip_blocks
HF_TEMPLATE = """{{ bos_token }}
{% if tools %}
<|tools|>{{ tools | tojson }}<|eot|>
{% endif %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
    {% if message['role'] == 'system' and loop.first %}
<|sys|>{{ message['content'] }}<|eot|>
        {% continue %}
    {% endif %}
<|{{ message['role'] }}|>
    {% if message['role'] == 'assistant' %}
{% generation %}{{ message['content'] }}{% endgeneration %}
    {% else %}
{{ message['content'] }}
    {% endif %}
<|eot|>
{% endfor %}
{% if add_generation_prompt %}<|assistant|>
{% endif %}"""


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer("chat template test text " * 20, 280)


def test_chatml():
    text = render(CHAT)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n中文?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert render(CHAT[:2], add_generation_prompt=False) == text[:text.index("<|im_start|>assistant")]
    assert ChatTemplate().render(CHAT) == text
    with pytest.raises(LlmlabError, match="plain_messages"):
        render(CHAT, tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(LlmlabError, match="role"):
        render([{"content": "no role"}])


def test_chatml_special_tokens_and_stops(tokenizer, tmp_path):
    """<|im_start|>/<|im_end|> encode to one special id each; <|im_end|> and eos stop the answer. A tokenizer
    without them (bytes) stops on the text <|im_end|> instead. A run dir's tokenizer/ has no template: ChatML."""
    (tmp_path / "tokenizer").mkdir()
    tokenizer.save(tmp_path / "tokenizer")
    template = load_chat_template(tmp_path)
    assert template.source is None
    ids = tokenizer.encode(template.render(CHAT[:2]), allowed_special="all")
    im_start, im_end = tokenizer.special_tokens["<|im_start|>"], tokenizer.special_tokens["<|im_end|>"]
    assert ids.count(im_start) == 3 and ids.count(im_end) == 2 and ids[0] == im_start
    assert template.stop_token_ids(tokenizer) == [im_end, tokenizer.eos_id]
    assert template.stop_strings(tokenizer) == ()
    assert template.stop_strings(ByteTokenizer()) == ("<|im_end|>",)
    assert template.stop_token_ids(ByteTokenizer()) == [ByteTokenizer().eos_id]


def test_hf_template_from_tokenizer_config(tmp_path):
    config = {"bos_token": {"content": "<|begin|>", "lstrip": False}, "eos_token": "<|end|>",
              "chat_template": HF_TEMPLATE}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    template = load_chat_template(tmp_path)
    chat = [*CHAT[:3], {"role": "user", "content": "中文?"}]  # content parts reach a Jinja template unchanged
    assert template.render(chat) == ("<|begin|>\n<|sys|>Be brief.<|eot|>\n<|user|>\nHi\n<|eot|>\n"
                                     "<|assistant|>\nHello!<|eot|>\n<|user|>\n中文?\n<|eot|>\n<|assistant|>\n")
    tools = [{"type": "function", "function": {"name": "天气", "parameters": {"type": "object"}}}]
    assert template.render(CHAT[1:2], add_generation_prompt=False, tools=tools) == (
        '<|begin|>\n<|tools|>[{"type": "function", "function": {"name": "天气", "parameters": {"type": "object"}}}]'
        "<|eot|>\n<|user|>\nHi\n<|eot|>\n")
    with pytest.raises(LlmlabError, match="unknown role tool"):
        template.render([{"role": "tool", "content": "42"}])


def test_template_file_named_templates_and_sandbox(tmp_path):
    """chat_template.jinja wins over tokenizer_config.json; a list of named templates gives "default"; the
    sandbox refuses attribute access to Python internals and mutation; invalid Jinja is a one-line error."""
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert load_chat_template(tmp_path).render(CHAT) == "D"
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}|{% endfor %}")
    assert load_chat_template(tmp_path).render(CHAT[:2]) == "Be brief.|Hi|"
    for attack in ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ messages.append(1) }}"):
        with pytest.raises(LlmlabError, match="chat template failed"):
            ChatTemplate(attack).render(CHAT)
    with pytest.raises(LlmlabError, match="not valid Jinja"):
        ChatTemplate("{% for %}")

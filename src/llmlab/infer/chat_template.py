"""Chat templates: a conversation (OpenAI-style messages) -> the prompt text a chat model was trained on.

Default, for llmlab's tokenizers (which reserve <|im_start|> and <|im_end|>): ChatML, as OpenAI introduced it and
Qwen uses it, each turn `<|im_start|>{role}\\n{content}<|im_end|>\\n`, and to ask for an answer, the generation
prompt `<|im_start|>assistant\\n`. The model ends its turn with <|im_end|>: a stop token.

An HF checkpoint whose tokenizer_config.json has a `chat_template` (or that ships chat_template.jinja) is rendered
with that Jinja template exactly as transformers' `apply_chat_template` does: a sandboxed Jinja environment (the
template comes with a downloaded model and must not reach Python internals), trim_blocks and lstrip_blocks, the
`tojson` filter without ASCII escaping, `raise_exception` and `strftime_now`, and the special tokens (bos_token,
eos_token, ...) as variables. Encode the result with `tokenizer.encode(text, allowed_special="all")`, so the
template's special tokens become their ids.

Tools: `render(..., tools=...)` hands the tool list to an HF template, which formats it itself (most tool-capable
models' templates do). ChatML has no tool format of its own: the HTTP server writes the tools and earlier tool
calls into the messages (`llmlab.serve.tools`: Qwen2.5's Hermes-style <tools> / <tool_call> format) and calls
`render` with tools=None.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from llmlab.errors import LlmlabError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# special tokens that end a turn in common chat formats (ChatML, Llama 3, Phi-3, Gemma): stop tokens when present
END_OF_TURN = (IM_END, "<|eot_id|>", "<|end|>", "<end_of_turn>")
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def message_text(content: Any) -> str:
    """A message's content as text: a string, or OpenAI's list of parts (the text parts joined), or None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    raise LlmlabError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def render(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
           tools: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The ChatML prompt of `messages` (each {"role": ..., "content": ...}); with add_generation_prompt, the
    assistant turn is opened for the model to write."""
    if tools:
        raise LlmlabError("ChatML has no tool format: write the tools into the messages (llmlab.serve.tools."
                          "plain_messages) and render with tools=None")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise LlmlabError(f"messages[{i}] must be a mapping with a string 'role', got {m!r:.80}")
        parts.append(f"{IM_START}{m['role']}\n{message_text(m.get('content'))}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


class ChatTemplate:
    """A model's chat format: ChatML (template=None) or an HF Jinja chat template with its special tokens."""

    def __init__(self, template: str | None = None, special_tokens: Mapping[str, str] | None = None) -> None:
        self.source = template
        self.special_tokens = dict(special_tokens or {})  # bos_token, eos_token, ... as the template names them
        self._compiled = None if template is None else compile_jinja(template)

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        if self._compiled is None:
            return render(messages, add_generation_prompt, tools)
        from jinja2.exceptions import TemplateError

        try:
            return self._compiled.render(messages=[dict(m) for m in messages], tools=tools,
                                         add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except TemplateError as e:
            raise LlmlabError(f"the model's chat template failed: {e}") from None

    def stop_token_ids(self, tokenizer) -> list[int]:
        """Ids of the end-of-turn tokens the tokenizer has (<|im_end|>, <|eot_id|>, ...) and its eos."""
        specials = getattr(tokenizer, "special_tokens", {})
        ids = [specials[t] for t in END_OF_TURN if t in specials]
        eos = getattr(tokenizer, "eos_id", None)
        return ids + ([eos] if eos is not None and eos not in ids else [])

    def stop_strings(self, tokenizer) -> tuple[str, ...]:
        """ChatML's end of turn as text, for a tokenizer that lacks <|im_end|> as a special token (e.g. bytes)."""
        if self._compiled is None and IM_END not in getattr(tokenizer, "special_tokens", {}):
            return (IM_END,)
        return ()


def load_chat_template(model_dir: str | Path) -> ChatTemplate:
    """The chat template of MODEL (llmlab run dir or HF dir): chat_template.jinja or tokenizer_config.json's
    chat_template, in MODEL/tokenizer/ or MODEL/, else ChatML."""
    model_dir = Path(model_dir)
    for folder in (model_dir / "tokenizer", model_dir):
        config = read_tokenizer_config(folder / "tokenizer_config.json")
        specials = {k: token_text(config[k]) for k in SPECIAL_TOKEN_KEYS if config.get(k) is not None}
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            return ChatTemplate(jinja_file.read_text(encoding="utf-8"), specials)
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates (e.g. "default", "tool_use"): take the default
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
            template = named.get("default", next(iter(named.values()), None))
        if isinstance(template, str):
            return ChatTemplate(template, specials)
    return ChatTemplate()


def read_tokenizer_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LlmlabError(f"{path}: not a readable tokenizer_config.json ({e})") from None
    return config if isinstance(config, dict) else {}


def token_text(token: str | Mapping) -> str:
    """A special token as tokenizer_config.json writes it: the string, or an AddedToken dict with "content"."""
    return token.get("content", "") if isinstance(token, Mapping) else str(token)


def compile_jinja(template: str):
    """Compile an HF chat template in the environment transformers uses (`_compile_jinja_template`)."""
    from jinja2 import nodes
    from jinja2.exceptions import TemplateError, TemplateSyntaxError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """{% generation %}...{% endgeneration %} marks the assistant's tokens for training masks; rendering
        passes its body through (transformers' AssistantTracker, without the mask)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    def raise_exception(message: str):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateSyntaxError as e:
        raise LlmlabError(f"the model's chat template is not valid Jinja: {e}") from None

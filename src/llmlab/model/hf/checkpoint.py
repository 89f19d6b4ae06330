"""A whole HF checkpoint from an llmlab run (or another HF checkpoint): the weights `save_hf_model` writes, plus
what `transformers` needs to use them without llmlab: the tokenizer files (AutoTokenizer), the chat template
(`apply_chat_template`) and `generation_config.json` (bos/eos/pad ids and the end-of-turn stop tokens, so HF's
`generate` stops where `llmlab generate` does)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from llmlab.errors import LlmlabError
from llmlab.infer.chat_template import IM_END, IM_START, load_chat_template, read_tokenizer_config
from llmlab.model.io import atomic_write, is_run_dir, load_model

# files an HF checkpoint's tokenizer may consist of; copied as they are (never re-written: nothing is lost)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.tiktoken", "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")

# llmlab's default chat format (infer.chat_template.render) as an HF Jinja template, for tokenizers that have the
# ChatML tokens; content may be a string or OpenAI's list of text parts, as render() accepts
CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '" + IM_START + "' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] is not none %}{% for part in message['content'] %}{{ part.get('text', '') }}"
    "{% endfor %}{% endif %}"
    "{{ '" + IM_END + "\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + IM_START + "assistant\\n' }}{% endif %}"
)


@dataclass
class Export:
    out_dir: Path
    model_type: str  # a native HF family, or "llmlab" (remote code: trust_remote_code=True)
    auto_class: str  # the transformers Auto class that opens it: AutoModelFor{CausalLM,MaskedLM,Seq2SeqLM}
    files: list[str]  # what the directory holds, sorted


def export_hf(model_dir: str | Path, out_dir: str | Path) -> Export:
    """MODEL (llmlab run dir or HF dir) -> OUT, a checkpoint that transformers' Auto classes open whole."""
    from llmlab.model.hf import hf_model_type, save_hf_model
    from llmlab.tokenizer import find_tokenizer, sequence_start_id

    src, out = Path(model_dir), Path(out_dir)
    if out.resolve() == src.resolve():
        raise LlmlabError(f"--out {out} is the model directory itself: choose another")
    model = load_model(src)
    save_hf_model(model, out)
    tok_dir = src / "tokenizer" if is_run_dir(src) else src
    copied = [name for name in TOKENIZER_FILES if (tok_dir / name).is_file()]
    for name in copied:
        atomic_write(out / name, lambda tmp, name=name: shutil.copyfile(tok_dir / name, tmp))
    if "tokenizer.json" not in copied:  # no tokenizer files: the byte tokenizer when the vocabulary fits it
        try:
            tokenizer = find_tokenizer(src, model.cfg.vocab_size)
        except LlmlabError:
            tokenizer = None  # weights only; AutoTokenizer has nothing to open
        if tokenizer is not None:
            tokenizer.save(out)
    if (out / "tokenizer.json").is_file():
        tokenizer = find_tokenizer(out, model.cfg.vocab_size)
        config = read_tokenizer_config(out / "tokenizer_config.json")
        has_chatml = {IM_START, IM_END} <= set(getattr(tokenizer, "special_tokens", {}))
        if not (out / "chat_template.jinja").is_file() and "chat_template" not in config and has_chatml:
            atomic_write(out / "chat_template.jinja", lambda tmp: Path(tmp).write_text(CHATML_JINJA, "utf-8"))
        if not (out / "generation_config.json").is_file():
            gen = generation_config(tokenizer, load_chat_template(out).stop_token_ids(tokenizer),
                                    sequence_start_id(src, tokenizer))
            atomic_write(out / "generation_config.json",
                         lambda tmp: Path(tmp).write_text(json.dumps(gen, indent=2) + "\n"))
    auto = {"decoder": "AutoModelForCausalLM", "encoder": "AutoModelForMaskedLM",
            "encoder-decoder": "AutoModelForSeq2SeqLM"}[model.cfg.arch]
    return Export(out, hf_model_type(model.cfg), auto, sorted(p.name for p in out.iterdir()))


def generation_config(tokenizer, stop_ids: list[int], start_id: int | None) -> dict:
    """HF's generation_config.json: bos_token_id the sequence start (for an llmlab run its eos: see
    `sequence_start_id`), eos_token_id every stop token (end of turn and eos), as Llama 3 lists them."""
    gen: dict = {"_from_model_config": False}
    if start_id is not None:
        gen["bos_token_id"] = start_id
    if stop_ids:
        gen["eos_token_id"] = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    if getattr(tokenizer, "pad_id", None) is not None:
        gen["pad_token_id"] = tokenizer.pad_id
    return gen

"""A byte-level BPE tokenizer <-> GGUF's `tokenizer.*` metadata, as llama.cpp's "gpt2" (BPE) tokenizer reads it.

convert_hf_to_gguf.py `_set_vocab_gpt2` writes: tokenizer.ggml.model = "gpt2"; tokenizer.ggml.pre, the name of the
pre-tokenizer regex llama.cpp applies (src/llama-vocab.cpp); tokenizer.ggml.tokens, each id's token as in
tokenizer.json (GPT-2's byte-to-unicode alphabet, "Ġ" for the space byte); tokenizer.ggml.token_type (1 normal,
3 control, 5 unused: llama.h `llama_token_type`); tokenizer.ggml.merges as "left right" strings in priority order;
then bos/eos/padding ids and tokenizer.chat_template.
"""

from __future__ import annotations

from llmlab.errors import LlmlabError
from llmlab.model.gguf.format import Value, ValueType
from llmlab.tokenizer.bpe import Tokenizer
from llmlab.tokenizer.hf_json import merges_from_ranks, ranks_from_vocab, token_to_str
from llmlab.tokenizer.pretokenize import GPT2_PATTERN, GPT4_PATTERN

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.h llama_token_type (gguf-py TokenType)

# Qwen2's tokenizer.json regex: GPT-4's with single digits
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# our regex -> the tokenizer.ggml.pre whose regex llama.cpp's llama-vocab.cpp runs. "llama-bpe" (Llama 3) is GPT-4's
# cl100k pattern and sets ignore_merges (a chunk that is a token is that token), as our encoder and tiktoken do.
PRE_TOKENIZERS = {GPT4_PATTERN: "llama-bpe", GPT2_PATTERN: "gpt-2", QWEN2_PATTERN: "qwen2"}


def tokenizer_metadata(tok, vocab_size: int, chat_template: str | None = None,
                       bos_id: int | None = None) -> dict[str, Value]:
    """The tokenizer.* keys for `tok` (an llmlab Tokenizer or ByteTokenizer) and a model of vocab_size ids; ids the
    tokenizer does not use become "[PAD{id}]" of type unused, as convert_hf_to_gguf.py writes them. bos_id: the
    sequence start when it is not tok.bos_id (an llmlab run's is its eos: `tokenizer.sequence_start_id`)."""
    ranks = getattr(tok, "ranks", None) or {bytes([b]): b for b in range(256)}  # ByteTokenizer: the bytes, no merges
    pattern = getattr(tok, "pattern", GPT4_PATTERN)  # without merges the pattern changes no id
    if pattern not in PRE_TOKENIZERS:
        raise LlmlabError(f"cannot export the tokenizer's pre-tokenizer regex {pattern!r} to GGUF: llama.cpp knows "
                          "it by name only; llmlab maps gpt4 (llama-bpe), gpt2 (gpt-2) and Qwen2's (qwen2)")
    by_id: dict[int, tuple[str, int]] = {i: (token_to_str(t), NORMAL) for t, i in ranks.items()}
    by_id.update({i: (name, CONTROL) for name, i in tok.special_tokens.items()})
    if max(by_id) >= vocab_size:
        raise LlmlabError(f"the tokenizer has id {max(by_id)} but the model's vocab_size is {vocab_size}")
    tokens = [by_id.get(i, (f"[PAD{i}]", UNUSED)) for i in range(vocab_size)]
    md = {"tokenizer.ggml.model": Value.string("gpt2"),
          "tokenizer.ggml.pre": Value.string(PRE_TOKENIZERS[pattern]),
          "tokenizer.ggml.tokens": Value.array(ValueType.STRING, [t for t, _ in tokens]),
          "tokenizer.ggml.token_type": Value.array(ValueType.INT32, [k for _, k in tokens]),
          # llama.cpp refuses a BPE vocabulary without this key, so it is written even when empty (bytes only)
          "tokenizer.ggml.merges": Value.array(ValueType.STRING, [f"{token_to_str(a)} {token_to_str(b)}"
                                                                  for a, b in merges_from_ranks(ranks)])}
    bos = tok.bos_id if bos_id is None else bos_id
    for key, i in (("bos", bos), ("eos", tok.eos_id), ("padding", tok.pad_id)):
        if i is not None:
            md[f"tokenizer.ggml.{key}_token_id"] = Value.u32(i)
    # llmlab's encode adds no token; without this key llama.cpp's llama-bpe would prepend bos to every prompt
    md["tokenizer.ggml.add_bos_token"] = Value.boolean(False)
    if chat_template is not None:
        md["tokenizer.chat_template"] = Value.string(chat_template)
    return md


def tokenizer_from_metadata(md: dict[str, Value], source: str) -> Tokenizer:
    """An llmlab Tokenizer from tokenizer.* metadata: normal tokens are the ranks (checked against the merges),
    control and user-defined tokens the special tokens, unused ids skipped."""
    model = md["tokenizer.ggml.model"].value if "tokenizer.ggml.model" in md else None
    if model != "gpt2":
        raise LlmlabError(f"{source}: tokenizer.ggml.model={model!r}; llmlab reads byte-level BPE ('gpt2') only")
    pre = md["tokenizer.ggml.pre"].value if "tokenizer.ggml.pre" in md else "default"
    patterns = {name: p for p, name in PRE_TOKENIZERS.items()} | {"llama3": GPT4_PATTERN, "llama-v3": GPT4_PATTERN}
    if pre not in patterns:
        raise LlmlabError(f"{source}: tokenizer.ggml.pre={pre!r} is not supported; llmlab reads "
                          f"{', '.join(sorted(patterns))}")
    tokens = md["tokenizer.ggml.tokens"].value
    types = md["tokenizer.ggml.token_type"].value if "tokenizer.ggml.token_type" in md else [NORMAL] * len(tokens)
    merges_md = md.get("tokenizer.ggml.merges")
    merges = [tuple(m.split(" ")) for m in (merges_md.value if merges_md else [])]
    vocab = {t: i for i, (t, k) in enumerate(zip(tokens, types, strict=True)) if k == NORMAL}
    specials = {t: i for i, (t, k) in enumerate(zip(tokens, types, strict=True)) if k in (CONTROL, USER_DEFINED)}
    ranks = ranks_from_vocab(vocab, merges, source)

    def name(key: str) -> str | None:
        v = md.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[v.value] if v is not None and tokens[v.value] in specials else None

    return Tokenizer(ranks, patterns[pre], specials, bos=name("bos"), eos=name("eos"), pad=name("padding"))

"""Split regexes. References: HF tokenizers' ByteLevel pre-tokenizer (its built-in GPT-2 regex, Rust) for GPT-2, and
HF's Split pre-tokenizer (Oniguruma engine) running our GPT-4 pattern; exact equality of the chunks."""

import pytest
from tokenizers import Regex, pre_tokenizers

from llmlab.tokenizer.hf_json import str_to_token
from llmlab.tokenizer.pretokenize import GPT4_PATTERN, split, split_special


def test_gpt2_pattern_equals_hf_bytelevel_regex(texts, strings):
    """Reference: tokenizers.pre_tokenizers.ByteLevel(use_regex=True), GPT-2's regex built into HF tokenizers."""
    hf = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    for text in [texts[1], *strings]:
        ours = [c.encode("utf-8") for c in split(text, "gpt2")]
        assert ours == [str_to_token(piece, "hf") for piece, _ in hf.pre_tokenize_str(text)], ascii(text)


def test_gpt4_pattern_same_chunks_in_oniguruma(texts, strings):
    """Reference: tokenizers.pre_tokenizers.Split(Regex(GPT4_PATTERN), "isolated"): the same pattern in HF's engine
    (Oniguruma) gives the same chunks as the `regex` module, and the chunks cover the text."""
    hf = pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated")
    for text in [texts[1], *strings]:
        ours = split(text, "gpt4")
        assert "".join(ours) == text
        assert ours == [piece for piece, _ in hf.pre_tokenize_str(text)], ascii(text)


@pytest.mark.parametrize("pattern, chunks", [
    ("gpt2", ["I", "'m", " 12345", " years", "\n\n ", " old", "!!", "\n"]),
    ("gpt4", ["I", "'m", " ", "123", "45", " years", "\n\n", " ", " old", "!!\n"]),
])
def test_documented_behaviour(pattern, chunks):
    """Reference: the patterns' documented behaviour (digits in groups of three and newline runs apart in GPT-4)."""
    assert split("I'm 12345 years\n\n  old!!\n", pattern) == chunks


def test_split_special_longest_first():
    assert split_special("a<|im_start|>b<|im", {"<|im_start|>", "<|im"}) == [
        ("a", False), ("<|im_start|>", True), ("b", False), ("<|im", True)]
    assert split_special("no specials", set()) == [("no specials", False)]
    assert split_special("", {"<|eos|>"}) == []

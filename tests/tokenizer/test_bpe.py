"""Byte-level BPE: trainer, readable encoder, decoder.

References: a naive trainer that recounts every pair at every merge (written below), tiktoken's
`_educational.bpe_train`, and `tiktoken.Encoding` built from our ranks (ids and decoded text must be equal)."""

from collections import Counter
from itertools import pairwise

import pytest
import tiktoken
from tiktoken import _educational

from llmlab.errors import ConfigError, LlmlabError
from llmlab.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer
from llmlab.tokenizer.bpe import chunk_counts, merge_pair, train_bpe
from llmlab.tokenizer.pretokenize import resolve_pattern


def naive_train(chunks: dict[bytes, int], num_merges: int) -> tuple[list[tuple[bytes, bytes]], list[bool]]:
    """Full recount per merge; the same rule as train_bpe: highest count, ties to the smallest (left id, right id).
    Also returns, per merge, whether the winning count was tied."""
    token_bytes = [bytes([b]) for b in range(256)]
    words, freqs = [list(c) for c in chunks], list(chunks.values())
    merges, tied = [], []
    while len(merges) < num_merges:
        counts = Counter()
        for ids, f in zip(words, freqs, strict=True):
            for pair in pairwise(ids):
                counts[pair] += f
        if not counts:
            break
        a, b = min(counts, key=lambda p: (-counts[p], p))
        tied.append(sum(c == counts[a, b] for c in counts.values()) > 1)
        new = len(token_bytes)
        token_bytes.append(token_bytes[a] + token_bytes[b])
        merges.append((token_bytes[a], token_bytes[b]))
        words = [merge_pair(ids, a, b, new) for ids in words]
    return merges, tied


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_incremental_trainer_equals_full_recount(texts, pattern):
    """Reference: naive_train above; the same merges in the same order, ties included."""
    chunks = chunk_counts([texts[0][:20_000]], pattern)
    merges = train_bpe(chunks, 300)
    expected, tied = naive_train(chunks, 300)
    assert merges == expected and sum(tied) > 10  # ties were exercised


def test_merges_equal_tiktoken_educational_until_the_first_tie(texts):
    """Reference: tiktoken._educational.bpe_train. It breaks ties by first occurrence in the text (dict order), we
    by smallest pair ids, so the merge lists must agree up to the first tied step."""
    text = texts[0][:40_000]
    n = 45
    _, tied = naive_train(chunk_counts([text], "gpt4"), n)
    first_tie = tied.index(True)
    assert first_tie >= 40
    edu = _educational.bpe_train(text, 256 + n, resolve_pattern("gpt4"), visualise=None)
    ours = train_tokenizer(text, 256 + n, special_tokens=(), backend="ours").ranks
    assert list(ours.items())[:256 + first_tie] == list(edu.items())[:256 + first_tie]


def test_tie_break_and_running_out_of_pairs():
    assert train_bpe({b"cd": 1, b"ab": 1}, 1) == [(b"a", b"b")]  # equal counts: smallest pair (97, 98) first
    assert train_bpe({b"aaaa": 1}, 10) == [(b"a", b"a"), (b"aa", b"aa")]  # stops when every chunk is one token
    assert merge_pair([1, 1, 1], 1, 1, 9) == [9, 1]  # left to right, non-overlapping


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_tiktoken_encoding_from_our_ranks_gives_our_ids(texts, pattern):
    """Reference: tiktoken.Encoding(pat_str, mergeable_ranks=our ranks, special_tokens) on the whole held-out text
    (English + Chinese); our readable encoder must give identical ids, and both decode back to the text."""
    ours = train_tokenizer(texts[0], 700, pattern=pattern, backend="ours")
    ref = tiktoken.Encoding("ref", pat_str=ours.pattern, mergeable_ranks=ours.ranks, special_tokens=ours.special_tokens)
    ids = ours.encode(texts[1])
    assert ids == ref.encode(texts[1])
    assert ours.decode(ids) == texts[1]
    assert len(texts[1].encode("utf-8")) / len(ids) > 2  # it did learn to compress


def test_backends_agree_and_round_trip_any_unicode(tok, strings, any_strings):
    """Reference: tiktoken (our default backend) vs our readable encoder; decode(encode(s)) == s for every string."""
    ours = Tokenizer(tok.ranks, tok.pattern, tok.special_tokens, backend="ours")
    for s in strings:
        assert ours.encode(s) == tok.encode(s), ascii(s)
    for s in any_strings:
        assert tok.decode(tok.encode(s)) == s and ours.decode(ours.encode(s)) == s, ascii(s)
    assert tok.encode_batch(strings[:20]) == [ours.encode(s) for s in strings[:20]] == ours.encode_batch(strings[:20])


def test_decode_mid_character_matches_tiktoken(tok):
    """Reference: tiktoken.Encoding.decode (errors="replace"): every prefix of the ids of Chinese + emoji text,
    including prefixes that end inside a multi-byte character, decodes to the same string."""
    ref = tiktoken.Encoding("ref", pat_str=tok.pattern, mergeable_ranks=tok.ranks, special_tokens=tok.special_tokens)
    text = "床前明月光，疑是地上霜。👨‍👩‍👧 👍🏽 naïve"
    ids = tok.encode(text)
    prefixes = [tok.decode(ids[:k]) for k in range(len(ids) + 1)]
    assert prefixes == [ref.decode(ids[:k]) for k in range(len(ids) + 1)]
    assert any("\ufffd" in p for p in prefixes)  # some prefix did stop inside a character
    with pytest.raises(LlmlabError, match="not in the vocabulary"):
        tok.decode([tok.vocab_size])


@pytest.mark.parametrize("backend", ["tiktoken", "ours"])
def test_special_tokens_only_when_allowed(tok, backend):
    """Reference: tiktoken's semantics with disallowed_special=(): special-token text that is not allowed is
    ordinary text."""
    t = Tokenizer(tok.ranks, tok.pattern, tok.special_tokens, backend=backend)
    assert list(t.special_tokens) == list(SPECIAL_TOKENS)
    assert sorted(t.special_tokens.values()) == list(range(len(t.ranks), t.vocab_size))  # after the merges
    text = "<|im_start|>user\nhi<|im_end|><|eos|>"
    plain = t.encode(text)
    assert not set(plain) & set(t.special_tokens.values()) and t.decode(plain) == text
    some = t.encode(text, allowed_special={"<|eos|>"})
    assert some[-1] == t.eos_id and t.special_tokens["<|im_start|>"] not in some
    every = t.encode(text, allowed_special="all")
    assert every[0] == t.special_tokens["<|im_start|>"] and every[-2:] == [t.special_tokens["<|im_end|>"], t.eos_id]
    assert t.decode(every) == text
    assert (t.bos_id, t.eos_id, t.pad_id) == tuple(t.special_tokens[s] for s in ("<|bos|>", "<|eos|>", "<|pad|>"))
    with pytest.raises(LlmlabError, match="unknown special"):
        t.encode("x", allowed_special={"<|nope|>"})


def test_vocab_size_too_small_is_a_config_error():
    with pytest.raises(ConfigError, match="vocab_size=100"):
        train_tokenizer("hello", 100)
    assert train_tokenizer("ab ab", 10_000).vocab_size < 10_000  # the text ran out of pairs: a smaller vocabulary

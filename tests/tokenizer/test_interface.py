"""The interface every tokenizer shares (Tokenizer, ByteTokenizer, a loaded HF-style file): the data, training and
serving code may take any of them. Reference: the tokenizer's own encode (encode_batch) and the input text
(round trip)."""

import pytest

from llmlab.tokenizer import ByteTokenizer, load_tokenizer


@pytest.fixture(params=["bpe", "bytes", "loaded"])
def any_tok(request, tok, tmp_path_factory):
    if request.param == "bpe":
        return tok
    if request.param == "bytes":
        return ByteTokenizer()
    return load_tokenizer(tok.save(tmp_path_factory.mktemp("tok")))


def test_common_interface(any_tok, texts, tmp_path):
    t = any_tok
    assert isinstance(t.vocab_size, int) and isinstance(t.special_tokens, dict)
    assert all(isinstance(i, int) and 0 <= i < t.vocab_size for i in (t.bos_id, t.eos_id, t.pad_id))
    batch = [texts[1][:300], "", "床前明月光 👍🏽"]
    ids = t.encode_batch(batch)
    assert ids == [t.encode(s) for s in batch]
    assert [t.decode(i) for i in ids] == batch
    assert t.encode("<|eos|>", allowed_special={"<|eos|>"}) == [t.eos_id]
    assert t.eos_id not in t.encode("<|eos|>")
    assert load_tokenizer(t.save(tmp_path)).encode(texts[1]) == t.encode(texts[1])

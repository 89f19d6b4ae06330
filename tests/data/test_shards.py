"""Token shards. Criteria: decoding the shards with the byte tokenizer gives back every document exactly (in order,
eos between); the manifest's sha256 and counts equal those of the files; the train/val split is a function of
the seed and the texts only; a corrupt, truncated or missing shard is an LlmlabError; ShardDataset batches are
reproducible from a seed and resume exactly from state_dict()."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from llmlab.data.load import Document, read_jsonl
from llmlab.data.shards import ShardDataset, open_shards, split_by_document, token_dtype, write_shards
from llmlab.errors import LlmlabError
from llmlab.tokenizer.bytes import ByteTokenizer

SAMPLE = Path(__file__).parent / "sample"


def sample_docs() -> list[Document]:
    return list(read_jsonl(SAMPLE / "en.jsonl")) + list(read_jsonl(SAMPLE / "zh.jsonl"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, list[Document], dict]:
    out = tmp_path_factory.mktemp("shards")
    docs = sample_docs()
    manifest = write_shards(docs, out, ByteTokenizer(), val_fraction=0.2, seed=0, shard_tokens=60_000)
    return out, docs, manifest


def decode_split(out: Path, split: str) -> list[str]:
    tok = ByteTokenizer()
    _, arrays = open_shards(out, split)
    stream = np.concatenate([np.asarray(a) for a in arrays]).tolist()
    texts, doc = [], []
    for t in stream:
        if t == tok.eos_id:
            texts.append(tok.decode(doc))
            doc = []
        else:
            doc.append(t)
    assert doc == []  # the stream ends with eos
    return texts


def test_round_trip_decodes_every_document(shards):
    """Byte tokenizer: train shards + val shards decode to the documents, each split in input order."""
    out, docs, _ = shards
    is_val = split_by_document(docs, 0.2, 0)
    assert decode_split(out, "train") == [d.text for d, v in zip(docs, is_val, strict=True) if not v]
    assert decode_split(out, "val") == [d.text for d, v in zip(docs, is_val, strict=True) if v]


def test_manifest_hashes_and_counts_match_the_files(shards):
    """Every shard's sha256 and token count in manifest.json equal the file's; totals add up by source."""
    out, docs, manifest = shards
    assert manifest["dtype"] == "uint16" and manifest["eos_id"] == 257 and manifest["vocab_size"] == 260
    assert len(manifest["splits"]["train"]["shards"]) > 1  # 60k-token shards: several
    total = 0
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            data = (out / shard["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == 2 * shard["tokens"]
        assert split["tokens"] == sum(s["tokens"] for s in split["shards"]) == sum(
            s["tokens"] for s in split["sources"].values())
        total += split["tokens"]
    assert total == sum(len(d.text.encode("utf-8")) + 1 for d in docs)
    assert json.loads((out / "manifest.json").read_text())["tokenizer"]["class"].endswith("ByteTokenizer")


def test_split_is_deterministic_per_source_and_order_free():
    """Same seed -> same val documents, whatever the document order; every source gets >= 1 val document."""
    docs = sample_docs()
    val = {d.text for d, v in zip(docs, split_by_document(docs, 0.2, seed=5), strict=True) if v}
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    assert val == {d.text for d, v in zip(shuffled, split_by_document(shuffled, 0.2, seed=5), strict=True) if v}
    assert {d.source for d in docs if d.text in val} == {"sotu", "shakespeare", "kjv", "brown", "tang"}
    other = {d.text for d, v in zip(docs, split_by_document(docs, 0.2, seed=6), strict=True) if v}
    assert other != val
    assert len(val) == sum(max(1, round(0.2 * n)) for n in (4, 3, 11, 5, 5))


def test_parallel_tokenization_writes_the_same_shards(shards, tmp_path):
    """Two worker processes produce byte-identical shards."""
    out, docs, manifest = shards
    parallel = write_shards(docs, tmp_path, ByteTokenizer(), val_fraction=0.2, seed=0, shard_tokens=60_000, workers=2)
    assert parallel["splits"] == manifest["splits"]


def test_large_vocab_uses_uint32(tmp_path):
    """vocab_size <= 65536 fits uint16; above it the shards are uint32."""
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32

    class WideTokenizer(ByteTokenizer):
        def __init__(self):
            super().__init__()
            self.vocab_size, self.eos_id = 100_000, 99_999

    manifest = write_shards(sample_docs()[:3], tmp_path, WideTokenizer(), val_fraction=0.0)
    shard = manifest["splits"]["train"]["shards"][0]
    assert manifest["dtype"] == "uint32" and (tmp_path / shard["file"]).stat().st_size == 4 * shard["tokens"]
    assert int(np.fromfile(tmp_path / shard["file"], dtype=np.uint32).max()) == 99_999


def test_out_of_range_ids_are_an_error(tmp_path):
    """A tokenizer whose ids exceed its vocab_size's dtype is refused, not wrapped around."""

    class Liar(ByteTokenizer):
        def encode(self, text, allowed_special=()):
            return [70_000]  # vocab_size 260 says uint16, which cannot hold 70000

    with pytest.raises(LlmlabError, match="outside uint16"):
        write_shards(sample_docs()[:2], tmp_path, Liar(), val_fraction=0.0)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_shard_is_detected(shards, tmp_path, damage):
    """A shard whose bytes differ from manifest.json (one flipped byte, a truncation, a deletion) is an
    LlmlabError naming the file."""
    out, docs, _ = shards
    write_shards(docs, tmp_path, ByteTokenizer(), val_fraction=0.2, seed=0, shard_tokens=60_000)
    victim = tmp_path / "train_0001.bin"
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[1000] ^= 1
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(bytes(data[:-2]))
    else:
        victim.unlink()
    with pytest.raises(LlmlabError, match="train_0001.bin") as e:
        ShardDataset(tmp_path, "train", block_size=64, batch_size=2)
    assert "\n" not in str(e.value)


def test_random_batches_are_windows_of_the_stream_and_seeded(shards):
    """random_batch: (B, T+1) int64, each row a contiguous slice of a shard; equal for equal seeds."""
    out, _, _ = shards
    a = ShardDataset(out, "train", block_size=32, batch_size=4, seed=1)
    b = ShardDataset(out, "train", block_size=32, batch_size=4, seed=1)
    _, arrays = open_shards(out, "train")
    streams = [np.asarray(x).astype(np.int64).tobytes() for x in arrays]
    for _ in range(5):
        x = a.random_batch()
        assert x.shape == (4, 33) and x.dtype == torch.int64
        assert torch.equal(x, b.random_batch())
        for row in x.numpy():
            assert any(row.tobytes() in s for s in streams)
    assert not torch.equal(ShardDataset(out, "train", 32, 4, seed=2).random_batch(), a.random_batch())


def test_next_batch_tiles_the_stream_and_wraps(shards):
    """next_batch: consecutive windows overlap by one token (x/y tiling) and the epoch counter wraps."""
    out, _, _ = shards
    ds = ShardDataset(out, "val", block_size=512, batch_size=8)
    first = ds.next_batch()
    assert torch.equal(first[0, -1], first[1, 0])
    assert torch.equal(first[0], torch.from_numpy(np.asarray(open_shards(out, "val")[1][0][:513], dtype=np.int64)))
    while ds.epoch == 0:
        ds.next_batch()
    assert ds.shard == 0 and ds.offset <= 8 * 512


@pytest.mark.parametrize("method", ["random_batch", "next_batch"])
def test_resume_from_state_dict_gives_the_same_batches(shards, method):
    """Save state after 7 batches, build a new dataset, load the state (through JSON, as a checkpoint would):
    the next 5 batches equal those of the uninterrupted run."""
    out, _, _ = shards
    run = ShardDataset(out, "train", block_size=128, batch_size=16, seed=3)
    for _ in range(7):
        getattr(run, method)()
    state = json.loads(json.dumps(run.state_dict()))
    expected = [getattr(run, method)() for _ in range(5)]
    resumed = ShardDataset(out, "train", block_size=128, batch_size=16, seed=999)
    resumed.load_state_dict(state)
    assert all(torch.equal(x, getattr(resumed, method)()) for x in expected)


def test_split_too_small_for_the_block_is_an_error(shards):
    """A split with fewer than block_size + 1 tokens in every shard is an error, not an empty loop."""
    out, _, manifest = shards
    with pytest.raises(LlmlabError, match="block_size"):
        ShardDataset(out, "val", block_size=10**7)
    with pytest.raises(LlmlabError, match="no split"):
        ShardDataset(out, "test")

"""Token shards: documents -> token ids (in parallel) -> flat uint16/uint32 files + manifest.json, and their reader.

Layout of an output directory:
    train_0000.bin, train_0001.bin, ..., val_0000.bin   raw token ids, native byte order, no header
    manifest.json                                         dtype, token/doc counts per split and source,
                                                          sha256 of every shard, the tokenizer's identity
Each document's tokens are followed by the tokenizer's eos_id, so documents are separated in the stream.
The split is by document: within each source, the documents with the smallest blake2b(seed, text)
go to validation, so the split depends only on the seed and the texts, not on their order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from llmlab.data.load import Document
from llmlab.errors import LlmlabError

MANIFEST = "manifest.json"
FORMAT = "llmlab-shards-1"
SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard, as llm.c / nanochat shard FineWeb
PROBE = "Hello, world! The quick brown fox. 你好，世界。 12345 \n\t<|eos|>"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids 0..65535, so vocab_size <= 2^16; anything larger needs uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_id", None)
    if not isinstance(eos, int):
        raise LlmlabError(f"tokenizer {type(tokenizer).__name__} has no integer eos_id: shards put one after "
                          f"each document")
    return eos


def encode_all(tokenizer, texts: list[str]) -> list[list[int]]:
    """encode_batch when the tokenizer has one, else encode per text."""
    if hasattr(tokenizer, "encode_batch"):
        return tokenizer.encode_batch(texts)
    return [tokenizer.encode(t) for t in texts]


def tokenizer_identity(tokenizer) -> dict:
    """What the shards were encoded with: class, vocab size, eos id and a hash of the ids of a probe text."""
    probe_ids = encode_all(tokenizer, [PROBE])[0]
    return {"class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
            "vocab_size": int(tokenizer.vocab_size), "eos_id": eos_id(tokenizer),
            "probe_sha256": hashlib.sha256(json.dumps(list(map(int, probe_ids))).encode()).hexdigest()}


_worker_tokenizer = None


def _init_worker(tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_chunk(texts: list[str], tokenizer=None) -> list[np.ndarray]:
    # int64 arrays, not lists: a worker sends back 8 bytes per token instead of a pickled Python int
    return [np.asarray(ids, dtype=np.int64) for ids in encode_all(tokenizer or _worker_tokenizer, texts)]


def tokenize(tokenizer, texts: list[str], workers: int = 1, chunk: int = 16) -> Iterator[np.ndarray]:
    """Token ids of each text as an int64 array, in order; `workers` > 1 encodes chunks of documents in a
    process pool (the tokenizer is sent to each worker once)."""
    chunks = [texts[i:i + chunk] for i in range(0, len(texts), chunk)]
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            yield from _encode_chunk(c, tokenizer)
        return
    with Pool(workers, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        for ids in pool.imap(_encode_chunk, chunks):
            yield from ids


def split_by_document(docs: list[Document], val_fraction: float, seed: int) -> list[bool]:
    """is_val per document: in each source, the round(val_fraction * n) documents (at least 1, leaving 1 for
    training) whose blake2b(seed, text) is smallest."""
    if not 0 <= val_fraction < 1:
        raise LlmlabError(f"val_fraction={val_fraction} must be in [0, 1)")
    by_source: dict[str, list[int]] = {}
    for i, d in enumerate(docs):
        by_source.setdefault(d.source, []).append(i)
    is_val = [False] * len(docs)
    for idx in by_source.values():
        n_val = round(val_fraction * len(idx))
        if val_fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        key = {i: hashlib.blake2b(docs[i].text.encode("utf-8"), key=str(seed).encode(), digest_size=16).digest()
               for i in idx}
        for i in sorted(idx, key=lambda i: (key[i], i))[:n_val]:
            is_val[i] = True
    return is_val


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _ShardWriter:
    """Appends token arrays to split_0000.bin, split_0001.bin, ... of at most shard_tokens each."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.file = None

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):04d}.bin"
        self.file = (self.out_dir / name).open("wb")
        self.hash = hashlib.sha256()
        self.shards.append({"file": name, "tokens": 0, "sha256": ""})

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            data = part.astype(self.dtype).tobytes()
            self.file.write(data)
            self.hash.update(data)
            self.shards[-1]["tokens"] += len(part)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.shards[-1]["sha256"] = self.hash.hexdigest()
            self.file = None


def write_shards(docs: list[Document], out_dir: Path | str, tokenizer, val_fraction: float = 0.05, seed: int = 0,
                 shard_tokens: int = SHARD_TOKENS, workers: int = 1, extra: dict | None = None,
                 on_progress: Callable[[int], None] | None = None) -> dict:
    """Tokenize docs, write train/val shards and manifest.json into out_dir; returns the manifest.

    `on_progress(n)` is called after each n documents are written; `extra` is stored in the manifest as is.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # no manifest until every shard is complete
    for old in list(out_dir.glob("train_*.bin")) + list(out_dir.glob("val_*.bin")):
        old.unlink()
    eos = eos_id(tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    limit = np.iinfo(dtype).max
    is_val = split_by_document(docs, val_fraction, seed)
    writers = {s: _ShardWriter(out_dir, s, dtype, shard_tokens) for s in ("train", "val")}
    counts = {s: {"docs": 0, "tokens": 0, "sources": {}} for s in writers}
    try:
        for i, ids in enumerate(tokenize(tokenizer, [d.text for d in docs], workers)):
            split = "val" if is_val[i] else "train"
            arr = np.append(ids, eos)
            if arr.min() < 0 or arr.max() > limit:
                raise LlmlabError(f"tokenizer produced id {int(arr.max())} outside {dtype.name} (vocab_size="
                                  f"{tokenizer.vocab_size}); its vocab_size is wrong")
            writers[split].write(arr)
            for c in (counts[split], counts[split]["sources"].setdefault(docs[i].source, {"docs": 0, "tokens": 0})):
                c["docs"] += 1
                c["tokens"] += len(arr)
            if on_progress is not None:
                on_progress(1)
    finally:
        for w in writers.values():
            w.close()
    manifest = {"format": FORMAT, "dtype": dtype.name, "eos_id": eos, "vocab_size": int(tokenizer.vocab_size),
                "tokenizer": tokenizer_identity(tokenizer), "seed": seed, "val_fraction": val_fraction,
                "splits": {s: {**counts[s], "shards": writers[s].shards} for s in writers}, **(extra or {})}
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out_dir / MANIFEST)
    return manifest


def read_manifest(directory: Path | str) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise LlmlabError(f"{directory}: no {MANIFEST}; write the shards with `llmlab data prepare --out {directory}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LlmlabError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
    if manifest.get("format") != FORMAT:
        raise LlmlabError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def open_shards(directory: Path | str, split: str, verify: bool = True) -> tuple[dict, list[np.memmap]]:
    """The manifest and one read-only memmap per shard of `split`, each checked against the manifest's
    size and (verify=True) sha256."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if split not in manifest["splits"]:
        raise LlmlabError(f"{directory}: no split {split!r} (splits: {', '.join(manifest['splits'])})")
    dtype = np.dtype(manifest["dtype"])
    arrays = []
    for shard in manifest["splits"][split]["shards"]:
        path = directory / shard["file"]
        if not path.is_file():
            raise LlmlabError(f"{path}: shard listed in {MANIFEST} is missing; run `llmlab data prepare` again")
        if path.stat().st_size != shard["tokens"] * dtype.itemsize:
            raise LlmlabError(f"{path}: {path.stat().st_size} bytes, {MANIFEST} says {shard['tokens']} tokens of "
                              f"{dtype.name}: truncated or replaced; run `llmlab data prepare` again")
        if verify and sha256_file(path) != shard["sha256"]:
            raise LlmlabError(f"{path}: sha256 differs from {MANIFEST}: the shard is corrupt or was modified; "
                              f"run `llmlab data prepare` again")
        arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    return manifest, arrays


class ShardDataset:
    """(B, T+1) int64 windows of one split: `random_batch()` from a seeded generator, or `next_batch()` in
    order, T tokens apart, wrapping around at the end. `state_dict()` holds both positions, for resuming."""

    def __init__(self, directory: Path | str, split: str = "train", block_size: int = 256, batch_size: int = 8,
                 seed: int = 0, verify: bool = True) -> None:
        self.manifest, shards = open_shards(directory, split, verify)
        self.split, self.block_size, self.batch_size, self.seed = split, block_size, batch_size, seed
        self.shards = [s for s in shards if len(s) > block_size]  # a window needs T+1 tokens
        if not self.shards:
            total = sum(len(s) for s in shards)
            raise LlmlabError(f"{directory}: split {split!r} has {total} tokens, no shard holds block_size+1="
                              f"{block_size + 1}; use a smaller block size or more data")
        starts = np.array([len(s) - block_size for s in self.shards])  # valid window starts per shard
        self.cum_starts = np.cumsum(starts)  # (n_shards,)
        self.rng = np.random.default_rng(seed)
        self.shard, self.offset, self.epoch = 0, 0, 0

    @property
    def tokens(self) -> int:
        return int(sum(len(s) for s in self.shards))

    def _window(self, shard: int, offset: int) -> np.ndarray:
        return np.asarray(self.shards[shard][offset:offset + self.block_size + 1], dtype=np.int64)

    def random_batch(self) -> torch.Tensor:
        """B windows at uniform random starts over all shards: (B, T+1)."""
        idx = self.rng.integers(0, self.cum_starts[-1], size=self.batch_size)
        shard = np.searchsorted(self.cum_starts, idx, side="right")
        offset = idx - np.concatenate([[0], self.cum_starts])[shard]
        return torch.from_numpy(np.stack([self._window(s, o) for s, o in zip(shard, offset, strict=True)]))

    def next_batch(self) -> torch.Tensor:
        """The next B windows in order: window k starts at k*T within a shard (x/y pairs tile the stream)."""
        rows = []
        for _ in range(self.batch_size):
            if self.offset + self.block_size + 1 > len(self.shards[self.shard]):
                self.shard, self.offset = self.shard + 1, 0
                if self.shard == len(self.shards):
                    self.shard, self.epoch = 0, self.epoch + 1
            rows.append(self._window(self.shard, self.offset))
            self.offset += self.block_size
        return torch.from_numpy(np.stack(rows))

    def state_dict(self) -> dict:
        return {"split": self.split, "block_size": self.block_size, "batch_size": self.batch_size,
                "rng": self.rng.bit_generator.state, "shard": self.shard, "offset": self.offset, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        if (state["split"], state["block_size"]) != (self.split, self.block_size):
            raise LlmlabError(f"data state is for split={state['split']!r} block_size={state['block_size']}, this "
                              f"dataset has split={self.split!r} block_size={self.block_size}")
        self.rng.bit_generator.state = state["rng"]
        self.shard, self.offset, self.epoch = state["shard"], state["offset"], state["epoch"]

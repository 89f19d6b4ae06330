"""Shared by the training tests: a tiny byte-level shard dir and a tiny TrainConfig."""

from __future__ import annotations

from pathlib import Path

from llmlab.data.load import Document
from llmlab.data.samples import sample_text
from llmlab.data.shards import write_shards
from llmlab.tokenizer.bytes import ByteTokenizer
from llmlab.train.loop import TrainConfig

# a 2-layer, 64-wide member of the tiny preset: a step on 8 x 32 tokens takes milliseconds on one CPU thread
SMALL = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 160, "max_seq_len": 64}


def tiny_data(directory: Path) -> Path:
    """The sonnets, one document each, as byte-level shards with 10% of them held out for validation."""
    docs = [Document(p, "sonnets") for p in sample_text("sonnets").split("\n\n") if len(p) > 200]
    write_shards(docs, directory, ByteTokenizer(), val_fraction=0.1, seed=0)
    return directory


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    fields = dict(data=str(data), out_dir=str(out), model_overrides=SMALL, batch_size=8, seq_len=32, max_steps=50,
                  lr=1e-2, min_lr=1e-3, warmup_steps=5, eval_interval=25, eval_batches=4, sample_interval=25,
                  sample_tokens=16, checkpoint_interval=25)
    return TrainConfig(**{**fields, **changes})

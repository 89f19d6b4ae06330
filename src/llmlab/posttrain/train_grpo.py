"""GRPO training on a task with a verifiable reward: sample a group per prompt, grade, normalize within the group,
take clipped policy-gradient steps with a k3 KL penalty to the frozen starting policy  (Shao et al. 2024, Alg. 1).

One step: draw `prompts_per_step` prompts; sample `group_size` completions of each at temperature 1 (left-padded
batch, KV cache); reward each with `reward_fn(example, completion)` (default: `grade` -> 1/0, plus `format_reward`
when the completion closes its turn); A_i = (r_i - mean(group)) / std(group); then `num_iterations` updates on the
same rollouts, the ratio taken against the log-probs at sampling time (mu in the paper; 1 = on-policy, ratio 1).
A group whose rewards are all equal gives A = 0: no signal from it. The reward curve goes to grpo_metrics.json and
reward_curve.png.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.chat_template import END_OF_TURN, ChatTemplate
from llmlab.posttrain.chat_data import GRADED, grade, load_chat_data
from llmlab.posttrain.grpo import group_advantages, grpo_loss, k3_kl
from llmlab.posttrain.logprobs import completion_logprobs
from llmlab.posttrain.sft import load_chat_model
from llmlab.train.loop import resolve_device

RewardFn = Callable[[Mapping, str], float]


@dataclass
class Rollout:
    """A batch of sampled completions: input_ids (B, P + N) = left-padded prompt + completion, attention_mask
    (B, P + N), completion_mask (B, N) (tokens up to and including the end of turn), texts (B,) answers."""

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    prompt_len: int
    texts: list[str]
    finished: list[bool]  # did the completion close its turn within max_new_tokens


@torch.no_grad()
def rollout(model: torch.nn.Module, tokenizer, template: ChatTemplate, examples: Sequence[Mapping], group_size: int,
            max_new_tokens: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Rollout:
    """Sample group_size completions of each example's prompt (its messages without the final answer), prompt-major."""
    from llmlab.infer.generate import generate

    stop_ids = template.stop_token_ids(tokenizer)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    device = next(model.parameters()).device
    prompts = []
    for ex in examples:
        messages = ex["messages"][:-1] if ex["messages"][-1]["role"] == "assistant" else ex["messages"]
        ids = tokenizer.encode(template.render(messages, add_generation_prompt=True), allowed_special="all")
        prompts += [ids[-(model.cfg.max_seq_len - max_new_tokens):]] * group_size
    t = max(map(len, prompts))
    ids = torch.tensor([[pad] * (t - len(p)) + p for p in prompts], device=device)  # (B, P) left padding
    prompt_mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts], device=device)
    was_training = model.training
    model.eval()
    out = generate(model, ids, max_new_tokens, temperature=temperature, attention_mask=prompt_mask,
                   eos_token_id=stop_ids, pad_token_id=pad, generator=generator)
    model.train(was_training)
    completion = out[:, t:]  # (B, N)
    is_stop = torch.isin(completion, torch.tensor(stop_ids, device=device)) if stop_ids else \
        torch.zeros_like(completion, dtype=torch.bool)
    # keep tokens up to and including the first stop: those before it number cumsum(is_stop) - is_stop == 0
    completion_mask = ((is_stop.long().cumsum(-1) - is_stop.long()) == 0).long()
    texts = []
    for row, m in zip(completion.tolist(), completion_mask.tolist(), strict=True):
        text = tokenizer.decode([tok for tok, keep in zip(row, m, strict=True) if keep and tok not in stop_ids])
        cut = min((text.find(s) for s in END_OF_TURN if s in text), default=len(text))
        texts.append(text[:cut].strip())
    return Rollout(out, torch.cat([prompt_mask, completion_mask], dim=1), completion_mask, t, texts,
                   is_stop.any(-1).tolist())


def rollout_logprobs(model: torch.nn.Module, r: Rollout) -> Tensor:
    """Per-token log-probs of the completion tokens under `model`: (B, N), 0 off the completion."""
    positions = (r.attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row's positions start at 0
    logits = model(r.input_ids, attention_mask=r.attention_mask, position_ids=positions)  # (B, P + N, V)
    full_mask = torch.cat([torch.zeros_like(r.attention_mask[:, : r.prompt_len]), r.completion_mask], dim=1)
    return completion_logprobs(logits, r.input_ids, full_mask)[:, r.prompt_len - 1:]  # (B, N)


def default_reward(example: Mapping, completion: str, finished: bool = True, format_reward: float = 0.0) -> float:
    """1 for a right answer (`grade`), else 0; plus format_reward when the completion closed its turn."""
    return float(grade(example, completion)) + (format_reward if finished else 0.0)


@dataclass
class GRPOResult:
    out_dir: str
    steps: int
    group_size: int
    rewards: list[float]  # mean reward per step: the reward curve
    accuracy: list[float]  # share of completions `grade` accepts per step
    kl: list[float]  # mean k3 KL to the reference per step (token mean, then sequence mean)
    losses: list[float]
    zero_advantage_groups: list[int]  # groups per step whose rewards were all equal
    seconds: float
    samples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _plot(result: GRPOResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(result.rewards, label="mean reward")
    ax.plot(result.accuracy, label="accuracy", alpha=0.7)
    ax.set_xlabel("step")
    ax.set_title(f"GRPO reward curve (group size {result.group_size})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_grpo(policy_dir: str | Path, tasks: str | Path | Sequence[Mapping], out_dir: str | Path, *,
               group_size: int = 8, prompts_per_step: int = 4, beta: float = 0.04, clip_eps: float = 0.2,
               steps: int = 50, lr: float = 1e-4, max_new_tokens: int = 16, num_iterations: int = 1,
               temperature: float = 1.0, reward_fn: RewardFn | None = None, format_reward: float = 0.0,
               loss_type: str = "grpo", grad_clip: float = 1.0, seed: int = 0, device: str = "cpu",
               log=None) -> GRPOResult:
    """Train POLICY (run dir or HF dir) with GRPO on graded `tasks` (an SFT set / messages JSONL with meta, or a
    list of records); write OUT (the model, tokenizer/, grpo_metrics.json, reward_curve.png)."""
    from llmlab.model.io import save_model
    from llmlab.train.optim import AdamW, clip_grad_norm_

    if group_size < 2:
        raise ConfigError(f"group_size={group_size} must be >= 2: advantages compare completions within a group")
    if steps < 1 or prompts_per_step < 1 or num_iterations < 1:
        raise ConfigError(f"steps={steps}, prompts_per_step={prompts_per_step} and num_iterations={num_iterations} "
                          "must be >= 1")
    start = time.perf_counter()
    torch.manual_seed(seed)
    dev = resolve_device(device)
    cm = load_chat_model(policy_dir)
    policy, tokenizer, template = cm.model.to(dev), cm.tokenizer, cm.template
    records = load_chat_data(tasks, "sft").examples if isinstance(tasks, str | Path) else [dict(t) for t in tasks]
    examples = [ex for ex in records if ex.get("meta", {}).get("task") in GRADED] if reward_fn is None else records
    if not examples:
        raise LlmlabError("no task with a verifiable answer (records with meta.task and meta.answer) to train on")

    reference = copy.deepcopy(policy).eval().requires_grad_(False) if beta else None  # the frozen start
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    rng = random.Random(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    result = GRPOResult(str(out_dir), steps, group_size, [], [], [], [], [], 0.0)
    for step in range(steps):
        batch = [rng.choice(examples) for _ in range(prompts_per_step)]
        r = rollout(policy, tokenizer, template, batch, group_size, max_new_tokens, temperature, gen)
        group_of = [ex for ex in batch for _ in range(group_size)]
        if reward_fn is None:
            rewards = [default_reward(ex, text, done, format_reward)
                       for ex, text, done in zip(group_of, r.texts, r.finished, strict=True)]
        else:
            rewards = [float(reward_fn(ex, text)) for ex, text in zip(group_of, r.texts, strict=True)]
        rewards_t = torch.tensor(rewards, device=dev)
        advantages = group_advantages(rewards_t, group_size)  # (B,)
        mask = r.completion_mask.float()
        with torch.no_grad():
            old = rollout_logprobs(policy, r) if num_iterations > 1 else None
            ref = rollout_logprobs(reference, r) if reference is not None else None
        for _ in range(num_iterations):
            logps = rollout_logprobs(policy, r)
            loss = grpo_loss(logps, logps.detach() if old is None else old, ref, advantages, mask, beta, clip_eps,
                             clip_eps, loss_type)
            loss.backward()
            if grad_clip:
                clip_grad_norm_(params, grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        kl = ((k3_kl(logps.detach(), ref) * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean() if ref is not None \
            else torch.zeros(())
        result.rewards.append(sum(rewards) / len(rewards))
        result.accuracy.append(sum(grade(ex, t) for ex, t in zip(group_of, r.texts, strict=True)) / len(r.texts))
        result.kl.append(float(kl))
        result.losses.append(float(loss.detach()))
        result.zero_advantage_groups.append(int((rewards_t.view(-1, group_size).std(1) == 0).sum()))
        if log is not None:
            log(step, result.rewards[-1], result.kl[-1])
    result.samples = [{"prompt": ex["messages"][0]["content"], "completion": t, "reward": rw}
                      for ex, t, rw in list(zip(group_of, r.texts, rewards, strict=True))[:8]]
    policy.eval()
    out = Path(out_dir)
    save_model(policy.cpu(), out)
    tokenizer.save(out / "tokenizer")
    if template.source is not None:
        (out / "tokenizer" / "chat_template.jinja").write_text(template.source, encoding="utf-8")
    result.seconds = time.perf_counter() - start
    (out / "grpo_metrics.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    _plot(result, out / "reward_curve.png")
    return result

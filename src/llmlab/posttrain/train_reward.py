"""Reward-model training: a base LM with a fresh scalar head, Bradley-Terry loss on preference pairs -> a run dir.

Each side of a pair is scored at its last real token (the end of turn that closes the answer); the loss is
-log sigmoid(r_chosen - r_rejected)  (Bradley & Terry 1952; InstructGPT, Ouyang et al. 2022). Metric: pairwise
accuracy on held-out pairs before (fresh head) and after training.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llmlab.errors import ConfigError, LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.posttrain.chat_data import train_and_val
from llmlab.posttrain.reward import RewardModel, bradley_terry_loss, pairwise_accuracy
from llmlab.posttrain.sft import load_chat_model
from llmlab.posttrain.train_dpo import Row, encode_pair, pair_batch
from llmlab.train.loop import resolve_device

WEIGHTS = "reward_model.safetensors"
CONFIG = "reward_model_config.json"


def pair_rewards(rm: RewardModel, pairs: Sequence[tuple[Row, Row]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rewards (B,), rejected rewards (B,)) of a list of encoded pairs, in one right-padded batch."""
    device = next(rm.parameters()).device
    batch = pair_batch(pairs, pad_id)
    r = rm(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))  # (2B,)
    return r[: len(pairs)], r[len(pairs):]


@torch.no_grad()
def held_out_pair_accuracy(rm: RewardModel, pairs: Sequence[tuple[Row, Row]], pad_id: int, batch_size: int = 32
                           ) -> dict:
    """Pairwise accuracy and mean reward margin of `rm` on `pairs`."""
    was_training = rm.training
    rm.eval()
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        c, r = pair_rewards(rm, pairs[i: i + batch_size], pad_id)
        chosen.append(c.cpu())
        rejected.append(r.cpu())
    rm.train(was_training)
    c, r = torch.cat(chosen), torch.cat(rejected)
    return {"accuracy": pairwise_accuracy(c, r), "margin": (c - r).mean().item(),
            "loss": bradley_terry_loss(c, r).item(), "n": len(pairs)}


def save_reward_model(rm: RewardModel, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in rm.state_dict().items()}, str(out / WEIGHTS))
    (out / CONFIG).write_text(rm.backbone.cfg.to_json() + "\n")
    return out


def load_reward_model(path: str | Path) -> RewardModel:
    """A reward model written by `train_reward_model` (OUT/reward_model.safetensors + its config)."""
    path = Path(path)
    if not (path / WEIGHTS).is_file():
        raise LlmlabError(f"{path} has no {WEIGHTS}: not a reward model written by train_reward_model")
    rm = RewardModel(TransformerConfig.from_json((path / CONFIG).read_text()))
    rm.load_state_dict(load_file(str(path / WEIGHTS)))
    return rm.eval()


@dataclass
class RewardResult:
    out_dir: str
    steps: int
    losses: list[float]
    val_before: dict
    val_after: dict
    train_pairs: int
    val_pairs: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def train_reward_model(base_dir: str | Path, pref_data: str | Path | Sequence[Mapping], out_dir: str | Path, *,
                       steps: int = 100, lr: float = 1e-3, batch_size: int = 16,
                       val_data: str | Path | Sequence[Mapping] | None = None, max_len: int | None = None,
                       grad_clip: float = 1.0, seed: int = 0, on_error: str = "raise", device: str = "cpu",
                       log=None) -> RewardResult:
    """Train a reward model from BASE (run dir or HF dir) on preference pairs; write OUT (reward weights, config,
    tokenizer/, reward_metrics.json) and return held-out pairwise accuracy before/after."""
    from llmlab.train.optim import AdamW, clip_grad_norm_

    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps={steps} and batch_size={batch_size} must be >= 1")
    start = time.perf_counter()
    torch.manual_seed(seed)
    cm = load_chat_model(base_dir, max_len)
    tokenizer, template, pad_id, max_len = cm.tokenizer, cm.template, cm.pad_id, cm.max_len
    rm = RewardModel.from_lm(cm.model).to(resolve_device(device))
    del cm

    train, val = train_and_val(pref_data, val_data, "prefs", on_error)
    train_pairs = [encode_pair(p, tokenizer, template, max_len) for p in train.examples]
    val_pairs = [encode_pair(p, tokenizer, template, max_len) for p in val.examples]
    if not train_pairs:
        raise LlmlabError("no preference pairs to train on")

    val_before = held_out_pair_accuracy(rm, val_pairs, pad_id) if val_pairs else {}
    rm.train()
    params = [p for p in rm.parameters() if p.requires_grad]
    opt = AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(seed)
    order: list[int] = []
    losses = []
    for step in range(steps):
        idx = []
        while len(idx) < batch_size:  # epochs of a seeded shuffle
            if not order:
                order = list(range(len(train_pairs)))
                rng.shuffle(order)
            idx.append(order.pop())
        chosen, rejected = pair_rewards(rm, [train_pairs[i] for i in idx], pad_id)
        loss = bradley_terry_loss(chosen, rejected)
        loss.backward()
        if grad_clip:
            clip_grad_norm_(params, grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if log is not None:
            log(step, losses[-1])
    rm.eval()
    val_after = held_out_pair_accuracy(rm, val_pairs, pad_id) if val_pairs else {}

    out = save_reward_model(rm, out_dir)
    tokenizer.save(out / "tokenizer")
    if template.source is not None:
        (out / "tokenizer" / "chat_template.jinja").write_text(template.source, encoding="utf-8")
    result = RewardResult(str(out), steps, losses, val_before, val_after, len(train_pairs), len(val_pairs),
                          time.perf_counter() - start)
    (out / "reward_metrics.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result

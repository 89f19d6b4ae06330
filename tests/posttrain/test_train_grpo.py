"""GRPO on the tiny addition model with a verifiable, dense reward: the reward curve rises, KL stays finite, and a
group with all-equal rewards has zero advantage."""

from __future__ import annotations

import json
import math

import torch

from llmlab.posttrain.chat_data import grade
from llmlab.posttrain.grpo import group_advantages
from llmlab.posttrain.train_grpo import default_reward, train_grpo
from tests.posttrain.helpers import addition, tiny_sft_model


def closeness(example: dict, completion: str) -> float:
    """1 for the right sum, else partial credit 1 - |error| / 10 for a number, 0 for anything else."""
    if grade(example, completion):
        return 1.0
    try:
        return max(0.0, 1 - abs(int(completion) - int(example["meta"]["answer"])) / 10) * 0.5
    except ValueError:
        return 0.0


def test_all_equal_rewards_give_zero_advantage():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]), group_size=4)
    assert torch.equal(adv[:4], torch.zeros(4)) and adv[4:].abs().sum() > 0
    assert default_reward(addition(2, 3), "5") == 1.0 and default_reward(addition(2, 3), "6", True, 0.1) == 0.1


def test_grpo_reward_curve_rises(tmp_path):
    sft_dir, _, _ = tiny_sft_model()
    tasks = [addition(a, b) for a in range(5) for b in range(5)]
    r = train_grpo(sft_dir, tasks, tmp_path / "grpo", group_size=8, prompts_per_step=4, beta=0.04, steps=40,
                   lr=2e-3, max_new_tokens=4, reward_fn=closeness, seed=0)
    first, last = sum(r.rewards[:8]) / 8, sum(r.rewards[-8:]) / 8
    assert last > first, r.rewards
    assert all(math.isfinite(k) and k >= 0 for k in r.kl)
    metrics = json.loads((tmp_path / "grpo" / "grpo_metrics.json").read_text())
    assert metrics["rewards"] == r.rewards and (tmp_path / "grpo" / "reward_curve.png").stat().st_size > 0

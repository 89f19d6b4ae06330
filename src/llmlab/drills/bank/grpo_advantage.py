"""GRPO's group-normalised advantages: each reward against the other completions of its prompt."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.posttrain.grpo import group_advantages

STARTER = '''"""Drill: grpo_advantage. Check with `llmlab drill check grpo_advantage`."""
import torch
from torch import Tensor


def grpo_advantage(rewards: Tensor, group_size: int, eps: float = 1e-4) -> Tensor:
    """GRPO (Shao et al. 2024, Sec. 4.1.2): A_i = (r_i - mean(group)) / (std(group) + eps), std unbiased (N - 1).

    rewards: (N * G,) float, prompt-major (the G completions of prompt 0 first); group_size = G.
    Returns (N * G,) in rewards' dtype. A group of one has std 0 (not NaN): its advantage is 0.
    """
    raise NotImplementedError
'''


def grpo_advantage(rewards: Tensor, group_size: int, eps: float = 1e-4) -> Tensor:
    return group_advantages(rewards, group_size, scale="group", eps=eps)


def _binary(g: torch.Generator, n: int) -> Tensor:
    return (torch.rand(n, generator=g, dtype=torch.float64) < 0.5).float()


def examples() -> list[Case]:
    return [Case(dict(rewards=torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.25]), group_size=3), ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    n, k = randint(g, 2, 6), randint(g, 2, 9)
    same = randn(g, n * k).view(n, k)
    same[0] = 1.0  # every completion of prompt 0 scored alike: std 0
    return [Case(dict(rewards=randn(g, n * k), group_size=k), ("random",)),
            Case(dict(rewards=_binary(g, n * k), group_size=k), ("binary",)),
            Case(dict(rewards=same.reshape(-1), group_size=k), ("equal-rewards",)),
            Case(dict(rewards=randn(g, n * 2), group_size=2), ("group2",)),
            Case(dict(rewards=randn(g, n), group_size=1), ("group1",)),
            Case(dict(rewards=randn(g, n * k, scale=10.0), group_size=k, eps=1e-2), ("eps",)),
            Case(dict(rewards=randn(g, n * k, dtype=torch.float64), group_size=k), ("fp64",))]


DRILL = Drill(
    name="grpo_advantage", area="posttrain", difficulty=1, minutes=8, func="grpo_advantage",
    statement="Write GRPO's group-normalised advantages for G completions per prompt.",
    starter=STARTER, reference=grpo_advantage, sources=(group_advantages,), examples=examples, hidden=hidden,
    tags=("equal-rewards", "group1", "binary"),
    hints=("View the rewards as (N, G): one row per prompt; normalise each row on its own.",
           "Subtract the row mean, divide by the row std + eps; use keepdim=True so it broadcasts, then flatten.",
           "GRPO uses the unbiased std (divide by G - 1, torch's default); a group of one has no spread: "
           "return 0 there, not NaN."),
    tag_hints={"equal-rewards": "a group whose rewards are all equal has std 0: eps keeps the advantage at 0.",
               "group1": "std of one sample is NaN in torch: treat it as 0 for group_size 1.",
               "binary": "the std is the unbiased one (correction=1), torch.std's default.",
               "random": "normalise within each prompt's group, not over the whole batch."},
    banned=("group_advantages",),
)

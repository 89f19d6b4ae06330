"""Reward-model training (Bradley-Terry) on the tiny addition model: held-out pairwise accuracy rises above chance."""

from __future__ import annotations

import json

import torch

from llmlab.posttrain.train_reward import load_reward_model, train_reward_model
from tests.posttrain.helpers import addition_pairs, tiny_sft_model


def test_reward_model_learns_held_out_preferences(tmp_path):
    sft_dir, train, val = tiny_sft_model()
    r = train_reward_model(sft_dir, addition_pairs(train), tmp_path / "rm", steps=80, lr=2e-3, batch_size=16,
                           val_data=addition_pairs(val, seed=1))
    assert sum(r.losses[-10:]) / 10 < sum(r.losses[:10]) / 10, r.losses
    assert r.val_after["accuracy"] > 0.6, (r.val_before, r.val_after)
    assert json.loads((tmp_path / "rm" / "reward_metrics.json").read_text())["val_after"] == r.val_after
    rm = load_reward_model(tmp_path / "rm")
    assert rm(torch.tensor([[1, 2, 3]])).shape == (1,)

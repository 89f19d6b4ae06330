"""PPO training loop on tiny models: runs end to end with finite, logged metrics; updates touch only the policy and the
value model (the reference and the reward model stay frozen); a stopped run resumes exactly; the saved policy and
value model load. Slow: the verifiable reward rises from the tiny SFT model (tests/posttrain/helpers.py)."""

from __future__ import annotations

import copy
import functools
import json
import math
import random
import tempfile
from pathlib import Path

import pytest
import torch

import llmlab
from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.chat_template import render
from llmlab.model.config import TransformerConfig
from llmlab.posttrain.reward import RewardModel
from llmlab.posttrain.sft import held_out_accuracy, load_chat_model
from llmlab.posttrain.train_dpo import encode_pair
from llmlab.posttrain.train_grpo import rollout
from llmlab.posttrain.train_ppo import (
    PPOConfig,
    RewardModelScorer,
    make_experience,
    ppo_update,
    train_ppo,
)
from llmlab.posttrain.train_reward import load_reward_model, pair_rewards, train_reward_model
from llmlab.tokenizer import train_tokenizer
from tests.posttrain.helpers import V, addition, addition_pairs, tiny_sft_model

FAST = dict(batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=4, progress=False)


@functools.cache
def tiny_chat_model() -> tuple[Path, list[dict]]:
    """A 1-layer random model with a BPE trained on the addition chats, and those chats; built once per session.
    Untrained, so fast to make: enough to run every code path (the slow test uses the SFT'd model)."""
    examples = [addition(a, b) for a in range(10) for b in range(10)]
    root = Path(tempfile.mkdtemp(prefix="llmlab-ppo-"))
    tok = train_tokenizer([render(ex["messages"], add_generation_prompt=False) for ex in examples], V)
    torch.manual_seed(0)
    model = llmlab.Transformer(TransformerConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2,
                                                 d_ff=64, max_seq_len=32))
    llmlab.save_model(model, root / "base")
    tok.save(root / "base" / "tokenizer")
    return root / "base", examples


def some_digit(example: dict, completion: str) -> float:
    """A dense reward the untrained model earns sometimes: 1 if the completion holds a digit."""
    return float(any(c.isdigit() for c in completion))


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ppo_runs_end_to_end_logs_finite_metrics_and_saves_loadable_models(tmp_path):
    base, examples = tiny_chat_model()
    out = tmp_path / "ppo"
    r = train_ppo(base, examples, out, steps=3, reward_fn=some_digit, **FAST)
    curves = ("rewards", "kl", "policy_loss", "value_loss", "clip_frac", "value_clip_frac", "approx_kl")
    assert all(len(getattr(r, name)) == 3 and all(map(math.isfinite, getattr(r, name))) for name in curves)
    assert r.kl[0] == 0.0  # the first rollout is sampled before any update: policy == frozen reference
    assert all(0 <= a <= 1 for a in r.accuracy) and any(x > 0 for x in r.rewards)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in records] == [1, 2, 3] and [rec["reward"] for rec in records] == r.rewards
    assert json.loads((out / "ppo_metrics.json").read_text())["value_loss"] == r.value_loss
    assert (out / "reward_curve.png").stat().st_size > 0 and r.samples and (out / "tb").is_dir()

    trained, start = llmlab.load_model(out), llmlab.load_model(base)
    assert not same(trained.state_dict(), start.state_dict())
    assert load_reward_model(out / "value")(torch.tensor([[1, 2, 3]])).shape == (1,)
    assert load_chat_model(out).tokenizer.vocab_size == load_chat_model(base).tokenizer.vocab_size


def test_update_moves_policy_and_value_only():
    base, examples = tiny_chat_model()
    cfg = PPOConfig(batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=4)
    cm = load_chat_model(base)
    policy = cm.model.eval()
    reference = copy.deepcopy(policy).requires_grad_(False)
    value = RewardModel.from_lm(policy).eval()
    before = {"policy": state(policy), "reference": state(reference), "value": state(value)}
    r = rollout(policy, cm.tokenizer, cm.template, examples[:8], 1, 4, generator=torch.Generator().manual_seed(0))
    scores = torch.tensor([some_digit({}, t) for t in r.texts])
    exp = make_experience(policy, value, reference, r, scores, cfg)
    # policy == reference: no KL penalty yet, the per-token rewards of each row add up to its score
    torch.testing.assert_close(exp.rewards.sum(-1), scores)
    stats = ppo_update(policy, value, torch.optim.AdamW([*policy.parameters(), *value.parameters()], lr=1e-2), exp,
                       cfg, random.Random(0))
    assert all(math.isfinite(v) for v in stats.values())
    assert same(state(reference), before["reference"]) and not any(p.requires_grad for p in reference.parameters())
    assert not same(state(policy), before["policy"]) and not same(state(value), before["value"])


def test_resume_continues_exactly_and_guards_the_run_dir(tmp_path):
    base, examples = tiny_chat_model()
    whole = train_ppo(base, examples, tmp_path / "whole", steps=4, reward_fn=some_digit, **FAST)
    train_ppo(base, examples, tmp_path / "split", steps=2, reward_fn=some_digit, **FAST)
    with pytest.raises(LlmlabError, match="already holds a PPO run"):
        train_ppo(base, examples, tmp_path / "split", steps=4, reward_fn=some_digit, **FAST)
    with pytest.raises(ConfigError, match="lr=0.5 differs"):
        train_ppo(base, examples, tmp_path / "split", steps=4, lr=0.5, reward_fn=some_digit, resume=True, **FAST)
    resumed = train_ppo(base, examples, tmp_path / "split", steps=4, reward_fn=some_digit, resume=True, **FAST)
    assert resumed.rewards == whole.rewards and resumed.kl == whole.kl and resumed.value_loss == whole.value_loss
    assert same(llmlab.load_model(tmp_path / "split").state_dict(), llmlab.load_model(tmp_path / "whole").state_dict())
    with pytest.raises(LlmlabError, match="no checkpoint"):
        train_ppo(base, examples, tmp_path / "new", steps=1, resume=True, **FAST)


def test_reward_model_scores_as_trained_and_drives_ppo(tmp_path):
    base, examples = tiny_chat_model()
    train_reward_model(base, addition_pairs(examples[:16]), tmp_path / "rm", steps=2, batch_size=4)
    scorer = RewardModelScorer.load(tmp_path / "rm", torch.device("cpu"))
    pairs = addition_pairs(examples[:3])
    encoded = [encode_pair(p, scorer.tokenizer, scorer.template) for p in pairs]
    chosen, rejected = pair_rewards(scorer.model, encoded, scorer.pad_id)
    torch.testing.assert_close(scorer(examples[:3], [p["chosen"][0]["content"] for p in pairs]), chosen)
    torch.testing.assert_close(scorer(examples[:3], [p["rejected"][0]["content"] for p in pairs]), rejected)

    r = train_ppo(base, examples, tmp_path / "ppo", steps=1, reward_model=str(tmp_path / "rm"), **FAST)
    assert math.isfinite(r.rewards[0]) and r.rewards[0] != 0 and r.config["reward_model"] == str(tmp_path / "rm")
    assert same(state(load_reward_model(tmp_path / "rm")), state(scorer.model))  # never trained by PPO


def test_config_errors():
    with pytest.raises(ConfigError, match="minibatch_size=8 must be <= batch_size=4"):
        PPOConfig(batch_size=4, minibatch_size=8)
    with pytest.raises(ConfigError, match="lam=1.5 must be in"):
        PPOConfig(lam=1.5)
    assert PPOConfig.from_dict(PPOConfig(beta=0.2).to_dict()) == PPOConfig(beta=0.2)
    with pytest.raises(ConfigError, match="unknown PPO config field"):
        PPOConfig.from_dict({"kl_coef": 0.1})
    base, examples = tiny_chat_model()
    with pytest.raises(ConfigError, match="unknown PPO config field"):
        train_ppo(base, examples, "unused", kl_coef=0.1)
    with pytest.raises(ConfigError, match="either reward_model or reward_fn"):
        train_ppo(base, examples, "unused", reward_model="rm", reward_fn=some_digit)
    with pytest.raises(ConfigError, match="max_new_tokens=32 leaves no room"):
        train_ppo(base, examples, "unused", max_new_tokens=32)
    with pytest.raises(LlmlabError, match="no task with a verifiable answer"):
        train_ppo(base, [{"messages": [{"role": "user", "content": "hi"}]}], "unused")


@pytest.mark.slow
def test_ppo_raises_the_verifiable_reward(tmp_path):
    """The task reward (`grade`: 1 for the right sum, else 0) from the tiny SFT model, on the prompts a, b < 5."""
    sft_dir, _, _ = tiny_sft_model()
    tasks = [addition(a, b) for a in range(5) for b in range(5)]
    r = train_ppo(sft_dir, tasks, tmp_path / "ppo", steps=120, batch_size=16, minibatch_size=8, ppo_epochs=4,
                  lr=1e-3, max_new_tokens=4, progress=False)
    first, last = sum(r.rewards[:20]) / 20, sum(r.rewards[-20:]) / 20
    greedy = held_out_accuracy(sft_dir, tasks, 4)["accuracy"], held_out_accuracy(tmp_path / "ppo", tasks, 4)["accuracy"]
    print(f"PPO sampled reward, first 20 steps {first:.3f} -> last 20 {last:.3f}; greedy accuracy {greedy[0]:.2f} -> "
          f"{greedy[1]:.2f}; KL at the end {r.kl[-1]:.2f}; {r.seconds:.0f} s")
    assert last > first + 0.03 and greedy[1] > greedy[0], (r.rewards, greedy)
    assert r.accuracy == r.rewards and all(math.isfinite(k) for k in r.kl)

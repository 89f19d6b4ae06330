"""DPO training on a tiny model SFT'd on single-digit addition: the step-0 loss is ln 2 (policy == reference), the
reference runs only to fill its cache, and held-out implicit-reward margin and preference accuracy rise."""

from __future__ import annotations

import json
import math

import pytest
import torch

import llmlab
from llmlab.posttrain.train_dpo import encode_pair, pair_batch, pair_logps, preference_loss, train_dpo
from llmlab.tokenizer import load_tokenizer
from tests.posttrain.helpers import addition_pairs, tiny_sft_model

V = 300  # asked for; the addition texts run out of pairs to merge a little earlier


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    sft_dir, train, val = tiny_sft_model()
    out = tmp_path_factory.mktemp("dpo") / "out"
    result = train_dpo(sft_dir, addition_pairs(train), out, beta=0.1, steps=100, lr=2e-3, batch_size=16,
                       val_data=addition_pairs(val, seed=1))
    return sft_dir, out, result


def test_step_zero_loss_is_ln2_and_reference_runs_only_for_the_cache(dpo_run):
    _, out, r = dpo_run
    assert r.losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference: -log sigmoid(0)
    assert r.val_before["margin"] == pytest.approx(0.0, abs=1e-5) and r.val_before["accuracy"] == 0.0
    # cached: one reference forward per batch of 32 pairs (80 train, 20 val), none inside the 100 training steps
    assert r.reference_forward_calls == math.ceil(80 / 32) + math.ceil(20 / 32)
    assert json.loads((out / "dpo_metrics.json").read_text())["steps"] == 100
    assert (out / "model.safetensors").is_file() or any(out.glob("*.safetensors"))


def test_dpo_raises_held_out_margin_and_accuracy(dpo_run):
    _, _, r = dpo_run
    assert r.val_after["margin"] > r.val_before["margin"] + 0.05, (r.val_before, r.val_after)
    assert r.val_after["accuracy"] >= r.val_before["accuracy"] and r.val_after["accuracy"] > 0.5
    assert r.val_after["reward_chosen"] > r.val_after["reward_rejected"]


def test_every_loss_is_ln2_or_its_closed_form_at_policy_equal_reference(dpo_run):
    sft_dir, val = dpo_run[0], tiny_sft_model()[2]
    model = llmlab.load_model(sft_dir).eval()
    tok = load_tokenizer(sft_dir / "tokenizer")
    pairs = [encode_pair(p, tok) for p in addition_pairs(val[:4])]
    with torch.no_grad():
        logps, avg, lengths = pair_logps(model, pair_batch(pairs, tok.pad_id))
    ref = logps.view(2, -1).T
    assert preference_loss("sigmoid", logps, avg, lengths, ref, 0.1) == pytest.approx(torch.full((4,), math.log(2)))
    assert preference_loss("ipo", logps, avg, lengths, ref, 0.1) == pytest.approx(torch.full((4,), 25.0))  # (1/2b)^2
    assert preference_loss("hinge", logps, avg, lengths, ref, 0.1) == pytest.approx(torch.ones(4))
    with pytest.raises(llmlab.errors.ConfigError, match="must be one of"):
        preference_loss("kto", logps, avg, lengths, ref, 0.1)

"""DPO training on a tiny model SFT'd on single-digit addition: the step-0 loss is ln 2 (policy == reference), the
reference runs only to fill its cache, and held-out implicit-reward margin and preference accuracy rise. Then RPO
(DPO + alpha NLL), ORPO (no reference) and KTO (pairs unpaired) end to end; their per-batch losses equal TRL's in
test_dpo.py."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

import llmlab
from llmlab.errors import ConfigError
from llmlab.posttrain.train_dpo import (
    check_options,
    encode_pair,
    fixed_batches,
    kl_batch,
    pair_batch,
    pair_logps,
    preference_loss,
    train_dpo,
)
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


def _mean(values: list[float], k: int = 10) -> float:
    return sum(values[:k]) / k if k > 0 else sum(values[k:]) / -k


def test_rpo_alpha_holds_the_chosen_likelihood_that_dpo_lowers(dpo_run, tmp_path):
    """RPO = DPO + alpha NLL(chosen), same run otherwise: DPO alone raises the chosen completions' NLL (the drop in
    greedy accuracy), RPO lowers it, and the held-out margin still rises."""
    _, train, val = tiny_sft_model()
    dpo = dpo_run[2]
    r = train_dpo(dpo_run[0], addition_pairs(train), tmp_path / "rpo", beta=0.1, steps=100, lr=2e-3, batch_size=16,
                  val_data=addition_pairs(val, seed=1), rpo_alpha=1.0)
    assert r.chosen_nll[0] == pytest.approx(dpo.chosen_nll[0])
    assert r.losses[0] == pytest.approx(math.log(2) + r.chosen_nll[0], abs=1e-5)  # policy == reference
    assert _mean(dpo.chosen_nll, -10) > dpo.chosen_nll[0]
    assert _mean(r.chosen_nll, -10) < r.chosen_nll[0] and _mean(r.chosen_nll, -10) < _mean(dpo.chosen_nll, -10)
    assert r.val_after["margin"] > r.val_before["margin"] + 0.05 and r.val_after["accuracy"] > 0.5
    assert json.loads((tmp_path / "rpo" / "dpo_metrics.json").read_text())["rpo_alpha"] == 1.0


def test_orpo_runs_without_a_reference_and_raises_training_pair_preference(tmp_path):
    """ORPO's rewards are beta * mean token log-prob, so step 0 is not a tie: on the training pairs their margin and
    accuracy rise, the loss (SFT NLL + lambda odds-ratio term) falls, and the reference never runs."""
    sft_dir, train, _ = tiny_sft_model()
    pairs = addition_pairs(train)
    r = train_dpo(sft_dir, pairs, tmp_path / "orpo", loss="orpo", beta=0.1, steps=100, lr=2e-3, batch_size=16,
                  val_data=pairs)
    assert r.reference_forward_calls == 0
    assert _mean(r.losses, -10) < _mean(r.losses) / 2, r.losses
    assert r.val_after["accuracy"] > r.val_before["accuracy"] and r.val_after["margin"] > r.val_before["margin"]


def test_kto_from_pairs_caches_the_reference_of_fixed_batches(tmp_path):
    """KTO on the pairs unpaired: step 0 (policy == reference, z_ref = 0) is 1 - sigmoid(0) on every row; the
    reference runs once per 32 pairs and once per fixed batch's mismatched rows; the held-out margin rises."""
    sft_dir, train, val = tiny_sft_model()
    r = train_dpo(sft_dir, addition_pairs(train), tmp_path / "kto", loss="kto", beta=0.1, steps=100, lr=2e-3,
                  batch_size=16, val_data=addition_pairs(val, seed=1))
    assert r.losses[0] == pytest.approx(0.5, abs=1e-6)
    assert r.reference_forward_calls == math.ceil(80 / 32) + math.ceil(20 / 32) + 80 // 16
    assert _mean(r.losses, -10) < _mean(r.losses)
    assert r.val_after["margin"] > r.val_before["margin"] + 0.05 and r.val_after["accuracy"] > 0.5


def test_kto_batches_are_fixed_and_its_kl_rows_mismatched():
    batches = fixed_batches(9, 4, random.Random(0))
    assert [len(b) for b in batches] == [4, 5] and sorted(sum(batches, [])) == list(range(9))  # 1-pair tail joins
    # pair k: prompt [k, k], chosen completion [10 + k], rejected [20 + k]
    pairs = [(([k, k, 10 + k], [0, 0, 1]), ([k, k, 20 + k], [0, 0, 1])) for k in range(3)]
    kl = kl_batch(pairs, pad_id=0)
    assert kl["input_ids"].tolist() == [[0, 0, 22], [1, 1, 10], [2, 2, 11], [0, 0, 12], [1, 1, 20], [2, 2, 21]]
    assert kl["completion_mask"].tolist() == [[0, 0, 1]] * 6


@pytest.mark.parametrize("loss, rpo_alpha, batch_size, message", [
    ("orpo", 0.5, 8, "orpo already has an NLL term"),
    ("kto", 0.5, 8, "TRL's KTO has no NLL term"),
    ("sigmoid", -1.0, 8, "must be >= 0"),
    ("kto", 0.0, 1, "kto needs batch_size >= 2"),
    ("kpo", 0.0, 8, "must be one of"),
])
def test_bad_combinations_are_config_errors(loss, rpo_alpha, batch_size, message):
    with pytest.raises(ConfigError, match=message):
        check_options(loss, rpo_alpha, batch_size)

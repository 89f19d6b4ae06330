"""Training health checks (llmlab.train.health) and the loop's non-finite stop and live spike warnings.

Criteria: each failure planted in a healthy synthetic curve (tests/train/health_curves.py: a seeded power law with
2% noise, warmup + cosine lr) is found with the right kind at the planted step, and nothing else is; the healthy
curves (several seeds) and the real metrics of a tiny pretrain run give no findings; the loop stops at a planted
NaN with a one-line LlmlabError naming the step and the last good checkpoint, which stays loadable, and prints one
warning line per spike, not one per step.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import llmlab.train.loop as loop
from llmlab.data.shards import open_shards
from llmlab.errors import ConfigError, LlmlabError
from llmlab.eval.baselines import unigram_loss
from llmlab.model.io import load_model
from llmlab.train.checkpoint import latest_checkpoint, load_checkpoint
from llmlab.train.health import (
    ERROR,
    WARNING,
    HealthConfig,
    History,
    SpikeWatch,
    check,
    init_loss,
    overfitting,
)
from llmlab.train.metrics import read_metrics
from tests.train.health_curves import VOCAB, clean_loss, healthy
from tests.train.helpers import tiny_config, tiny_data


def kinds(h: History, **known) -> list[tuple[str, int, str]]:
    return [(f.kind, f.step, f.severity) for f in check(h, vocab_size=VOCAB, grad_clip=1.0, **known)]


@pytest.mark.parametrize("seed", range(5))
def test_healthy_power_law_has_no_findings(seed):
    """Plants nothing: 1000 steps of the noisy power law (with ln V, grad_clip=1 and a unigram baseline it beats
    in time given) must give no finding at all."""
    assert kinds(healthy(seed=seed), unigram_loss=7.5) == []


def test_nan_at_step_37_is_the_first_non_finite_step():
    """Plants a NaN loss at step 37 and an inf at 41: one error, non_finite at step 37, and the other checks read
    only the steps before it."""
    h = healthy()
    h.loss[36], h.loss[40] = math.nan, math.inf
    assert kinds(h) == [("non_finite", 37, ERROR)]
    h = healthy()
    h.grad_norm[36] = math.inf  # a finite loss with an inf gradient: the weights are already gone
    assert kinds(h) == [("non_finite", 37, ERROR)]


def test_spike_that_recovers_is_a_warning():
    """Plants a 3x loss spike at steps 50-52, back to the curve at 53: one loss_spike at 50, a warning, recovered
    by step 53."""
    h = healthy()
    for i in range(49, 52):
        h.loss[i] *= 3
    [f] = check(h, vocab_size=VOCAB, grad_clip=1.0)
    assert (f.kind, f.step, f.severity) == ("loss_spike", 50, WARNING)
    assert "recovered by step 53" in f.message and "PaLM" in f.message


def test_spike_that_does_not_recover_is_an_error():
    """Plants a jump to 3x the curve at step 50 that stays: one loss_spike at 50, an error (not back within 50
    steps); the smoothed loss climbing through the jump is not reported again as divergence or lr_too_high."""
    h = healthy()
    for i in range(49, 1000):
        h.loss[i] *= 3
    [f] = check(h, vocab_size=VOCAB, grad_clip=1.0)
    assert (f.kind, f.step, f.severity) == ("loss_spike", 50, ERROR)
    assert "NOT back" in f.message


def test_plateau():
    """Plants a flat stretch (the curve's value at step 300, with the same 2% noise) over steps 300-699: one plateau
    warning starting at the plateau, within the smoothing lag (20 steps) of step 300."""
    h = healthy()
    rng = np.random.default_rng(1)
    for i in range(299, 700):
        h.loss[i] = clean_loss(300) * math.exp(rng.normal(0, 0.02))
    [(kind, step, severity)] = kinds(h)
    assert kind == "plateau" and severity == WARNING and 290 <= step <= 320


def test_divergence():
    """Plants a loss that grows 0.3% a step from step 400 on: one divergence error, starting within 10 steps of 400."""
    h = healthy()
    for i in range(399, 1000):
        h.loss[i] *= 1 + 0.003 * (i - 399)
    [(kind, step, severity)] = kinds(h)
    assert kind == "divergence" and severity == ERROR and 395 <= step <= 410


def test_overfitting():
    """Plants a val loss that rises 5% per evaluation after step 500 while train keeps falling: one overfitting
    warning at step 500, the val minimum (the checkpoint to keep)."""
    h = healthy()
    h.val_loss = [v if s <= 500 else h.val_loss[5] * (1 + 0.05 * (s - 500) / 100)
                  for s, v in zip(h.val_steps, h.val_loss, strict=True)]
    assert kinds(h) == [("overfitting", 500, WARNING)]
    # val going up once and back down is noise, not overfitting
    bump = History([1, 2, 3, 4], [3.0, 2.9, 2.8, 2.7], val_steps=[1, 2, 3, 4], val_loss=[3.0, 3.2, 2.9, 2.8])
    assert overfitting(bump) == []


def test_bad_init_loss():
    """Plants an initial loss of 2x ln V (val at step 0 and train decaying from 2x): one init_loss warning at step 0;
    an initial loss far below ln V (targets leaked into the inputs) is an error."""
    h = healthy()
    h.loss = [v * (1 + math.exp(-i / 5)) for i, v in enumerate(h.loss)]
    h.val_loss[0] *= 2
    assert kinds(h) == [("init_loss", 0, WARNING)]
    leaked = History([1, 2], [1.0, 0.9])
    [f] = init_loss(leaked, VOCAB)
    assert f.severity == ERROR and "targets" in f.message
    assert init_loss(History([1], [math.log(VOCAB) * 1.05]), VOCAB) == []


def test_lr_too_high_after_warmup():
    """Plants a loss that climbs to 1.5x the curve over steps 55-75, right after the 50-step warmup ends: one
    lr_too_high error, at the smoothed minimum, within 15 steps after step 50."""
    h = healthy()
    for i in range(54, 1000):
        h.loss[i] *= 1 + 0.5 * min(1, (i - 54) / 20)
    [(kind, step, severity)] = kinds(h)
    assert kind == "lr_too_high" and severity == ERROR and 50 <= step <= 65


def test_grad_spike_and_clip_saturation():
    """Plants a 5x grad norm at step 200: one grad_spike warning there. Then grad norms 4x larger throughout with
    grad_clip=1: clip_saturation (over the second half of the run: early clipping is normal)."""
    h = healthy()
    h.grad_norm[199] *= 5
    assert kinds(h) == [("grad_spike", 200, WARNING)]
    h = healthy()
    h.grad_norm = [4 * g for g in h.grad_norm]
    assert kinds(h) == [("clip_saturation", 501, WARNING)]
    assert check(h, vocab_size=VOCAB) == []  # without a clip value there is nothing to compare with


def test_above_unigram():
    """Plants a unigram baseline of 4.0 that the curve only beats after ~500 steps: above_unigram at the first step
    past unigram_tokens (2M tokens = step 62)."""
    h = healthy()
    assert kinds(h, unigram_loss=4.0) == [("above_unigram", 62, WARNING)]
    assert kinds(h, unigram_loss=9.0) == []


def test_thresholds_are_validated():
    with pytest.raises(ConfigError, match="spike_window"):
        HealthConfig(spike_window=0)
    with pytest.raises(ConfigError, match="ema_beta"):
        HealthConfig(ema_beta=1.0)
    with pytest.raises(LlmlabError, match="train record at step 3 has no numeric loss"):
        History.from_records([{"kind": "train", "step": 3, "loss": None}])


def test_spike_watch_says_one_line_per_spike():
    """Plants the recovering 3x spike at steps 50-52: the live watcher returns one line at step 50 and nothing on
    the spiked steps after it."""
    h = healthy()
    for i in range(49, 52):
        h.loss[i] *= 3
    watch = SpikeWatch()
    lines = [(s, line) for s, loss, g in zip(h.steps, h.loss, h.grad_norm, strict=True)
             for line in watch.update(s, loss, g)]
    assert len(lines) == 1 and lines[0][0] == 50 and lines[0][1].startswith("step 50: loss spiked to")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("shards"))


def test_real_tiny_run_is_healthy(data, tmp_path):
    """Plants nothing: the metrics of the 50-step tiny pretrain (tests/train/helpers.py), with its vocab (260),
    grad_clip and its data's unigram baseline checked at step 50, give no findings."""
    cfg = tiny_config(data, tmp_path / "run", sample_interval=0)
    loop.pretrain(cfg, progress=False)
    h = History.from_records(read_metrics(tmp_path / "run" / "metrics.jsonl"))
    train, val = (np.concatenate(open_shards(data, split)[1]) for split in ("train", "val"))
    unigram = unigram_loss(train, val, 260)
    hcfg = HealthConfig(unigram_tokens=h.tokens[-1])
    assert check(h, hcfg, vocab_size=260, unigram_loss=unigram, grad_clip=cfg.grad_clip) == []


def poison_loss(monkeypatch, at_call: int, factor: float) -> None:
    """The loop's loss function, multiplied by factor on its at_call-th call (one call per step without eval)."""
    calls = []

    def poisoned(logits, targets):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return loss * factor if len(calls) == at_call else loss

    monkeypatch.setattr(loop, "cross_entropy", poisoned)


def test_loop_stops_on_nan_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    """Plants a NaN loss at step 3 (checkpoints every 2 steps): pretrain raises a one-line LlmlabError naming step 3
    and ckpt_0000002.pt; no later checkpoint is written, that one loads with finite weights, model.safetensors is
    the step-2 model, and metrics.jsonl ends with the NaN step for `llmlab diagnose`."""
    poison_loss(monkeypatch, 3, math.nan)
    cfg = tiny_config(data, tmp_path / "run", max_steps=6, warmup_steps=0, eval_interval=0, sample_interval=0,
                      checkpoint_interval=2)
    with pytest.raises(LlmlabError) as e:
        loop.pretrain(cfg, progress=False)
    message = str(e.value)
    assert "\n" not in message and message.startswith("step 3: the loss is nan") and "ckpt_0000002.pt" in message
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert ckpt.name == "ckpt_0000002.pt"
    state = load_checkpoint(ckpt)
    assert state["step"] == 2 and all(torch.isfinite(t).all() for t in state["model"].values())
    for name, p in load_model(tmp_path / "run").state_dict().items():
        torch.testing.assert_close(p, state["model"][name], rtol=0, atol=0)
    train = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3] and math.isnan(train[-1]["loss"])


def test_loop_prints_one_warning_per_spike(data, tmp_path, monkeypatch, capsys):
    """Plants a 3x loss at step 30 of a 32-step run: stderr holds warning lines for step 30 only (its 3x gradient may
    spike the grad norm too), one of them the loss spike; with spike_warnings=False, none."""
    poison_loss(monkeypatch, 30, 3.0)
    cfg = tiny_config(data, tmp_path / "a", max_steps=32, eval_interval=0, sample_interval=0, checkpoint_interval=0)
    loop.pretrain(cfg, progress=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings and all(line.startswith("warning: step 30: ") for line in warnings)
    assert sum("loss spiked to" in line for line in warnings) == 1
    poison_loss(monkeypatch, 30, 3.0)
    loop.pretrain(tiny_config(data, tmp_path / "b", max_steps=32, eval_interval=0, sample_interval=0,
                              checkpoint_interval=0, spike_warnings=False), progress=True)
    assert "warning:" not in capsys.readouterr().err

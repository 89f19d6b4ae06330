"""Synthetic training curves for the health tests: a healthy run to plant failures in."""

from __future__ import annotations

import math
import random

from llmlab.train.health import History
from llmlab.train.schedules import lr_at

VOCAB = 50304  # GPT-2's vocabulary padded: ln V = 10.83, the loss of a uniform guess
E, TAU, ALPHA = 3.0, 20.0, 0.6  # the curve's floor, time scale and power


def clean_loss(step: float) -> float:
    """A power law from ln V down towards E: L(s) = E + (ln V - E) (1 + s / tau)^-alpha."""
    return E + (math.log(VOCAB) - E) * (1 + step / TAU) ** -ALPHA


def healthy(steps: int = 1000, seed: int = 0, warmup: int = 50) -> History:
    """A healthy run: the power law with 2% log-normal noise per step, grad norms decaying from 2 to 0.5 with 20%
    log-normal noise, warmup + cosine lr, 32k tokens a step, a val loss every 100 steps 1% above train."""
    rng = random.Random(seed)
    s = list(range(1, steps + 1))
    lr = [lr_at(i - 1, kind="cosine", max_lr=3e-3, total_steps=steps, warmup_steps=warmup, min_lr=3e-4) for i in s]
    loss = [clean_loss(i) * math.exp(rng.gauss(0, 0.02)) for i in s]
    grad_norm = [(0.5 + 1.5 * math.exp(-i / 20)) * math.exp(rng.gauss(0, 0.2)) for i in s]
    val_steps = list(range(0, steps + 1, 100))
    return History(s, loss, lr, grad_norm, [i * 32768 for i in s], val_steps, [clean_loss(i) * 1.01 for i in val_steps])


def records(h: History) -> list[dict]:
    """The History as metrics.jsonl records (llmlab.train.metrics)."""
    train = [{"kind": "train", "step": st, "loss": h.loss[i], "lr": h.lr[i], "grad_norm": h.grad_norm[i],
              "tokens": h.tokens[i]} for i, st in enumerate(h.steps)]
    val = [{"kind": "val", "step": st, "loss": v, "ppl": math.exp(v)} for st, v in zip(h.val_steps, h.val_loss,
                                                                                        strict=True)]
    return sorted(val + train, key=lambda r: (r["step"], r["kind"] == "train"))

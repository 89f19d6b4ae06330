"""LR schedules against closed-form values worked out by hand at chosen steps (abs 1e-12).

Shared setup: max_lr = 1.0, min_lr = 0.1, warmup 10 steps (lr = (step + 1) / 10 during warmup). The decay runs
over 100 steps (cosine, linear: total 110) or the last 20 of 100 (wsd), so p = 0.25, 0.5 land on whole steps.
"""

from __future__ import annotations

import math

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.train.optim import AdamW
from llmlab.train.schedules import KINDS, lr_at, set_lr

TOL = 1e-12
COMMON = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10)


def lrs(kind: str, steps: list[int], **kwargs) -> list[float]:
    return [lr_at(s, kind=kind, **{**COMMON, **kwargs}) for s in steps]


def test_cosine():
    """Warmup to 1.0, then 0.1 + 0.45 (1 + cos(pi p)), p = (step - 10) / 100; 0.1 from step 110 on."""
    got = lrs("cosine", [0, 4, 9, 10, 35, 60, 109, 110, 1000], total_steps=110)
    want = [0.1, 0.5, 1.0, 1.0,
            0.1 + 0.45 * (1 + math.sqrt(0.5)),  # p = 0.25: cos(pi/4) = sqrt(1/2)
            0.55,  # p = 0.5: cos(pi/2) = 0, halfway between max and min
            0.1 + 0.45 * (1 - math.cos(0.01 * math.pi)),  # p = 0.99: cos(0.99 pi) = -cos(0.01 pi)
            0.1, 0.1]
    assert got == pytest.approx(want, abs=TOL)


def test_linear():
    """Warmup to 1.0, then 0.1 + 0.9 (1 - p), p = (step - 10) / 100."""
    got = lrs("linear", [0, 9, 10, 35, 60, 109, 110, 500], total_steps=110)
    assert got == pytest.approx([0.1, 1.0, 1.0, 0.775, 0.55, 0.109, 0.1, 0.1], abs=TOL)


def test_wsd():
    """Warmup to 1.0, hold 1.0 to step 79, then 0.1 + 0.9 (1 - sqrt(p)) with p = (step - 80) / 20."""
    steps = [0, 9, 10, 50, 79, 80, 85, 90, 99, 100, 300]
    got = lrs("wsd", steps, total_steps=100, decay_steps=20)
    want = [0.1, 1.0, 1.0, 1.0, 1.0, 1.0,
            0.55,  # p = 0.25: 1 - sqrt(0.25) = 0.5
            0.1 + 0.9 * (1 - math.sqrt(0.5)),  # p = 0.5
            0.1 + 0.9 * (1 - math.sqrt(0.95)),  # p = 0.95, the last step
            0.1, 0.1]
    assert got == pytest.approx(want, abs=TOL)
    # the default decay is the last 20% of the run: here the same 20 steps
    assert lrs("wsd", steps, total_steps=100) == got


def test_constant():
    """Warmup to 1.0, then 1.0 for ever (min_lr is not used)."""
    assert lrs("constant", [0, 9, 10, 99, 1000], total_steps=100) == pytest.approx([0.1, 1.0, 1.0, 1.0, 1.0], abs=TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_no_warmup_starts_at_max_lr_and_never_increases(kind):
    """Without warmup step 0 is at max_lr, and no schedule ever raises the lr after warmup."""
    values = [lr_at(s, kind=kind, max_lr=3e-4, total_steps=50, min_lr=3e-5) for s in range(60)]
    assert values[0] == 3e-4
    assert all(a >= b for a, b in zip(values[:-1], values[1:], strict=True))
    assert min(values) >= 3e-5


def test_set_lr_writes_every_group():
    opt = AdamW([{"params": [torch.nn.Parameter(torch.zeros(2))]},
                 {"params": [torch.nn.Parameter(torch.zeros(2))], "weight_decay": 0.0}])
    set_lr(opt, lr_at(0, kind="cosine", max_lr=1e-3, total_steps=10, warmup_steps=4))
    assert [g["lr"] for g in opt.param_groups] == [2.5e-4, 2.5e-4]


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="step"), "kind='step' must be one of"),
    (dict(kind="cosine", warmup_steps=200), "warmup_steps=200"),
    (dict(kind="cosine", min_lr=2.0), "min_lr=2.0"),
    (dict(kind="cosine", total_steps=0), "total_steps=0"),
    (dict(kind="linear", decay_steps=10), "decay_steps=10 is for kind='wsd' only"),
    (dict(kind="wsd", decay_steps=95), "decay_steps=95"),
    (dict(kind="wsd", step=-1), "step=-1"),
])
def test_errors_name_the_field(kwargs, message):
    args = {"step": 0, "max_lr": 1.0, "total_steps": 100, "warmup_steps": 10, **kwargs}
    with pytest.raises(ConfigError, match=message):
        lr_at(args.pop("step"), **args)

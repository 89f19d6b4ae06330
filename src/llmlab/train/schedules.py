"""Learning-rate schedules as pure functions of the step: `lr_at(step, kind=..., ...)` -> lr.

A schedule has no state, so resuming a run needs only the step count. Conventions (nanochat's):
- steps are 0-based; a run takes steps 0 .. total_steps - 1;
- linear warmup over the first `warmup_steps` steps, ending at max_lr: lr = max_lr * (step + 1) / warmup_steps,
  so step 0 already moves the weights (HF's warmup starts at 0 and spends its first step on lr = 0);
- decay progress p = (step - start) / (total_steps - start) runs from 0 at the decay start to 1 at step
  total_steps, one step after the last; from total_steps on the lr stays at min_lr.
"""

from __future__ import annotations

import math

import torch

from llmlab.errors import ConfigError

KINDS = ("cosine", "linear", "wsd", "constant")
WSD_DECAY_FRACTION = 0.2  # default length of WSD's final decay, as a fraction of total_steps


def lr_at(
    step: int,
    *,
    kind: str,
    max_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    decay_steps: int | None = None,
) -> float:
    """The learning rate at `step` (0-based) of a `total_steps`-step run; `decay_steps` is for kind="wsd" only.

    cosine:   warmup, then min + (max - min) * (1 + cos(pi p)) / 2 over the rest  (Loshchilov & Hutter 2017)
    linear:   warmup, then min + (max - min) * (1 - p) over the rest
    wsd:      warmup, max_lr held, then min + (max - min) * (1 - sqrt(p)) over the last `decay_steps`
              (default 20% of total_steps). Warmup-stable-decay from MiniCPM (Hu et al. 2024); the 1-sqrt
              cooldown is Hagele et al. 2024's, which beat linear and cosine cooldowns in their sweeps.
    constant: warmup, then max_lr for ever.
    """
    _check(step, kind, max_lr, total_steps, warmup_steps, min_lr, decay_steps)
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return max_lr
    if step >= total_steps:
        return min_lr
    if kind == "wsd":
        decay_steps = _wsd_decay_steps(total_steps, decay_steps)
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return max_lr
        p = (step - decay_start) / decay_steps
        return min_lr + (max_lr - min_lr) * (1 - math.sqrt(p))
    p = (step - warmup_steps) / (total_steps - warmup_steps)
    if kind == "cosine":
        return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * p))
    return min_lr + (max_lr - min_lr) * (1 - p)  # linear


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write `lr` into every param group; call once per step, before optimizer.step()."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def _wsd_decay_steps(total_steps: int, decay_steps: int | None) -> int:
    return max(1, int(WSD_DECAY_FRACTION * total_steps)) if decay_steps is None else decay_steps


def _check(step: int, kind: str, max_lr: float, total_steps: int, warmup_steps: int, min_lr: float,
           decay_steps: int | None) -> None:
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} must be one of {', '.join(KINDS)}")
    if step < 0:
        raise ConfigError(f"step={step} must be >= 0")
    if total_steps < 1:
        raise ConfigError(f"total_steps={total_steps} must be >= 1")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
    if not 0 <= min_lr <= max_lr:
        raise ConfigError(f"min_lr={min_lr} must be in [0, max_lr={max_lr}]")
    if decay_steps is not None and kind != "wsd":
        raise ConfigError(f"decay_steps={decay_steps} is for kind='wsd' only (kind={kind!r})")
    if kind == "wsd":
        n = _wsd_decay_steps(total_steps, decay_steps)
        if not 1 <= n <= total_steps - warmup_steps:
            raise ConfigError(f"decay_steps={n} must be in [1, total_steps - warmup_steps = "
                              f"{total_steps - warmup_steps}]")

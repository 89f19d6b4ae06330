"""Training health: read a run's loss and grad-norm curves and say what went wrong, when, and what to try.

    h = History.from_records(read_metrics("runs/tiny/metrics.jsonl"))
    findings = check(h, vocab_size=260, grad_clip=1.0)     # [] for a healthy run
    report = diagnose_run("runs/tiny")                       # the same, plus health.json and health.png

Each check is a pure function (History, HealthConfig) -> [Finding]; `check` runs them all. What they look for:
    non_finite        the first step whose loss or grad norm is NaN/inf (nothing after it is trusted)
    loss_spike        loss above a robust running baseline: median + k * MAD of the previous W steps; recovered or not
    grad_spike        the same test on the grad norm
    clip_saturation   grad_norm > grad_clip on most steps: clipping, not lr, sets the update size
    plateau           the smoothed loss (EMA) flat within a relative epsilon over a window while lr is not near zero
    divergence        the smoothed loss rose through both halves of a window
    overfitting       val loss rose from its minimum at consecutive evaluations while train loss kept falling
    init_loss         the loss before any update is not about ln V, the loss of a uniform guess
    above_unigram     after some tokens the loss is still above the data's unigram baseline (llmlab.eval.baselines)
    lr_too_high       the loss blows up right after warmup, when lr reaches its peak
Severity "error" marks a broken run (non-finite, unrecovered spike, divergence, lr too high, leaked targets); "warning"
is worth a look. The smoothed loss clips each value to its spike threshold first, so a spike is reported once, as a
spike, and does not read as a trend.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmlab.errors import ConfigError, LlmlabError
from llmlab.train.metrics import METRICS, plot_loss, read_metrics

HEALTH_JSON = "health.json"
HEALTH_PNG = "health.png"
ERROR, WARNING = "error", "warning"
PALM_SPIKES = "PaLM (Chowdhery et al. 2022, sec. 5.1) restarts ~100 steps before a spike and skips ~200-500 batches"


@dataclass
class HealthConfig:
    """The thresholds of every check, one line each on what they mean."""

    spike_window: int = 50  # steps of history behind the running median and MAD of the spike tests
    spike_k: float = 6.0  # a spike is above median + k * MAD (6 MAD ~ 4 sigma for Gaussian noise) ...
    spike_min_rise: float = 0.1  # ... and at least 10% above the median: jitter on a flat curve is no spike
    grad_spike_min_rise: float = 2.0  # grad norms are noisier than the loss: a grad spike is at least 3x the median
    min_history: int = 10  # steps before the spike tests start: the baseline needs them
    recover_steps: int = 50  # a spike not back under its threshold within this many steps did not recover
    clip_share: float = 0.5  # clip_saturation: grad_norm > grad_clip on more than this share of the steps
    ema_beta: float = 0.95  # the smoothed loss: EMA with about 1 / (1 - beta) = 20 steps of memory
    plateau_window: int = 100  # plateau: over the last max(window, frac * step) steps (a window that grows with the
    plateau_frac: float = 0.25  # step, as a power-law loss curve slows down) ...
    plateau_rel: float = 0.01  # ... the smoothed loss at its start, middle and end is within 1% ...
    plateau_min_lr: float = 0.1  # ... while lr stayed above this fraction of its peak (near lr 0 no progress is due)
    divergence_window: int = 50  # divergence: the smoothed loss rose in both halves of this many steps ...
    divergence_rel: float = 0.05  # ... by this much (relative) in all, at least half of it in each half
    overfit_rel: float = 0.02  # overfitting: val loss above its minimum by 2% or more ...
    overfit_evals: int = 2  # ... at this many consecutive evaluations, while the smoothed train loss fell
    init_tol: float = 0.1  # init_loss: the loss before any update is within 10% of ln V
    unigram_tokens: int = 2_000_000  # above_unigram: by this many tokens the loss is below the unigram baseline
    lr_window: int = 100  # lr_too_high: within this many steps after the lr peak (the end of warmup) ...
    lr_rise: float = 0.1  # ... the smoothed loss rose 10% above its minimum so far

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{f.name}={value!r} must be a positive integer")
            if f.type == "float" and not (isinstance(value, int | float) and value > 0):
                raise ConfigError(f"{f.name}={value!r} must be a number > 0")
        if not self.ema_beta < 1:
            raise ConfigError(f"ema_beta={self.ema_beta} must be < 1")


@dataclass(frozen=True)
class Finding:
    kind: str  # one of the checks in the module docstring
    step: int  # where it began
    severity: str  # ERROR: the run is broken; WARNING: worth a look
    message: str  # what happened and what to try, one line

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class History:
    """A run's curves: one entry per train step (ascending), and one per evaluation. lr, grad_norm and tokens are
    optional (empty: not logged); a grad_norm entry is None when the run did not clip."""

    steps: list[int]
    loss: list[float]
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float | None] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.steps)
        for name in ("loss", "lr", "grad_norm", "tokens"):
            if len(getattr(self, name)) not in ((n,) if name == "loss" else (0, n)):
                raise LlmlabError(f"History: {name} has {len(getattr(self, name))} entries for {n} steps")
        if len(self.val_steps) != len(self.val_loss):
            raise LlmlabError(f"History: {len(self.val_loss)} val losses for {len(self.val_steps)} val steps")

    @classmethod
    def from_records(cls, records: list[dict]) -> History:
        """From metrics.jsonl records (llmlab.train.metrics); a record without a numeric loss is an LlmlabError."""
        train = sorted((r for r in records if r["kind"] == "train"), key=lambda r: r["step"])
        val = sorted((r for r in records if r["kind"] == "val"), key=lambda r: r["step"])
        for r in train + val:
            if not isinstance(r.get("loss"), int | float):
                raise LlmlabError(f"metrics: {r['kind']} record at step {r['step']} has no numeric loss")

        def series(name: str) -> list:
            return [r.get(name) for r in train] if all(r.get(name) is not None for r in train) else []

        grad_norm = [r.get("grad_norm") for r in train] if any(r.get("grad_norm") is not None for r in train) else []
        return cls(steps=[r["step"] for r in train], loss=[float(r["loss"]) for r in train], lr=series("lr"),
                   grad_norm=grad_norm, tokens=series("tokens"), val_steps=[r["step"] for r in val],
                   val_loss=[float(r["loss"]) for r in val])

    def before_non_finite(self) -> History:
        """The history up to (not including) the first non-finite train step: the other checks read only this."""
        bad = first_non_finite(self)
        if bad is None:
            return self
        n = self.steps.index(bad)
        cut = bisect.bisect_left(self.val_steps, bad)
        return History(self.steps[:n], self.loss[:n], self.lr[:n], self.grad_norm[:n], self.tokens[:n],
                       self.val_steps[:cut], self.val_loss[:cut])


def first_non_finite(h: History) -> int | None:
    for i, step in enumerate(h.steps):
        grad = h.grad_norm[i] if h.grad_norm else None
        if not math.isfinite(h.loss[i]) or (grad is not None and not math.isfinite(grad)):
            return step
    return None


def non_finite(h: History) -> list[Finding]:
    """The first step whose loss or grad norm is NaN or inf."""
    step = first_non_finite(h)
    if step is None:
        return []
    i = h.steps.index(step)
    what = f"loss is {h.loss[i]}" if not math.isfinite(h.loss[i]) else f"grad norm is {h.grad_norm[i]}"
    return [Finding("non_finite", step, ERROR, f"{what}: the weights are no longer trustworthy; restart from a "
                    f"checkpoint before step {step} with a lower lr or longer warmup (bf16: look for overflow)")]


# --- spikes: a robust running baseline (median, MAD) that one outlier cannot move


def baseline(windows: np.ndarray, k: float, min_rise: float) -> tuple[np.ndarray, np.ndarray]:
    """(median, threshold) over the last axis of windows (..., W): threshold = median + max(k * MAD, min_rise *
    |median|), MAD = median |x - median| (robust: one outlier in the window moves neither)."""
    median = np.median(windows, axis=-1)
    mad = np.median(np.abs(windows - median[..., None]), axis=-1)
    return median, median + np.maximum(k * mad, min_rise * np.abs(median))


def baselines(values: list[float], cfg: HealthConfig, min_rise: float) -> list[tuple[float, float] | None]:
    """(median, threshold) of each step from the spike_window values before it; None for the first min_history
    steps. The windows are strided views of one array: one vectorised median over all steps."""
    x = np.asarray(values, dtype=np.float64)
    n, w = len(x), cfg.spike_window
    out: list[tuple[float, float] | None] = [None] * min(n, cfg.min_history)
    for i in range(cfg.min_history, min(n, w)):  # the first windows are shorter than spike_window
        m, t = baseline(x[:i], cfg.spike_k, min_rise)
        out.append((float(m), float(t)))
    if n > w:
        m, t = baseline(np.lib.stride_tricks.sliding_window_view(x[:-1], w), cfg.spike_k, min_rise)  # row j: x[j:j+w]
        out += list(zip(m.tolist(), t.tolist(), strict=True))
    return out


@dataclass
class Spike:
    step: int
    value: float
    median: float  # of the previous spike_window values
    threshold: float  # the value had to exceed this; recovered means back at or under it
    recovered_at: int | None = None


class SpikeDetector:
    """Turns per-step (value, baseline) into spike events: a spike starts at a value above its threshold; later steps
    belong to it until the value is back under that threshold (recovered) or recover_steps have passed, so one event
    is one Spike, not one per step."""

    def __init__(self, recover_steps: int) -> None:
        self.recover_steps = recover_steps
        self.spikes: list[Spike] = []
        self.open: Spike | None = None  # the latest spike while it may still recover

    def observe(self, step: int, value: float, base: tuple[float, float] | None) -> Spike | None:
        """Returns the Spike when this value starts one."""
        if self.open is not None:
            if value <= self.open.threshold:
                self.open.recovered_at, self.open = step, None
            elif step - self.open.step >= self.recover_steps:
                self.open = None
            return None
        if base is not None and value > base[1]:
            self.open = Spike(step, value, *base)
            self.spikes.append(self.open)
            return self.open
        return None


def spikes(steps: list[int], values: list[float], cfg: HealthConfig, min_rise: float) -> list[Spike]:
    detector = SpikeDetector(cfg.recover_steps)
    for step, value, base in zip(steps, values, baselines(values, cfg, min_rise), strict=True):
        detector.observe(step, value, base)
    return detector.spikes


def spike_text(name: str, s: Spike) -> str:
    return f"{name} spiked to {s.value:.4g} ({s.value / s.median:.1f}x its running median {s.median:.4g})"


def _spike_findings(kind: str, name: str, found: list[Spike], last_step: int, cfg: HealthConfig) -> list[Finding]:
    findings = []
    for s in found:
        if s.recovered_at is not None:
            severity, outcome = WARNING, f"recovered by step {s.recovered_at}"
        elif last_step - s.step < cfg.recover_steps:
            severity, outcome = WARNING, f"not back under {s.threshold:.4g} when the run ended at step {last_step}"
        else:
            severity = ERROR if kind == "loss_spike" else WARNING
            outcome = f"NOT back under {s.threshold:.4g} within {cfg.recover_steps} steps"
        advice = (f"if spikes repeat or do not recover, lower lr or restart before it on other batches: {PALM_SPIKES}"
                  if kind == "loss_spike" else "grad spikes often come before loss spikes: look at that batch, "
                  "or lower lr / tighten grad_clip")
        findings.append(Finding(kind, s.step, severity, f"{spike_text(name, s)}, {outcome}; {advice}"))
    return findings


def loss_spikes(h: History, cfg: HealthConfig | None = None) -> list[Finding]:
    """Loss above median + k * MAD of the previous W steps; error when it does not come back within N steps."""
    cfg = cfg or HealthConfig()
    h = h.before_non_finite()
    if not h.steps:
        return []
    return _spike_findings("loss_spike", "loss", spikes(h.steps, h.loss, cfg, cfg.spike_min_rise), h.steps[-1], cfg)


def grad_spikes(h: History, cfg: HealthConfig | None = None) -> list[Finding]:
    """The same test on the grad norm (always a warning: the loss tells whether it hurt)."""
    cfg = cfg or HealthConfig()
    h = h.before_non_finite()
    pairs = [(s, g) for s, g in zip(h.steps, h.grad_norm, strict=False) if g is not None]
    if not pairs:
        return []
    steps, values = (list(x) for x in zip(*pairs, strict=True))
    return _spike_findings("grad_spike", "grad norm", spikes(steps, values, cfg, cfg.grad_spike_min_rise),
                           h.steps[-1], cfg)


def clip_saturation(h: History, grad_clip: float | None, cfg: HealthConfig | None = None) -> list[Finding]:
    """grad_norm > grad_clip on more than clip_share of the second half of the steps: every update is rescaled, so lr
    is not in control. (The first half is left out: gradients are large early on, and clipping them is the point.)"""
    cfg = cfg or HealthConfig()
    h = h.before_non_finite()
    norms = [(s, g) for s, g in zip(h.steps, h.grad_norm, strict=False) if g is not None]
    norms = norms[len(norms) // 2:]
    if not grad_clip or len(norms) < cfg.min_history:
        return []
    share = sum(g > grad_clip for _, g in norms) / len(norms)
    if share <= cfg.clip_share:
        return []
    return [Finding("clip_saturation", norms[0][0], WARNING,
                    f"grad norm above grad_clip={grad_clip:g} on {share:.0%} of steps {norms[0][0]}-{norms[-1][0]}: "
                    f"clipping, not lr, sets the update size; lower lr or raise grad_clip")]


# --- the smoothed loss and the trends read from it


def smoothed_loss(h: History, cfg: HealthConfig | None = None) -> list[float]:
    """EMA of the loss up to the first non-finite step, each value clipped to its spike threshold first: one bad
    batch is a spike (reported as such), not a trend."""
    cfg = cfg or HealthConfig()
    h = h.before_non_finite()
    out: list[float] = []
    for value, base in zip(h.loss, baselines(h.loss, cfg, cfg.spike_min_rise), strict=True):
        clipped = value if base is None else min(value, base[1])
        out.append(clipped if not out else cfg.ema_beta * out[-1] + (1 - cfg.ema_beta) * clipped)
    return out


def _merge(flags: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start index, end index) of flagged windows, in order of their ends -> one (start, end) per run of overlapping
    windows: one event, one finding."""
    runs: list[tuple[int, int]] = []
    for start, end in flags:
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def plateaus(h: History, cfg: HealthConfig | None = None) -> list[Finding]:
    """The smoothed loss flat over max(plateau_window, plateau_frac * step) steps: its values at the start, middle and
    end of the window within plateau_rel of each other (a rise is a spike or divergence, and a fall through a minimum
    is not flat), while lr stayed above plateau_min_lr x its peak. Reported at the start: where progress stopped."""
    cfg = cfg or HealthConfig()
    h = h.before_non_finite()
    s = smoothed_loss(h, cfg)
    peak_lr = max(h.lr) if h.lr else 0.0
    flags = []
    for t, step in enumerate(h.steps):
        start = step - max(cfg.plateau_window, int(cfg.plateau_frac * step))
        if start < h.steps[0]:
            continue  # not a whole window of history yet
        a = bisect.bisect_left(h.steps, start)
        m = bisect.bisect_left(h.steps, (h.steps[a] + step) // 2)
        if h.lr and min(h.lr[a], h.lr[t]) < cfg.plateau_min_lr * peak_lr:
            continue  # lr at the window's ends: schedules rise, then fall, so these are its lowest
        if max(s[a], s[m], s[t]) - min(s[a], s[m], s[t]) < cfg.plateau_rel * s[a]:
            flags.append((a, t))
    return [Finding("plateau", h.steps[a], WARNING,
                    f"smoothed loss flat (within {cfg.plateau_rel:.0%} over windows of >= {cfg.plateau_window} steps) "
                    f"from step {h.steps[a]} to {h.steps[t]}, {s[a]:.4g} -> {s[t]:.4g}, with lr not near zero: "
                    f"stalled; try a higher lr, check the data is not a tiny repeated set and that the model learns")
            for a, t in _merge(flags)]


def divergence(h: History, cfg: HealthConfig | None = None) -> list[Finding]:
    """The smoothed loss rose by divergence_rel over divergence_window steps, at least half of it in each half: a
    sustained rise, not a step (a spike) or a bump."""
    cfg = cfg or HealthConfig()
    h = h.before_non_finite()
    s = smoothed_loss(h, cfg)
    half = cfg.divergence_rel / 2
    flags = []
    for t, step in enumerate(h.steps):
        if step - cfg.divergence_window < h.steps[0]:
            continue  # not a whole window of history yet
        a = bisect.bisect_left(h.steps, step - cfg.divergence_window)
        m = bisect.bisect_left(h.steps, step - cfg.divergence_window // 2)
        if s[m] > s[a] * (1 + half) and s[t] > s[m] * (1 + half):
            flags.append((a, t))
    return [Finding("divergence", h.steps[a], ERROR,
                    f"smoothed loss rose {s[a]:.4g} -> {s[t]:.4g} from step {h.steps[a]} to {h.steps[t]} "
                    f"({s[t] / s[a] - 1:+.0%}): the run is diverging; restart from a checkpoint before step "
                    f"{h.steps[a]} with a lower lr") for a, t in _merge(flags)]


def overfitting(h: History, cfg: HealthConfig | None = None) -> list[Finding]:
    """Val loss above its minimum by overfit_rel at overfit_evals consecutive evaluations while the smoothed train
    loss fell since that minimum. Reported once, at the step of the minimum: the checkpoint to keep."""
    cfg = cfg or HealthConfig()
    h = h.before_non_finite()
    s = smoothed_loss(h, cfg)

    def train_at(step: int) -> float | None:  # the smoothed train loss at the last train step <= step
        i = bisect.bisect_right(h.steps, step) - 1
        return s[i] if i >= 0 else None

    evals = [(st, v) for st, v in zip(h.val_steps, h.val_loss, strict=True) if train_at(st) is not None]
    best, above = 0, 0
    for j, (step, loss) in enumerate(evals):
        if loss < evals[best][1]:
            best, above = j, 0
            continue
        above = above + 1 if loss > evals[best][1] * (1 + cfg.overfit_rel) else 0
        b_step, b_loss = evals[best]
        if above >= cfg.overfit_evals and train_at(step) < train_at(b_step):
            return [Finding("overfitting", b_step, WARNING,
                            f"val loss bottomed at {b_loss:.4g} at step {b_step} and rose to {loss:.4g} by step "
                            f"{step} while train loss fell {train_at(b_step):.4g} -> {train_at(step):.4g}: "
                            f"overfitting (repeated data?); keep the step-{b_step} weights, add data or regularise")]
    return []


def init_loss(h: History, vocab_size: int | None, cfg: HealthConfig | None = None) -> list[Finding]:
    """The loss before any update (val at step 0, else train at step 1) is within init_tol of ln V: a well-initialised
    model's logits are near zero, so its guess is near uniform. Far above: logits too large; far below: leaked
    targets."""
    cfg = cfg or HealthConfig()
    if not vocab_size:
        return []
    if h.val_steps and h.val_steps[0] == 0:
        loss, where = h.val_loss[0], "val loss at step 0"
    elif h.steps and h.steps[0] == 1:
        loss, where = h.loss[0], "train loss at step 1 (before any update)"
    else:
        return []
    ln_v = math.log(vocab_size)
    if loss > (1 + cfg.init_tol) * ln_v:
        return [Finding("init_loss", 0, WARNING, f"initial {where} {loss:.4g} is {loss / ln_v:.1f}x ln V = "
                        f"{ln_v:.4g} (a uniform guess): the logits are too large at init; check the init std of the "
                        f"output layer and the embedding scale")]
    if loss < (1 - cfg.init_tol) * ln_v:
        return [Finding("init_loss", 0, ERROR, f"initial {where} {loss:.4g} is far below ln V = {ln_v:.4g} before "
                        f"any training: the model may see its targets; check the causal mask and the target shift")]
    return []


def above_unigram(h: History, unigram: float | None, cfg: HealthConfig | None = None) -> list[Finding]:
    """At the first step with unigram_tokens tokens seen, the smoothed loss is below the unigram baseline (the loss of
    token frequencies alone, llmlab.eval.baselines.unigram_loss): above it, the model does not use context."""
    cfg = cfg or HealthConfig()
    h = h.before_non_finite()
    if unigram is None or not h.tokens:
        return []
    t = bisect.bisect_left(h.tokens, cfg.unigram_tokens)
    if t == len(h.tokens):
        return []  # the run did not get that far
    s = smoothed_loss(h, cfg)
    if s[t] <= unigram:
        return []
    return [Finding("above_unigram", h.steps[t], WARNING,
                    f"smoothed loss {s[t]:.4g} is still above the unigram baseline {unigram:.4g} after "
                    f"{h.tokens[t]:,} tokens: the model is not using context; check the attention mask and positions, "
                    f"or raise lr")]


def lr_too_high(h: History, cfg: HealthConfig | None = None) -> list[Finding]:
    """Within lr_window steps after lr peaks (the end of warmup), the smoothed loss rose lr_rise above its minimum so
    far. Reported at the minimum: where the blow-up began."""
    cfg = cfg or HealthConfig()
    h = h.before_non_finite()
    if not h.lr:
        return []
    s = smoothed_loss(h, cfg)
    peak = h.lr.index(max(h.lr))
    low = 0  # index of the smoothed minimum so far
    for t, step in enumerate(h.steps):
        if step > h.steps[peak] + cfg.lr_window:
            break
        if s[t] < s[low]:
            low = t
        if t > peak and s[t] > s[low] * (1 + cfg.lr_rise):
            return [Finding("lr_too_high", h.steps[low], ERROR,
                            f"smoothed loss rose {s[low]:.4g} -> {s[t]:.4g} ({s[t] / s[low] - 1:+.0%}) by step "
                            f"{step}, right after lr peaked at {h.lr[peak]:.2e} (step {h.steps[peak]}): lr too high "
                            f"for this model; lower it or warm up longer")]
    return []


def check(h: History, cfg: HealthConfig | None = None, *, vocab_size: int | None = None,
          unigram_loss: float | None = None, grad_clip: float | None = None) -> list[Finding]:
    """Every check, sorted by step. vocab_size (ln V), unigram_loss and grad_clip enable the checks that need them.

    One event, one finding: a rise of the smoothed loss (lr_too_high, divergence) that begins up to spike_window
    steps before an unrecovered loss spike is that spike (the jump the smoothed loss climbs through); a divergence
    within lr_window steps of an lr_too_high is that finding.
    """
    cfg = cfg or HealthConfig()
    findings = (non_finite(h) + loss_spikes(h, cfg) + grad_spikes(h, cfg) + clip_saturation(h, grad_clip, cfg)
                + plateaus(h, cfg) + divergence(h, cfg) + overfitting(h, cfg) + init_loss(h, vocab_size, cfg)
                + above_unigram(h, unigram_loss, cfg) + lr_too_high(h, cfg))
    jumps = [f.step for f in findings if f.kind == "loss_spike" and f.severity == ERROR]
    findings = [f for f in findings if not (f.kind in ("lr_too_high", "divergence")
                                            and any(0 <= j - f.step <= cfg.spike_window for j in jumps))]
    lr_steps = [f.step for f in findings if f.kind == "lr_too_high"]
    findings = [f for f in findings if not (f.kind == "divergence" and any(abs(f.step - s) <= cfg.lr_window
                                                                           for s in lr_steps))]
    return sorted(findings, key=lambda f: f.step)


class SpikeWatch:
    """Live spike warnings for the training loop: one line when a loss or grad-norm spike begins, none per step.
    The same baseline and events as loss_spikes / grad_spikes, fed one step at a time."""

    def __init__(self, cfg: HealthConfig | None = None) -> None:
        self.cfg = cfg or HealthConfig()
        self.recent = {"loss": deque(maxlen=self.cfg.spike_window), "grad norm": deque(maxlen=self.cfg.spike_window)}
        self.detectors = {name: SpikeDetector(self.cfg.recover_steps) for name in self.recent}

    def update(self, step: int, loss: float, grad_norm: float | None) -> list[str]:
        lines = []
        for name, value, min_rise in (("loss", loss, self.cfg.spike_min_rise),
                                      ("grad norm", grad_norm, self.cfg.grad_spike_min_rise)):
            if value is None:
                continue
            recent = self.recent[name]
            base = None
            if len(recent) >= self.cfg.min_history:
                median, threshold = baseline(np.array(recent), self.cfg.spike_k, min_rise)
                base = (float(median), float(threshold))
            recent.append(value)
            if (s := self.detectors[name].observe(step, value, base)) is not None:
                lines.append(f"step {step}: {spike_text(name, s)}")
        return lines


# --- a run directory: `llmlab diagnose`


@dataclass
class Report:
    findings: list[Finding]
    summary: dict[str, Any]  # the key numbers: steps, first/last loss, min val loss, spikes, ...

    @property
    def ok(self) -> bool:
        """No error-severity finding (warnings allowed)."""
        return all(f.severity != ERROR for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        # NaN and inf as strings: health.json stays strict JSON that any reader parses
        summary = {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in self.summary.items()}
        return {"ok": self.ok, "summary": summary, "findings": [f.to_dict() for f in self.findings]}


def summarize(h: History, findings: list[Finding], grad_clip: float | None = None) -> dict[str, Any]:
    counts = {kind: sum(f.kind == kind for f in findings) for kind in ("loss_spike", "grad_spike")}
    best = min(range(len(h.val_loss)), key=lambda i: h.val_loss[i]) if h.val_loss else None
    norms = [g for g in h.grad_norm if g is not None and math.isfinite(g)]
    return {"steps": h.steps[-1] if h.steps else 0, "tokens": h.tokens[-1] if h.tokens else None,
            "first_loss": h.loss[0] if h.loss else None, "last_loss": h.loss[-1] if h.loss else None,
            "min_val_loss": None if best is None else h.val_loss[best],
            "min_val_step": None if best is None else h.val_steps[best],
            "loss_spikes": counts["loss_spike"], "grad_spikes": counts["grad_spike"],
            "clipped_share": sum(g > grad_clip for g in norms) / len(norms) if grad_clip and norms else None}


def diagnose_run(run_dir: Path | str, cfg: HealthConfig | None = None, unigram_loss: float | None = None,
                 plot: bool = True) -> Report:
    """Check RUN_DIR/metrics.jsonl (vocab size from model_config.json, grad_clip from train_config.json when there);
    write RUN_DIR/health.json and, with plot, health.png: the loss curve with a dashed line at each finding."""
    from llmlab.model.io import CONFIG_NAME
    from llmlab.train.loop import TRAIN_CONFIG  # the loop imports this module

    run = Path(run_dir)
    if not run.is_dir():
        raise LlmlabError(f"{run}: no such directory; pass a run directory written by `llmlab pretrain`")
    records = read_metrics(run / METRICS, strict=True)
    h = History.from_records(records)
    if not h.steps:
        raise LlmlabError(f"{run / METRICS}: no train records; the run has not completed a step")
    vocab_size = _json_field(run / CONFIG_NAME, "vocab_size")
    grad_clip = _json_field(run / TRAIN_CONFIG, "grad_clip")
    findings = check(h, cfg, vocab_size=vocab_size, unigram_loss=unigram_loss, grad_clip=grad_clip)
    summary = summarize(h, findings, grad_clip)
    summary.update(vocab_size=vocab_size, ln_vocab=math.log(vocab_size) if vocab_size else None,
                   unigram_loss=unigram_loss, grad_clip=grad_clip)
    report = Report(findings, summary)
    text = json.dumps({**report.to_dict(), "thresholds": dataclasses.asdict(cfg or HealthConfig())}, indent=2)
    (run / HEALTH_JSON).write_text(text + "\n", encoding="utf-8")
    if plot:
        marks = [(f.step, f.kind, "tab:red" if f.severity == ERROR else "goldenrod") for f in findings]
        finite = [r for r in records if r["kind"] in ("train", "val") and math.isfinite(r["loss"])]
        plot_loss(finite, run / HEALTH_PNG, f"{run.name}: {len(findings)} finding(s)", marks)
    return report


def _json_field(path: Path, name: str) -> Any:
    """One field of a JSON file the run wrote, or None when the file or the field is not there."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(name)
    except (OSError, json.JSONDecodeError, AttributeError):
        return None

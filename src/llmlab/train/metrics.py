"""What a training run records, in its run directory: metrics.jsonl, TensorBoard events in tb/, and loss.png.

metrics.jsonl holds one JSON object per line; `step` counts completed optimizer steps (val at step 0 is before
training):
    {"kind": "train", "step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "seconds"}
    {"kind": "val", "step", "loss", "ppl"}
    {"kind": "sample", "step", "text"}
    {"kind": "memory", "step", "param_bytes", ...}   once, after the first step: bytes held per rank (FSDP shards)
The same scalars go to TensorBoard as train/<name> and val/<name> (`tensorboard --logdir RUN/tb` opens them), samples
as text. On resume from step S, records after S (written before the kill, after the checkpoint) are dropped from
metrics.jsonl and TensorBoard is told to purge them too, so both show one trajectory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from tensorboardX import SummaryWriter

from llmlab.errors import LlmlabError
from llmlab.model.io import atomic_write

METRICS = "metrics.jsonl"
LOSS_PNG = "loss.png"
TB_DIR = "tb"


def read_metrics(path: Path | str, strict: bool = False) -> list[dict]:
    """The records of a metrics.jsonl; a partial last line (the process was killed while writing it) is skipped.

    strict=True (for reading a run back, e.g. `llmlab diagnose`): a missing file, or an unreadable line anywhere but
    at the end, is an LlmlabError naming it, instead of an empty or shorter list.
    """
    path = Path(path)
    if not path.is_file():
        if strict:
            raise LlmlabError(f"{path}: no such file; pass a run directory written by `llmlab pretrain`")
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise LlmlabError(f"{path}: not UTF-8 text; the file is corrupt") from None
    records = []
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and "kind" in record and "step" in record:
            records.append(record)
        elif strict and i < len(lines):
            raise LlmlabError(f"{path}, line {i}: not a metrics record ({line[:60]!r}); the file is corrupt")
    return records


def plot_loss(records: list[dict], path: Path | str, title: str = "",
              marks: Sequence[tuple[int, str, str]] = ()) -> None:
    """Train and validation loss against step, written to `path` as PNG (matplotlib's Agg canvas, no display).
    marks: (step, label, color) drawn as labelled dashed lines, e.g. llmlab.train.health's findings."""
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    val = [(r["step"], r["loss"]) for r in records if r["kind"] == "val"]
    fig = Figure(figsize=(7, 4.2), dpi=100)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), lw=0.8, alpha=0.8, label="train")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", ms=3, label="val")
    for step, label, color in marks:
        ax.axvline(step, color=color, ls="--", lw=0.8)
        ax.annotate(label, (step, 0.98), xycoords=("data", "axes fraction"), rotation=90, ha="right", va="top",
                    fontsize=7, color=color)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))


class MetricsLogger:
    """Appends records to metrics.jsonl and TensorBoard; `enabled=False` (a non-main process) makes every call a no-op.

    resume_step=S keeps the records up to step S and drops later ones (see the module docstring).
    """

    def __init__(self, run_dir: Path | str, enabled: bool = True, resume_step: int | None = None) -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.records: list[dict] = []
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / METRICS
        if resume_step is not None:
            self.records = [r for r in read_metrics(path) if r["step"] <= resume_step]
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        self.file = path.open("a", encoding="utf-8")
        # purge_step: TensorBoard hides events at or after this step from earlier event files
        self.tb = SummaryWriter(str(self.run_dir / TB_DIR), purge_step=None if resume_step is None else resume_step + 1)

    def log(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, **values}
        self.records.append(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for name, value in values.items():
            if isinstance(value, str):
                self.tb.add_text(f"{kind}/{name}", value, step)
            elif value is not None:
                self.tb.add_scalar(f"{kind}/{name}", value, step)

    def plot(self, title: str = "") -> None:
        if self.enabled:
            plot_loss(self.records, self.run_dir / LOSS_PNG, title)
            self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()

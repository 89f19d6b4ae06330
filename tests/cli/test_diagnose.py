"""`llmlab diagnose RUN_DIR` (llmlab.cli.diagnose_cmds): findings or "healthy", health.json, health.png, exit code.

Criteria: a run directory holding a healthy synthetic metrics.jsonl exits 0 with "healthy: no findings" and the key
numbers; one with a planted NaN at step 37 exits 1 with a non_finite row; warnings alone exit 0; health.json is
strict JSON (NaN written as a string) listing the findings; a missing or corrupt metrics.jsonl is a one-line
LlmlabError. The command is registered on a local Typer app, as tests/train/test_loop.py does for pretrain.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llmlab.cli.diagnose_cmds import diagnose
from llmlab.errors import LlmlabError
from tests.train.health_curves import VOCAB, healthy, records


def run_dir(path: Path, h) -> Path:
    """A run directory as pretrain leaves it, as far as diagnose reads it."""
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(h)))
    (path / "model_config.json").write_text(json.dumps({"vocab_size": VOCAB}))
    (path / "train_config.json").write_text(json.dumps({"grad_clip": 1.0}))
    return path


def invoke(*args: str):
    app = typer.Typer()
    app.command()(diagnose)
    return CliRunner().invoke(app, list(args))


def strict_json(path: Path) -> dict:
    def no_constants(name: str):
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=no_constants)


def test_healthy_run(tmp_path):
    """Plants nothing: exit 0, "healthy: no findings" with the step count, health.json ok with no findings,
    health.png a PNG."""
    run = run_dir(tmp_path / "run", healthy())
    result = invoke(str(run))
    assert result.exit_code == 0, result.output
    assert "healthy: no findings (1,000 steps, loss 10." in result.output and "0 loss spikes" in result.output
    report = strict_json(run / "health.json")
    assert report["ok"] and report["findings"] == [] and report["summary"]["steps"] == 1000
    assert report["summary"]["min_val_step"] == 1000 and report["thresholds"]["spike_k"] == 6.0
    assert (run / "health.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nan_run_exits_1(tmp_path):
    """Plants a NaN loss at step 37 and NaNs after it, as a run that kept going would log: exit 1, a non_finite row
    for step 37, health.json not ok and strict JSON (last_loss written as "nan")."""
    h = healthy()
    h.loss[36:] = [math.nan] * (len(h.loss) - 36)
    run = run_dir(tmp_path / "run", h)
    result = invoke(str(run), "--no-plot")
    assert result.exit_code == 1, result.output
    assert "non_finite" in result.output and "37" in result.output
    report = strict_json(run / "health.json")
    assert not report["ok"] and report["summary"]["last_loss"] == "nan"
    assert [(f["kind"], f["step"], f["severity"]) for f in report["findings"]] == [("non_finite", 37, "error")]
    assert not (run / "health.png").exists()


def test_warnings_alone_exit_0(tmp_path):
    """Plants a recovering 3x spike at step 50: a table with its loss_spike row, exit 0 (a warning, not an error)."""
    h = healthy()
    for i in range(49, 52):
        h.loss[i] *= 3
    result = invoke(str(run_dir(tmp_path / "run", h)))
    assert result.exit_code == 0, result.output
    assert "loss_spike" in result.output and "healthy" not in result.output


def test_unigram_option(tmp_path):
    """--unigram-loss enables the above_unigram check: a baseline of 4.0, which the curve beats only after ~500
    steps, is a warning at step 62 (2M tokens)."""
    run = run_dir(tmp_path / "run", healthy())
    result = invoke(str(run), "--unigram-loss", "4.0", "--no-plot")
    assert result.exit_code == 0 and "above_unigram" in result.output
    assert strict_json(run / "health.json")["findings"][0]["step"] == 62


@pytest.mark.parametrize("content, expected", [
    (None, "metrics.jsonl: no such file"),
    ('{"kind": "train", "step": 1, "loss": 5.0}\nnot json\n{"kind": "train", "step": 2, "loss": 4.0}\n',
     "line 2: not a metrics record"),
    ('{"kind": "val", "step": 0, "loss": 5.0}\n', "no train records"),
    ('{"kind": "train", "step": 1, "loss": "x"}\n', "train record at step 1 has no numeric loss"),
])
def test_missing_or_corrupt_metrics_are_one_line_errors(tmp_path, content, expected):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    result = invoke(str(tmp_path))
    assert isinstance(result.exception, LlmlabError), result.output
    assert expected in str(result.exception) and "\n" not in str(result.exception)


def test_partial_last_line_is_skipped(tmp_path):
    """A run killed mid-write leaves a partial last line: diagnose reads the records before it."""
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 5.0}\n{"kind": "tr')
    result = invoke(str(tmp_path), "--no-plot")
    assert result.exit_code == 0 and "healthy: no findings (1 steps" in result.output

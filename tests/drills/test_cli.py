"""`llmlab drill ...` end to end through typer's CliRunner, on a temporary workspace."""

from __future__ import annotations

import inspect

import pytest
from rich.console import Console
from typer.testing import CliRunner

from llmlab.cli import drill_cmds
from llmlab.cli.drill_cmds import app
from llmlab.drills.bank import all_drills

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setattr(drill_cmds, "console", Console(width=200, highlight=False))


def test_drill_commands(tmp_path):
    ws = ["--dir", str(tmp_path)]
    out = runner.invoke(app, ["list", *ws])
    assert out.exit_code == 0 and "self_attention" in out.output and "not tried" in out.output

    out = runner.invoke(app, ["start", "softmax", *ws])
    assert out.exit_code == 0, out.output
    path = tmp_path / "softmax.py"
    assert "raise NotImplementedError" in path.read_text() and "max-subtracted" in path.read_text()
    assert runner.invoke(app, ["start", "softmax", *ws]).exit_code != 0  # never overwrites silently

    out = runner.invoke(app, ["check", "softmax", *ws])
    assert out.exit_code == 1 and "FAILED visible example #1" in out.output and "NotImplementedError" in out.output

    out = runner.invoke(app, ["hint", "softmax", *ws])
    assert "hint 1/3" in out.output and "hint 2/3" not in out.output
    assert "hint 2/3" in runner.invoke(app, ["hint", "softmax", *ws]).output

    path.write_text("import torch\n\n\ndef softmax(x, dim=-1):\n    e = (x - x.amax(dim, keepdim=True)).exp()\n"
                    "    return e / e.sum(dim, keepdim=True)\n")
    out = runner.invoke(app, ["check", "softmax", *ws])
    assert out.exit_code == 0 and "PASSED" in out.output and "time since start" in out.output

    out = runner.invoke(app, ["list", *ws])
    assert "passed" in out.output and "failed" not in out.output.split("softmax")[1].split("\n")[0]
    out = runner.invoke(app, ["stats", *ws])
    assert out.exit_code == 0 and "basics" in out.output and "streak: 1 day" in out.output

    out = runner.invoke(app, ["solution", "cross_entropy"])
    from llmlab.model.loss import cross_entropy

    assert inspect.getsource(cross_entropy).splitlines()[0] in out.output

    out = runner.invoke(app, ["mock", "--minutes", "30", "--seed", "0", *ws])
    assert out.exit_code == 0 and out.output.count("->") == 2
    assert runner.invoke(app, ["review", *ws]).exit_code == 0


def test_env_var_sets_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_DRILL_DIR", str(tmp_path / "ws"))
    assert runner.invoke(app, ["start", "rope"]).exit_code == 0
    assert (tmp_path / "ws" / "rope.py").exists() and (tmp_path / "ws" / "progress.sqlite").exists()


def test_unknown_drill_is_a_clear_error():
    out = runner.invoke(app, ["solution", "nope"])
    assert out.exit_code != 0 and "no drill named 'nope'" in str(out.exception)
    assert len(all_drills()) >= 15


def test_web_is_a_drill_command():
    out = runner.invoke(app, ["web", "--help"])
    assert out.exit_code == 0 and "--port" in out.output and "127.0.0.1" in out.output


def test_a_failed_check_is_a_nonzero_exit_status(tmp_path):
    """`llmlab drill check` run as a program: a failing submission exits 1 (scripts and CI can rely on it)."""
    from pathlib import Path

    from llmlab.cli.main import main

    wrong = sorted((Path(__file__).parent / "wrong").glob("softmax__*.py"))[0]
    assert main(["drill", "check", "softmax", "--file", str(wrong), "--dir", str(tmp_path)]) == 1

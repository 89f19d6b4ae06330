"""`llmlab reward`, `dpo`, `grpo`, `ppo` through typer's CliRunner on a tiny random model, a step or two each: they
write their run dirs and print their summary tables; user mistakes end as one `error:` line from llmlab.cli.main."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import llmlab
from llmlab.cli import main as cli_main
from llmlab.cli.posttrain_cmds import dpo, grpo, ppo, reward
from tests.posttrain.helpers import addition_pairs
from tests.posttrain.test_train_ppo import tiny_chat_model

# registered as src/llmlab/cli/main.py registers them
app = typer.Typer(pretty_exceptions_enable=False)
for name, command in (("reward", reward), ("dpo", dpo), ("grpo", grpo), ("ppo", ppo)):
    app.command(name)(command)
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(the tiny base model, a task set dir, a preference set dir), each set with train.jsonl and val.jsonl."""
    base, examples = tiny_chat_model()
    root = tmp_path_factory.mktemp("cli")
    for kind, records in (("tasks", examples), ("prefs", addition_pairs(examples))):
        (root / kind).mkdir()
        for split, part in (("train", records[:80]), ("val", records[80:])):
            (root / kind / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return base, root / "tasks", root / "prefs"


def invoke(*args) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def test_reward_then_ppo_on_it(data, tmp_path):
    base, tasks, prefs = data
    out = invoke("reward", base, "--data", prefs, "--out", tmp_path / "rm", "--steps", 2, "--batch-size", 4)
    assert "held-out pairwise accuracy" in out and (tmp_path / "rm" / "reward_model.safetensors").is_file()
    out = invoke("ppo", base, "--data", tasks, "--out", tmp_path / "ppo", "--reward-model", tmp_path / "rm",
                 "--steps", 1, "--batch-size", 4, "--minibatch-size", 2, "--ppo-epochs", 1, "--max-new-tokens", 3,
                 "--accuracy", 4, "--no-progress")
    assert "mean score" in out and "held-out greedy accuracy, 4 graded" in out and "reward model" in out
    assert llmlab.load_model(tmp_path / "ppo").cfg == llmlab.load_model(base).cfg


def test_ppo_verifiable_reward_and_resume(data, tmp_path):
    base, tasks, _ = data
    args = ("ppo", base, "--data", tasks, "--out", tmp_path / "ppo", "--batch-size", 4, "--minibatch-size", 4,
            "--ppo-epochs", 1, "--max-new-tokens", 3, "--no-progress")
    assert "sampled accuracy" in invoke(*args, "--steps", 1)
    invoke(*args, "--steps", 2, "--resume")
    steps = [json.loads(line)["step"] for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


@pytest.mark.parametrize("loss, extra", [("dpo", ["--label-smoothing", 0.1]), ("ipo", []), ("simpo", []),
                                         ("dpo", ["--rpo-alpha", 0.5]), ("orpo", []), ("kto", [])],
                         ids=["cdpo", "ipo", "simpo", "rpo", "orpo", "kto"])
def test_dpo_losses(data, tmp_path, loss, extra):
    base, _, prefs = data
    out = invoke("dpo", base, "--data", prefs, "--out", tmp_path / "dpo", "--loss", loss, "--beta", 0.2, "--steps", 1,
                 "--batch-size", 4, *extra)
    assert "reference forward passes" in out and "held-out preference accuracy" in out
    assert "NLL per chosen completion token" in out and ("none (orpo is reference-free)" in out) == (loss == "orpo")
    metrics = json.loads((tmp_path / "dpo" / "dpo_metrics.json").read_text())
    assert metrics["loss"] == ("sigmoid" if loss == "dpo" else loss)
    assert metrics["rpo_alpha"] == (0.5 if "--rpo-alpha" in extra else 0.0)


def test_grpo(data, tmp_path):
    base, tasks, _ = data
    out = invoke("grpo", base, "--data", tasks, "--out", tmp_path / "grpo", "--steps", 1, "--group-size", 2,
                 "--prompts-per-step", 2, "--max-new-tokens", 3, "--accuracy", 4)
    assert "mean reward" in out and "held-out greedy accuracy" in out
    assert (tmp_path / "grpo" / "grpo_metrics.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["reward", "{base}", "--data", "missing.jsonl", "--out", "{tmp}/o"], "--data missing.jsonl: no such file"),
    (["dpo", "{base}", "--data", "{prefs}", "--out", "{tmp}/o", "--loss", "kpo"], "--loss 'kpo' must be one of dpo, "),
    (["dpo", "{base}", "--data", "{prefs}", "--out", "{tmp}/o", "--loss", "orpo", "--rpo-alpha", "0.5"],
     "orpo already has an NLL term"),
    (["grpo", "{tmp}/no-model", "--data", "{tasks}", "--out", "{tmp}/o"], "no-model does not exist"),
    (["ppo", "{base}", "--data", "{tasks}", "--out", "{tmp}/o", "--batch-size", "2"],
     "minibatch_size=8 must be <= batch_size=2"),
    (["ppo", "{base}", "--data", "{tasks}", "--out", "{tmp}/o", "--reward-model", "{tmp}/rm"], "no such directory"),
])
def test_user_mistakes_are_one_line_errors(data, tmp_path, monkeypatch, capsys, args, message):
    base, tasks, prefs = data
    monkeypatch.setattr(cli_main, "app", app)  # main()'s error handling around the commands as main.py adds them
    argv = [a.format(base=base, tasks=tasks, prefs=prefs, tmp=tmp_path) for a in args]
    assert cli_main.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()

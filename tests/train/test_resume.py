"""Kill a training process with SIGKILL after its first checkpoint, resume it, and get the uninterrupted run.

Reference: the same config run without interruption (in this process). Criterion: the per-step train losses in
metrics.jsonl, the val losses and the final weights are exactly equal (tolerance 0). Exact equality is expected on CPU
in float32: the same ops run on the same data in the same order with one thread, and the checkpoint restores every
piece of state they read (weights, AdamW moments and step counts, the batch sampler's RNG, the global RNGs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from llmlab.model.io import load_model
from llmlab.train.checkpoint import latest_checkpoint
from llmlab.train.loop import pretrain
from llmlab.train.metrics import read_metrics
from tests.train.helpers import tiny_config, tiny_data

# the CLI command as a subprocess, before (and independently of) its registration in llmlab.cli.main
CLI = [sys.executable, "-c", "import typer; from llmlab.cli.pretrain_cmds import pretrain; typer.run(pretrain)"]
STEPS, EVERY = 40, 5
TIMEOUT_S = 120


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as this process (tests/conftest.py)
    return subprocess.Popen([*CLI, *args, "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def losses(run: Path, kind: str) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if r["kind"] == kind]


def last_step(run: Path) -> int:
    return max((step for step, _ in losses(run, "train")), default=0)


def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path):
    data = tiny_data(tmp_path / "data")
    # the full tiny preset (80 ms a step on 8 x 128 tokens), so steps outlast the polling below
    fields = dict(model_overrides={}, batch_size=4, seq_len=64, max_steps=STEPS, checkpoint_interval=EVERY,
                  eval_interval=10, sample_interval=10, sample_tokens=8, warmup_steps=3)
    reference = tiny_config(data, tmp_path / "reference", **fields)
    pretrain(reference, progress=False)

    killed = tiny_config(data, tmp_path / "killed", **fields)
    config = tmp_path / "killed.json"
    config.write_text(killed.to_json())
    proc = cli("--config", str(config))
    deadline = time.monotonic() + TIMEOUT_S
    # kill between two checkpoints, so the steps logged after the last one are lost and must be redone
    while not (latest_checkpoint(tmp_path / "killed" / "checkpoints") and last_step(tmp_path / "killed") % EVERY > 1):
        assert proc.poll() is None, f"the run ended before it was killed:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint within the timeout"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(TIMEOUT_S) == -signal.SIGKILL
    resumed_from = int(latest_checkpoint(tmp_path / "killed" / "checkpoints").name[5:12])
    assert EVERY <= resumed_from < last_step(tmp_path / "killed") < STEPS

    proc = cli("--out", str(tmp_path / "killed"), "--resume")  # the config comes from the run's train_config.json
    output = proc.communicate(timeout=TIMEOUT_S)[0]
    assert proc.returncode == 0, output

    for kind in ("train", "val"):
        assert losses(tmp_path / "killed", kind) == losses(tmp_path / "reference", kind)
    assert len(losses(tmp_path / "killed", "train")) == STEPS
    ours, ref = load_model(tmp_path / "killed").state_dict(), load_model(tmp_path / "reference").state_dict()
    assert all(torch.equal(ours[k], ref[k]) for k in ref)

"""Data parallelism on 2 CPU processes (gloo, loopback only), launched as a user would:
`python -m torch.distributed.run --nproc_per_node 2 -m llmlab pretrain ... [--strategy fsdp]`.

Reference: the same config (gpt2 style, grad_accum 2) run in this process with the same global batch: batch_size 16
here, 2 x 8 there. Tolerances, with what was measured: losses rtol 1e-6 (2.2e-7), weights atol 5e-5 (7.7e-6), AdamW
moments atol 1e-7 (2.4e-8). Not bitwise equal, because the gradient is summed in another order: each rank's mean over
its 8 rows, then the all-reduce (DDP) or reduce-scatter (FSDP) average, instead of one mean over 16 rows. The
gradients then differ by fp32 rounding (at most 3e-8 where |g| reaches 0.48), and AdamW's update
lr * m / (sqrt(v) + eps) magnifies that for gradients near eps = 1e-8: at the first step, where the update is
lr * g / (|g| + eps), an element with g = -2.82e-8 that rounds 3.5e-10 differently moves 2.4e-3 x lr apart.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from llmlab.errors import ConfigError
from llmlab.model.io import load_model
from llmlab.train import distributed
from llmlab.train.checkpoint import load_checkpoint
from llmlab.train.loop import TrainConfig, pretrain, rank_and_world
from llmlab.train.metrics import read_metrics
from tests.train.helpers import tiny_config, tiny_data

STEPS, TIMEOUT_S = 6, 120
LOSS_RTOL, WEIGHT_ATOL, MOMENT_ATOL = 1e-6, 5e-5, 1e-7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> None:
    """`llmlab pretrain` on 2 processes, rendezvous and gloo on the loopback interface only."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "llmlab", "pretrain", *args, "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output = proc.communicate(timeout=TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers: the session it leads
        pytest.fail(f"torchrun ran past {TIMEOUT_S} s:\n{proc.communicate()[0][-4000:]}")
    assert proc.returncode == 0, output[-4000:]


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == kind]


def losses(run: Path, kind: str, last_step: int) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in records(run, kind) if r["step"] <= last_step]


def checkpoint(run: Path, step: int) -> dict:
    return load_checkpoint(run / "checkpoints" / f"ckpt_{step:07d}.pt")


def assert_close_states(ours: dict, ref: dict, atol: float) -> None:
    assert ours.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=0, atol=atol, msg=name)


def assert_same_run(run: Path, reference: Path, last_step: int) -> None:
    """Per-step train and val losses up to last_step, and the weights at last_step."""
    for kind in ("train", "val"):
        ours, ref = losses(run, kind, last_step), losses(reference, kind, last_step)
        assert [s for s, _ in ours] == [s for s, _ in ref]
        assert [loss for _, loss in ours] == pytest.approx([loss for _, loss in ref], rel=LOSS_RTOL, abs=0)
    assert len(losses(run, "train", last_step)) == last_step
    assert_close_states(load_model(run).state_dict(), checkpoint(reference, last_step)["model"], WEIGHT_ATOL)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The in-process reference (batch 16, 6 steps) and the 2-process run (2 x 8): DDP for steps 1-3, then FSDP
    resumed from DDP's step-3 checkpoint (full tensors, cut into shards on load) for steps 4-6."""
    tmp = tmp_path_factory.mktemp("distributed")
    data = tiny_data(tmp / "data")
    # gpt2 style: tied embeddings, one parameter in two modules, which FSDP must shard once;
    # a constant LR after warmup: the resumed run raises max_steps without changing the schedule
    fields = dict(style="gpt2", max_steps=STEPS, batch_size=8, grad_accum=2, schedule="constant", warmup_steps=2,
                  eval_interval=3, eval_batches=2, sample_interval=3, sample_tokens=8, checkpoint_interval=3,
                  device="cpu")
    pretrain(tiny_config(data, tmp / "reference", **{**fields, "batch_size": 16}), progress=False)
    (tmp / "ddp.json").write_text(tiny_config(data, tmp / "ddp", **fields).to_json())
    torchrun("--config", str(tmp / "ddp.json"), "--steps", str(STEPS // 2))
    shutil.copytree(tmp / "ddp", tmp / "fsdp")
    torchrun("--out", str(tmp / "fsdp"), "--resume", "--strategy", "fsdp", "--steps", str(STEPS))
    return {"reference": tmp / "reference", "ddp": tmp / "ddp", "fsdp": tmp / "fsdp"}


def test_ddp_on_2_processes_equals_one_process(runs):
    """Criterion: DDP (grad_accum 2, no_sync on the first micro-batch) logs the per-step train and val losses of one
    process with the same global batch (rtol 1e-6) and ends with its weights (atol 5e-5); see the module docstring."""
    assert_same_run(runs["ddp"], runs["reference"], STEPS // 2)


def test_fsdp_on_2_processes_resumed_from_ddp_equals_one_process(runs):
    """Criterion: FSDP (FSDP2 fully_shard), resumed from the DDP run's checkpoint, logs the per-step losses of one
    uninterrupted process with the same global batch (rtol 1e-6) and ends with its weights (atol 5e-5); its final
    checkpoint, gathered from the shards, holds the reference's AdamW moments (atol 1e-7) and step counts."""
    assert_same_run(runs["fsdp"], runs["reference"], STEPS)
    ours, ref = checkpoint(runs["fsdp"], STEPS)["optimizer"], checkpoint(runs["reference"], STEPS)["optimizer"]
    assert ours["param_groups"] == ref["param_groups"]
    assert ours["state"].keys() == ref["state"].keys()
    for index, state in ref["state"].items():
        assert_close_states(ours["state"][index], state, MOMENT_ATOL)


def test_fsdp_holds_half_the_parameters_and_optimizer_state_per_rank(runs):
    """Criterion: under FSDP each of the 2 ranks holds 1/2 (within 1%) of the parameter bytes and AdamW-moment bytes
    of the single process, counted over its local shards; under DDP each rank holds all of them. (ZeRO-3: 16Ψ/N bytes
    of fp32 model state per rank.)"""
    single = records(runs["reference"], "memory")[0]
    assert single["optimizer_bytes"] == 2 * single["param_bytes"]  # exp_avg and exp_avg_sq
    ddp, fsdp = records(runs["ddp"], "memory"), records(runs["fsdp"], "memory")
    assert [r["step"] for r in fsdp] == [1, STEPS // 2 + 1]  # DDP's record of step 1, FSDP's of its first step
    for kind in ("param_bytes", "optimizer_bytes"):
        assert ddp[0][kind] == single[kind] and ddp[0][f"{kind}_all_ranks"] == 2 * single[kind]
        assert fsdp[1][f"{kind}_all_ranks"] == single[kind]
        assert fsdp[1][kind] == pytest.approx(single[kind] / 2, rel=0.01)


def test_resume_with_another_number_of_processes_is_an_error(runs):
    """Criterion: a checkpoint written by 2 processes does not resume in one (the global batch would halve): a
    ConfigError says how many processes wrote it."""
    cfg = TrainConfig.from_json(runs["fsdp"] / "train_config.json")
    with pytest.raises(ConfigError, match="written by 2 process"):
        pretrain(cfg, resume=True, progress=False)


def test_process_group_is_left_even_on_error(monkeypatch):
    """Criterion: under torchrun's variables (a group of one, on 127.0.0.1) process_group joins a gloo group, rank_and_
    world reports it, and an exception inside the block still destroys the group."""
    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match="boom"):
        with distributed.process_group(torch.device("cpu")) as device:
            assert device == torch.device("cpu")
            assert dist.get_backend() == "gloo"
            assert rank_and_world() == (0, 1)
            raise RuntimeError("boom")
    assert not dist.is_initialized()


def test_strategy_is_checked():
    """Criterion: an unknown strategy is a ConfigError naming the field and the choices."""
    with pytest.raises(ConfigError, match="strategy='zero' must be one of ddp, fsdp"):
        TrainConfig(data="x", strategy="zero")

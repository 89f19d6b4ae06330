"""Checkpoints: a round trip restores identical state; damage is an error, never a silent restart from zero.

Criteria: after save -> disturb -> load, the weights, AdamW state, next data batch and the next draws of the torch,
numpy and Python RNGs equal the saved ones exactly; `keep` newest files are kept and `latest` names the newest; a
truncated file, a flipped byte, a damaged `latest` or a missing checkpoint raise LlmlabError naming the file.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from llmlab.data.shards import ShardDataset
from llmlab.errors import ConfigError, LlmlabError
from llmlab.model.presets import preset
from llmlab.model.transformer import Transformer
from llmlab.train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from llmlab.train.loop import TrainConfig, pretrain
from llmlab.train.optim import AdamW
from tests.train.helpers import SMALL, tiny_config, tiny_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("shards"))


def draws() -> tuple:
    return torch.rand(3), np.random.rand(3), random.random()


def train_some(model, opt, ds, steps: int) -> None:
    for _ in range(steps):
        x = ds.random_batch()
        torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad()


def test_round_trip_restores_identical_state(data, tmp_path):
    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=260, **SMALL))
    opt = AdamW(model.parameters(), lr=1e-3)
    ds = ShardDataset(data, "train", block_size=16, batch_size=2, seed=3)
    train_some(model, opt, ds, 2)
    state = {"step": 2, "model": model.state_dict(), "optimizer": opt.state_dict(), "data": ds.state_dict(),
             "rng": rng_state(), "train_config": {"data": str(data)}}
    path = save_checkpoint(tmp_path, state, keep=1)
    expected_draws, expected_batch = draws(), ds.random_batch()
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    saved_moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]

    train_some(model, opt, ds, 1)  # disturb everything
    loaded = load_checkpoint(path)
    model.load_state_dict(loaded["model"])
    opt.load_state_dict(loaded["optimizer"])
    ds.load_state_dict(loaded["data"])
    set_rng_state(loaded["rng"])

    assert loaded["step"] == 2 and loaded["train_config"] == {"data": str(data)}
    assert all(torch.equal(v, saved_weights[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(opt.state[p]["exp_avg"], m) for p, m in zip(model.parameters(), saved_moments, strict=True))
    assert all(opt.state[p]["step"].item() == 2 for p in model.parameters())
    t, n, r = draws()
    assert torch.equal(t, expected_draws[0]) and np.array_equal(n, expected_draws[1]) and r == expected_draws[2]
    assert torch.equal(ds.random_batch(), expected_batch)


def small_state(step: int) -> dict:
    # a 256 KiB tensor, most of the file: the flipped bytes below land in its data
    return {"step": step, "model": {"w": torch.full((256, 256), float(step))}, "optimizer": {}, "data": {},
            "rng": rng_state(), "train_config": {}}


def test_keeps_the_newest_and_points_latest_at_it(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, small_state(step), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_0000030.pt", "ckpt_0000040.pt", "latest"]
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt_0000040.pt"
    assert json.loads((tmp_path / "latest").read_text()) == {"step": 40, "file": "ckpt_0000040.pt"}
    assert latest_checkpoint(tmp_path / "none") is None


def test_truncated_checkpoint_is_an_error_naming_it(tmp_path):
    path = save_checkpoint(tmp_path, small_state(1), keep=1)
    data = path.read_bytes()
    for size in (len(data) // 2, len(data) - 1, 0):
        path.write_bytes(data[:size])
        with pytest.raises(LlmlabError, match=f"{path}: truncated"):
            load_checkpoint(path)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_corrupt_byte_is_an_error_naming_it(tmp_path, where):
    """One flipped bit inside the tensor data: torch.load alone would load it silently; the CRC-32 check does not."""
    path = save_checkpoint(tmp_path, small_state(1), keep=1)
    data = bytearray(path.read_bytes())
    data[int(where * len(data))] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(LlmlabError, match=f"{path}: corrupt"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"step": 1}, path)
    with pytest.raises(LlmlabError, match="not an llmlab checkpoint"):
        load_checkpoint(path)
    with pytest.raises(LlmlabError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_damaged_latest_pointer(tmp_path):
    save_checkpoint(tmp_path, small_state(1), keep=1)
    (tmp_path / "latest").write_text("{not json")
    with pytest.raises(LlmlabError, match="latest: not a checkpoint pointer"):
        latest_checkpoint(tmp_path)
    (tmp_path / "latest").write_text(json.dumps({"step": 9, "file": "ckpt_0000009.pt"}))
    with pytest.raises(LlmlabError, match="ckpt_0000009.pt, which does not exist"):
        latest_checkpoint(tmp_path)


@pytest.fixture(scope="module")
def short_run(data, tmp_path_factory):
    cfg = tiny_config(data, tmp_path_factory.mktemp("short") / "run", max_steps=4, warmup_steps=1, eval_interval=0,
                      sample_interval=0, checkpoint_interval=2)
    pretrain(cfg, progress=False)
    return cfg


def test_pretrain_resume_of_a_corrupt_checkpoint_fails(short_run, tmp_path):
    """A damaged latest checkpoint stops `--resume` with the file's name; it never restarts from step 0."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(short_run.out_dir, out)
    path = out / "checkpoints" / "ckpt_0000004.pt"
    path.write_bytes(path.read_bytes()[:1000])
    cfg = TrainConfig.from_dict({**short_run.to_dict(), "out_dir": str(out), "max_steps": 6})
    with pytest.raises(LlmlabError, match="ckpt_0000004.pt: truncated"):
        pretrain(cfg, resume=True, progress=False)


def test_resume_needs_a_checkpoint_and_a_fresh_start_needs_an_empty_run(short_run, tmp_path):
    fresh = TrainConfig.from_dict({**short_run.to_dict(), "out_dir": str(tmp_path / "new")})
    with pytest.raises(LlmlabError, match="resume: no checkpoint in"):
        pretrain(fresh, resume=True, progress=False)
    with pytest.raises(LlmlabError, match="already holds a run.*--resume"):
        pretrain(short_run, progress=False)


def test_resume_with_a_different_config_names_the_field(short_run):
    changed = TrainConfig.from_dict({**short_run.to_dict(), "lr": 5e-3})
    with pytest.raises(ConfigError, match="lr=0.005 differs from the checkpoint's 0.01"):
        pretrain(changed, resume=True, progress=False)

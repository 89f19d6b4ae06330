"""The pretraining loop, its config and MFU.

Criteria: a tiny run on the shipped sonnets learns (val loss after 50 steps below 0.6 x ln V, the loss of a uniform
guess, and below the unigram baseline: the cross-entropy of the val tokens under the train tokens' add-one smoothed
frequencies) and leaves a run directory that llmlab.load_model and llmlab.load_tokenizer open, with metrics.jsonl,
loss.png and TensorBoard events; TrainConfig round-trips through JSON and rejects bad values with a ConfigError naming
the field; MFU equals its closed form flops_per_token x tokens/s / peak.
"""

from __future__ import annotations

import json
import math
import struct
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from tensorboardX.proto.event_pb2 import Event
from typer.testing import CliRunner

import llmlab
from llmlab.cli.pretrain_cmds import pretrain as pretrain_cmd
from llmlab.data.load import Document
from llmlab.data.samples import sample_text
from llmlab.data.shards import open_shards, write_shards
from llmlab.errors import ConfigError, LlmlabError
from llmlab.eval import baselines
from llmlab.model.flops import flops_per_token
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import load_tokenizer, train_tokenizer
from llmlab.tokenizer.bytes import ByteTokenizer
from llmlab.train.loop import TrainConfig, build_model_config, pretrain, rank_rows, train_step
from llmlab.train.metrics import read_metrics
from llmlab.train.mfu import datasheet_tflops, measure_tflops, mfu, peak
from tests.train.helpers import SMALL, tiny_config, tiny_data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    cfg = tiny_config(data, tmp_path_factory.mktemp("run") / "tiny")
    return cfg, pretrain(cfg, progress=False)


def unigram_loss(data: Path, vocab_size: int) -> float:
    train, val = (np.concatenate(open_shards(data, split)[1]) for split in ("train", "val"))
    return baselines.unigram_loss(train, val, vocab_size)


def test_tiny_run_learns(run, data):
    """After 50 steps the val loss is below 0.6 ln V (uniform guessing scores ln V = ln 260 = 5.56) and below the
    unigram baseline (3.11 here): the model uses context."""
    cfg, result = run
    records = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [0, 25, 50]
    assert val[0]["loss"] == pytest.approx(math.log(260), rel=0.05)  # an untrained model is close to uniform
    assert result.val_loss == val[-1]["loss"] < 0.6 * math.log(260)
    assert result.val_loss < unigram_loss(data, 260) - 0.2
    assert result.val_ppl == pytest.approx(math.exp(result.val_loss))
    assert result.steps == 50 and len(result.losses) == 50
    assert result.tokens_per_s > 0 and 0 < result.mfu


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the event files: TFRecord frames (u64 length, u32 crc, Event proto, u32 crc)."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_run_dir_opens_with_load_model_and_load_tokenizer(run):
    """The run directory alone is enough to generate: model, tokenizer, config, metrics, plot, TensorBoard."""
    cfg, _ = run
    out = Path(cfg.out_dir)
    model = llmlab.load_model(out)
    assert model.cfg == build_model_config(cfg, 260)
    tok = load_tokenizer(out / "tokenizer")
    assert tok.decode(tok.encode("Shall I compare thee")) == "Shall I compare thee"
    assert tok.encode("thee") == ByteTokenizer().encode("thee") and tok.eos_id == ByteTokenizer().eos_id
    assert TrainConfig.from_json(out / "train_config.json") == cfg
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tb = tensorboard_scalars(out / "tb")
    assert [s for s, _ in tb["val/loss"]] == [0, 25, 50] and len(tb["train/loss"]) == 50
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 51))
    assert train[-1]["tokens"] == 50 * 8 * 32
    assert {r["step"] for r in records if r["kind"] == "sample"} == {25, 50}
    assert all(isinstance(r["text"], str) for r in records if r["kind"] == "sample")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt_0000025.pt", "ckpt_0000050.pt", "latest"]


def test_bpe_data_needs_its_own_tokenizer(tmp_path):
    """Shards encoded with a learned BPE train only with that tokenizer (checked against the manifest's identity),
    which is copied into the run directory."""
    bpe = train_tokenizer(sample_text("sonnets"), 320)
    bpe.save(tmp_path / "tok")
    docs = [Document(p, "sonnets") for p in sample_text("sonnets").split("\n\n") if len(p) > 200]
    write_shards(docs, tmp_path / "data", bpe, val_fraction=0.1)
    cfg = tiny_config(tmp_path / "data", tmp_path / "run", max_steps=2, warmup_steps=0, eval_interval=0,
                      sample_interval=2, sample_tokens=4)
    with pytest.raises(ConfigError, match="tokenizer: .* was encoded with llmlab.tokenizer.bpe.Tokenizer"):
        pretrain(cfg, progress=False)
    ByteTokenizer().save(tmp_path / "bytes")
    with pytest.raises(ConfigError, match="is not the tokenizer .* was encoded with .vocab_size 260 != 320"):
        pretrain(TrainConfig.from_dict({**cfg.to_dict(), "tokenizer": str(tmp_path / "bytes")}), progress=False)
    pretrain(TrainConfig.from_dict({**cfg.to_dict(), "tokenizer": str(tmp_path / "tok")}), progress=False)
    assert llmlab.load_model(tmp_path / "run").cfg.vocab_size == 320
    assert load_tokenizer(tmp_path / "run" / "tokenizer").encode("thy beauty") == bpe.encode("thy beauty")


def test_train_config_json_round_trip(tmp_path):
    cfg = TrainConfig(data="d", betas=(0.8, 0.9), model_overrides={"n_layers": 2}, schedule="wsd", decay_steps=5)
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert TrainConfig.from_json(path) == cfg
    assert TrainConfig.from_dict(json.loads(cfg.to_json())).betas == (0.8, 0.9)


@pytest.mark.parametrize("changes, field", [
    ({"data": ""}, "data"), ({"batch_size": 0}, "batch_size"), ({"lr": -1.0}, "lr"), ({"min_lr": 1.0}, "min_lr"),
    ({"schedule": "step"}, "schedule"), ({"warmup_steps": 500}, "warmup_steps"), ({"dtype": "fp16"}, "dtype"),
    ({"betas": (0.9, 1.0)}, "betas"), ({"device": "gpu"}, "device"), ({"preset": "huge"}, "preset"),
    ({"grad_clip": -1.0}, "grad_clip"), ({"keep_checkpoints": 0}, "keep_checkpoints"),
    ({"decay_steps": 3}, "decay_steps"),
])
def test_train_config_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{"data": "d", **changes})


def test_unknown_config_field_is_an_error():
    with pytest.raises(ConfigError, match="unknown train config field.*max_step"):
        TrainConfig.from_dict({"data": "d", "max_step": 3})


def test_model_config_checks(data, tmp_path):
    with pytest.raises(ConfigError, match="seq_len=128 exceeds the model's max_seq_len=64"):
        build_model_config(tiny_config(data, tmp_path, seq_len=128), 260)
    with pytest.raises(ConfigError, match="arch='encoder' .*pretrain trains causal decoders"):
        build_model_config(TrainConfig(data="d", style="bert"), 260)
    t5 = {"arch": "encoder-decoder", "position": "t5_relative"}
    with pytest.raises(ConfigError, match="arch='encoder-decoder' .*pretrain trains causal decoders"):
        build_model_config(TrainConfig(data="d", model_overrides=t5), 260)
    with pytest.raises(ConfigError, match="vocab_size=100 is smaller"):
        build_model_config(TrainConfig(data="d", model_overrides={"vocab_size": 100}), 260)
    with pytest.raises(ConfigError, match="model_overrides"):
        build_model_config(TrainConfig(data="d", model_overrides={"n_layer": 2}), 260)


def test_rank_rows_split_a_global_batch():
    """world processes each keep B consecutive rows of the (world * B)-row batch; together they are the batch."""
    batch = torch.arange(24).reshape(6, 4)
    assert torch.equal(torch.cat([rank_rows(batch, r, 3) for r in range(3)]), batch)
    assert torch.equal(rank_rows(batch, 0, 1), batch)


def test_mfu_closed_form():
    """MFU = flops_per_token x tokens/s / peak (PaLM app. B); with the tiny preset's own FLOP count."""
    cfg = llmlab.model.presets.preset("tiny")
    f = flops_per_token(cfg, 128)
    assert mfu(f, 10_000.0, 1e12) == pytest.approx(f * 1e4 / 1e12)
    assert mfu(6.0, 1.0, 12.0) == 0.5


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA A10", 125.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0), ("NVIDIA GeForce GTX 1080", None),
])
def test_datasheet_peaks(name, tflops):
    assert datasheet_tflops(name) == tflops


def test_peak_override_and_measured_cpu_peak():
    assert peak(torch.device("cpu"), 2.5).flops == 2.5e12
    measured = peak(torch.device("cpu"))
    assert "measured" in measured.source and measured.tflops == measure_tflops("cpu", torch.float32, 1024) > 0


def test_cli_user_errors_are_one_line_errors(data, tmp_path):
    """The command raises LlmlabError (printed as one line by llmlab.cli.main) for a missing --data or bad values."""
    app = typer.Typer()
    app.command()(pretrain_cmd)
    runner = CliRunner()
    result = runner.invoke(app, ["--out", str(tmp_path / "x")])
    assert isinstance(result.exception, ConfigError) and "--data is required" in str(result.exception)
    result = runner.invoke(app, ["--data", str(data), "--override", "n_layers"])
    assert isinstance(result.exception, ConfigError) and "KEY=VALUE" in str(result.exception)
    result = runner.invoke(app, ["--data", str(data), "--out", str(tmp_path / "y"), "--resume"])
    assert isinstance(result.exception, LlmlabError) and "no checkpoint" in str(result.exception)


def test_cli_trains_and_continues_with_more_steps(data, tmp_path):
    """`pretrain --steps 4` then `pretrain --resume --steps 6`: the second call reuses the run's saved config."""
    app = typer.Typer()
    app.command()(pretrain_cmd)
    out = tmp_path / "cli"
    args = ["--data", str(data), "--out", str(out), "--steps", "4", "--seq-len", "32", "--batch-size", "4",
            "--override", "n_layers=1", "--override", "d_model=32", "--override", "max_seq_len=32",
            "--warmup-steps", "1", "--schedule", "constant", "--eval-interval", "0", "--sample-interval", "0",
            "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["--out", str(out), "--resume", "--steps", "6", "--no-progress"])
    assert result.exit_code == 0, result.output
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert llmlab.load_model(out).cfg.n_layers == 1


MOE = {**SMALL, "n_experts": 4, "router_z_loss_coef": 0.01}  # the tiny shape as a Mixtral: 4 experts, top 2


def test_moe_pretrain_logs_aux_loss(data, tmp_path):
    """A 3-step pretrain of a tiny Mixtral-style model (`--style mixtral`) runs, samples and saves; every train
    record logs aux_loss (router_aux_loss_coef * load balance + z-loss term: > 0) next to the LM loss; a dense run
    logs none."""
    cfg = tiny_config(data, tmp_path / "moe", style="mixtral", model_overrides=MOE, max_steps=3, warmup_steps=0,
                      eval_interval=3, sample_interval=3, sample_tokens=4, checkpoint_interval=0)
    result = pretrain(cfg, progress=False)
    train = [r for r in read_metrics(tmp_path / "moe" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3] and result.steps == 3
    assert all(0 < r["aux_loss"] < 1 and math.isfinite(r["loss"]) for r in train)
    assert llmlab.load_model(tmp_path / "moe").cfg.n_experts == 4
    dense = tiny_config(data, tmp_path / "dense", max_steps=1, warmup_steps=0, eval_interval=0, sample_interval=0)
    pretrain(dense, progress=False)
    assert "aux_loss" not in read_metrics(tmp_path / "dense" / "metrics.jsonl")[-1]


def test_train_step_backpropagates_lm_plus_aux_loss(data, tmp_path):
    """Reference: (cross_entropy + model.aux_loss()).backward() by hand on the same batch: train_step steps the
    optimizer with the same gradients (fp32 1e-6) and returns that LM loss and aux loss."""
    cfg = tiny_config(data, tmp_path, style="mixtral", model_overrides=MOE, grad_clip=0.0)
    torch.manual_seed(0)
    model = Transformer(build_model_config(cfg, 260))
    batch = torch.randint(0, 260, (8, 33))

    class OneBatch:
        def random_batch(self):
            return batch

    class Capture:  # an optimizer that keeps the gradients it is asked to apply
        def step(self):
            self.grads = [p.grad.clone() for p in model.parameters()]

        def zero_grad(self, set_to_none=True):
            model.zero_grad(set_to_none=set_to_none)

    optimizer = Capture()
    loss, _, aux = train_step(model, optimizer, OneBatch(), cfg, torch.device("cpu"), nullcontext(), 0, 1)
    logits = model(batch[:, :-1])
    lm = torch.nn.functional.cross_entropy(logits.reshape(-1, 260), batch[:, 1:].reshape(-1))
    want_aux = model.aux_loss()
    (lm + want_aux).backward()
    for got, p in zip(optimizer.grads, model.parameters(), strict=True):
        torch.testing.assert_close(got, p.grad, atol=1e-6, rtol=1e-6)
    assert loss == pytest.approx(lm.item(), rel=1e-6) and aux == pytest.approx(want_aux.item(), rel=1e-6)

"""`llmlab serve MODEL`: the options reach the engine (uvicorn replaced by a stub, so no port is opened)."""

from __future__ import annotations

import pytest
import torch
import typer
import uvicorn
from typer.testing import CliRunner

from llmlab.cli import serve_cmds
from llmlab.model.config import TransformerConfig
from llmlab.model.io import save_model
from llmlab.model.transformer import Transformer
from llmlab.serve import engine as engine_module

app = typer.Typer()
app.command("serve")(serve_cmds.serve)
app.command("unused")(lambda: None)  # two commands: typer keeps "serve" as a subcommand


@pytest.mark.parametrize("flag", [[], ["--compile"]])
def test_serve_passes_compile_to_the_engine(tmp_path, monkeypatch, flag):
    torch.manual_seed(0)
    save_model(Transformer(TransformerConfig(vocab_size=260, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                                             max_seq_len=32)), tmp_path / "model")
    engines, served = [], []
    real = engine_module.Engine
    monkeypatch.setattr(engine_module, "Engine", lambda *a, **kw: engines.append(real(*a, **kw)) or engines[-1])
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw))
    warmed = []
    monkeypatch.setattr(real, "warm_up", lambda self: warmed.append(self))  # it compiles: tested in tests/serve
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "model"), "--port", "8123", "--max-batch-size", "4",
                                      *flag])
    assert result.exit_code == 0, result.output
    assert served == [{"host": "127.0.0.1", "port": 8123, "log_level": "info"}]
    assert engines[0].runner.compile == bool(flag) and engines[0].scheduler.max_batch_size == 4
    assert warmed == ([engines[0]] if flag else [])  # --compile compiles before serving
    assert not engines[0].running  # stopped when the server returned

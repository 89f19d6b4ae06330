"""`llmlab compress`: writes a loadable run dir with quantization.json, compares methods by perplexity, and turns
user mistakes into LlmlabErrors (one red line through `llmlab.cli.main`). The command is driven here through its
own Typer app, so this file does not depend on how main.py registers it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer

from llmlab.cli.compress_cmds import compress
from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.io import load_model, save_model
from llmlab.model.transformer import Transformer

SAMPLE = Path(__file__).parents[1] / "data" / "sample" / "en.jsonl"


def run(*args: str) -> None:
    app = typer.Typer()
    app.command("compress")(compress)
    app.callback()(lambda: None)  # a group, so the command keeps its name
    typer.main.get_command(app).main(["compress", *args], standalone_mode=False)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=260, d_model=64, n_layers=2, n_heads=4, d_ff=96, max_seq_len=64)
    return save_model(Transformer(cfg), tmp_path / "fp32")  # vocab 260: the byte tokenizer


@pytest.fixture
def held_out(tmp_path) -> Path:
    text = "\n\n".join(json.loads(line)["text"] for line in SAMPLE.read_text().splitlines()[:2])[:3000]
    path = tmp_path / "held_out.txt"
    path.write_text(text)
    return path


def test_writes_a_run_dir_with_quantization_json(tmp_path, model_dir, held_out, capsys):
    """--out: the dequantized model loads with load_model and differs from fp32; quantization.json has the method,
    grid, sizes and calibration; --data adds both perplexities."""
    out = tmp_path / "q"
    run(str(model_dir), "--method", "gptq", "--bits", "3", "--group-size", "32", "--calib-tokens", "512",
        "--data", str(held_out), "--out", str(out))
    info = json.loads((out / "quantization.json").read_text())
    assert info["method"] == "gptq" and info["bits"] == 3 and info["group_size"] == 32
    assert info["packed_bytes"] < info["fp32_bytes"] / 7 and len(info["layers"]) == 14  # 3 + 35/32 bits
    assert info["calibration"] == {"text": "llmlab sample: sonnets", "tokens": 512}
    assert set(info["perplexity"]) == {"fp32", "gptq"}
    q, fp = load_model(out), load_model(model_dir)
    assert not torch.equal(q.blocks[0].mlp.down_proj.weight, fp.blocks[0].mlp.down_proj.weight)
    assert torch.equal(q.lm_head.weight, fp.lm_head.weight)
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    text = capsys.readouterr().out
    assert "gptq" in text and "asym int3 g32" in text


def test_compares_methods_on_held_out_text(model_dir, held_out, capsys):
    """Several methods and --data: one table row each, after the fp32 row, with perplexities."""
    run(str(model_dir), "--method", "int8,rtn,awq,nf4", "--group-size", "-1", "--calib-tokens", "256",
        "--data", str(held_out))
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["fp32", "int8", "rtn", "awq", "nf4"]
    assert "per-channel" in rows[2]


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "rtn"], "nothing to do"),
    (["--method", "rtn,gptq", "--out", "x"], "--out writes one quantized model"),
    (["--method", "llm.int8", "--out", "x"], "llm.int8 quantizes activations at run time"),
    (["--method", "int5", "--out", "x"], "--method 'int5'"),
    (["--method", "rtn", "--group-size", "0", "--out", "x"], "--group-size 0"),
    (["--method", "rtn", "--bits", "9", "--out", "x"], "bits=9"),
])
def test_user_mistakes(model_dir, args, message):
    with pytest.raises(LlmlabError, match=message):
        run(str(model_dir), *args)

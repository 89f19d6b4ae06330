"""`llmlab export MODEL --format gguf --out FILE.gguf [--dtype ...]`: one file that loads back (load_model, info) with
the same logits; unsupported configs and options are one line on stderr and exit 2."""

from __future__ import annotations

import pytest
import torch

from llmlab import Transformer, TransformerConfig, load_model, save_model
from llmlab.cli.main import main
from llmlab.tokenizer import train_tokenizer

gguf = pytest.importorskip("gguf")
CFG = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 96, "max_seq_len": 32}


@pytest.fixture
def run_dir(tmp_path):
    tok = train_tokenizer("the cat sat on the mat, the dog sat on the log. " * 20, 300)
    run = save_model(Transformer(TransformerConfig(vocab_size=tok.vocab_size, **CFG)), tmp_path / "run")
    tok.save(run / "tokenizer")
    return run


def test_export_gguf_prints_size_and_tensor_count_and_loads_back(run_dir, tmp_path, capsys):
    """f32: gguf.GGUFReader opens it with the tensor count printed; load_model(file) gives bit-identical logits;
    `llmlab info FILE.gguf` works."""
    out = tmp_path / "m.gguf"
    assert main(["export", str(run_dir), "--format", "gguf", "--out", str(out), "--dtype", "f32"]) == 0
    text = capsys.readouterr().out
    n = len(gguf.GGUFReader(out).tensors)
    assert f"GGUF llama (f32): {n} tensors" in text and f"{out.stat().st_size:,} bytes" in text
    source = load_model(run_dir)
    x = torch.randint(0, source.cfg.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(load_model(out)(x), source(x))
    assert main(["info", str(out)]) == 0
    assert "d_model" in capsys.readouterr().out


def test_export_gguf_q8_0_default_f16(run_dir, tmp_path, capsys):
    """Without --dtype the matrices are F16 (llama.cpp's converter default); --dtype q8_0 is about half that size."""
    f16, q8 = tmp_path / "f16.gguf", tmp_path / "q8.gguf"
    assert main(["export", str(run_dir), "--format", "gguf", "--out", str(f16)]) == 0
    assert main(["export", str(run_dir), "--format", "gguf", "--out", str(q8), "--dtype", "q8_0"]) == 0
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(f16).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert q8.stat().st_size < 0.6 * f16.stat().st_size


@pytest.mark.parametrize(("args", "needle"), [
    (["--dtype", "q4_k"], "--dtype 'q4_k'"),
    (["--format", "hf", "--dtype", "f16"], "--dtype applies to --format gguf"),
])
def test_bad_options_are_one_line(run_dir, tmp_path, capsys, args, needle):
    argv = ["export", str(run_dir), "--format", "gguf", "--out", str(tmp_path / "m.gguf"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_unsupported_config_is_one_line(tmp_path, capsys):
    cfg = TransformerConfig(vocab_size=260, **{**CFG, "n_kv_heads": None}, position="alibi")
    run = save_model(Transformer(cfg), tmp_path / "run")
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert "position='alibi'" in err and "\n" not in err
    assert not (tmp_path / "m.gguf").exists()


def test_generate_runs_on_the_gguf_file_alone(run_dir, tmp_path, capsys):
    """`llmlab generate FILE.gguf`: model and tokenizer both come from the one file (f32); the greedy text equals
    the run directory's."""
    out = tmp_path / "m.gguf"
    assert main(["export", str(run_dir), "--format", "gguf", "--out", str(out), "--dtype", "f32"]) == 0
    capsys.readouterr()
    texts = []
    for model in (run_dir, out):
        assert main(["generate", str(model), "--prompt", "the cat", "--max-new-tokens", "12",
                     "--temperature", "0"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].strip()

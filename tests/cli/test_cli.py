"""The `llmlab` command: subcommands run, user mistakes give one line on stderr and exit 2."""

from pathlib import Path

import pytest

from llmlab.cli.main import main
from llmlab.model.io import load_model

SAMPLE = Path(__file__).parents[1] / "data" / "sample" / "en.jsonl"
TINY_RUN = ["run", "--input", str(SAMPLE), "--vocab-size", "320", "--steps", "3", "--batch-size", "2",
            "--seq-len", "32", "--device", "cpu", "--sft-steps", "0", "--compress", ""]  # tests/test_pipeline.py


def test_run_writes_a_loadable_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY_RUN, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "val perplexity" in text and "unigram baseline" in text
    assert load_model(out / "model").cfg.vocab_size == 320
    assert main(["info", str(out / "model")]) == 0
    assert "d_model" in capsys.readouterr().out


@pytest.mark.parametrize(("flag", "value"), [("--preset", "huge"), ("--style", "gpt5"), ("--backend", "fast")])
def test_bad_model_choice_is_one_line_before_any_stage(tmp_path, capsys, flag, value):
    """Checked before the corpus is fetched or the tokenizer trained: the run directory stays empty."""
    assert main([*TINY_RUN, flag, value, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and value in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_missing_model_dir_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and "\n" not in err


def test_export_rejects_unknown_format(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    assert "--format" in capsys.readouterr().err


def test_bad_option_value_and_unknown_command_exit_2(capsys):
    assert main(["run", "--steps", "abc"]) == 2
    assert main(["bogus"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_error_message_with_brackets_is_printed_verbatim(tmp_path, capsys):
    (tmp_path / "model_config.json").write_text('{"d_model": [1]}')
    assert main(["info", str(tmp_path)]) == 2
    assert "d_model=[1]" in capsys.readouterr().err


def test_export_hf_loads_in_transformers(tmp_path, capsys):
    """`llmlab export RUN --format hf`: AutoModelForCausalLM loads it and gives the same logits (fp32, 1e-5)."""
    import torch
    transformers = __import__("pytest").importorskip("transformers")
    run_dir, hf_dir = tmp_path / "run" / "model", tmp_path / "hf"
    assert main([*TINY_RUN, "--out", str(tmp_path / "run")]) == 0
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(hf_dir)]) == 0
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, output_loading_info=True)
    assert not any(info.values())
    ours = load_model(run_dir)
    x = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf.eval()(x).logits, atol=1e-5, rtol=1e-5)
    assert main(["info", str(hf_dir)]) == 0  # every command takes an HF dir as well


def test_export_without_native_family_says_trust_remote_code(tmp_path, capsys):
    """`llmlab export` of an ALiBi run dir (no native HF family): says so and prints the trust_remote_code=True
    call, which loads it with the same logits (fp32, 1e-5)."""
    import torch

    from llmlab import Transformer, TransformerConfig, save_model
    transformers = pytest.importorskip("transformers")
    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16,
                            position="alibi")
    run_dir, hf_dir = save_model(Transformer(cfg), tmp_path / "run"), tmp_path / "hf"
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(hf_dir)]) == 0
    out = capsys.readouterr().out
    assert "llmlab remote code" in out
    assert f"AutoModelForCausalLM.from_pretrained({str(hf_dir)!r}, trust_remote_code=True)" in out
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True)
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(load_model(run_dir)(x), hf.eval()(x).logits, atol=1e-5, rtol=1e-5)


def test_help_keeps_bracketed_defaults(capsys):
    """Help text is not parsed as rich markup, which would swallow "[cosine]" and "[default: runs/pretrain]"."""
    try:
        main(["pretrain", "--help"])
    except SystemExit:
        pass
    out = " ".join(capsys.readouterr().out.split())
    assert "[cosine]" in out and "[default: runs/pretrain]" in out


def test_info_shows_active_parameters_of_a_moe_model(tmp_path, capsys):
    """A mixture of experts: `llmlab info` adds the parameters one token uses (flops.count_params(cfg).active)."""
    from llmlab import TransformerConfig, save_model
    from llmlab.model.flops import count_params
    from llmlab.model.transformer import Transformer

    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16, n_experts=4,
                            n_experts_per_tok=2)
    save_model(Transformer(cfg), tmp_path / "moe")
    assert main(["info", str(tmp_path / "moe")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{count_params(cfg).active:,} (2 of 4 experts)" in out


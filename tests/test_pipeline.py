"""The main job (`llmlab run`) end to end on the committed sample corpus: every stage runs, the model learns
(held-out loss below the unigram baseline of the same tokenizer), and a rerun reuses finished stages."""

import json
from pathlib import Path

import pytest

from llmlab.errors import LlmlabError
from llmlab.model.io import load_model
from llmlab.pipeline import RunConfig, run

SAMPLE = Path(__file__).parent / "data" / "sample"


def small(out: Path, **changes) -> RunConfig:
    fields = dict(out_dir=str(out), inputs=[str(SAMPLE / "en.jsonl")], vocab_size=400, tokenizer_bytes=200_000,
                  batch_size=8, seq_len=64, max_steps=60, lr=1e-2, eval_interval=30, eval_batches=4,
                  sample_tokens=8, device="cpu", sft_steps=0)
    return RunConfig(**{**fields, **changes})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cfg = small(tmp_path_factory.mktemp("run") / "tiny")
    return cfg, run(cfg)


def test_every_stage_runs_and_the_model_beats_the_unigram_baseline(finished):
    """Criterion: val loss below the unigram loss (context is learned) and far below ln V."""
    cfg, report = finished
    assert report.val_loss < report.unigram_loss
    assert report.val_loss < report.uniform_loss - 1.0
    out = Path(cfg.out_dir)
    assert load_model(out / "model").num_parameters() == report.params
    assert (out / "model" / "loss.png").is_file() and (out / "report.json").is_file()
    assert set(report.samples) and all(s.startswith(p) for p, s in report.samples.items())
    assert json.loads((out / "stages.json").read_text()).keys() == {"tokenizer", "data"}


def test_compression_stage_measures_every_method(finished):
    """Stage 10: the pretrained model quantized by each default method, measured on stage 5's windows (the fp32 row
    is stage 5's val loss); int8 barely moves it, the 4-bit grids store ~4.3 bits per weight."""
    _, report = finished
    rows = {r["method"]: r for r in report.compression}
    assert list(rows) == ["fp32", "int8", "rtn", "gptq", "awq", "nf4"]
    assert rows["fp32"]["val_loss"] == pytest.approx(report.val_loss, abs=1e-6)
    assert abs(rows["int8"]["val_loss"] - report.val_loss) < 0.01
    for name in ("rtn", "gptq", "awq", "nf4"):
        assert 4.0 < rows[name]["bits_per_weight"] < 4.6 and rows[name]["val_loss"] < report.uniform_loss
    from rich.console import Console

    from llmlab.cli.run_cmd import compression_table

    console = Console(record=True, width=140)
    console.print(compression_table(report))
    text = console.export_text()
    assert "4-bit g128" in text and f"{rows['gptq']['ppl']:.2f}" in text


def test_rerun_reuses_finished_stages(finished):
    cfg, report = finished
    again = run(cfg)
    assert again.reused == ["tokenizer", "data", "pretrain"]
    assert again.val_loss == pytest.approx(report.val_loss, abs=1e-6)


def test_rerun_with_other_settings_is_a_user_error(finished):
    cfg, _ = finished
    with pytest.raises(LlmlabError, match="other settings"):
        run(RunConfig(**{**cfg.__dict__, "vocab_size": 500}))


def test_post_training_stages_run_measure_every_model_and_are_reused(tmp_path):
    """SFT -> DPO and SFT -> GRPO in a few steps each: every model is measured on the same held-out tasks and pairs,
    and a rerun reuses all three (whether each stage improves is measured by `make run`, see the README)."""
    cfg = small(tmp_path / "post", seq_len=128, max_steps=20, sft_examples=200, sft_steps=6, pref_pairs=100,
                dpo_steps=3, grpo_steps=2, posttrain_eval=12, compress_methods=())
    report = run(cfg)
    assert [r["stage"] for r in report.posttrain] == ["base", "SFT", "SFT + DPO", "SFT + GRPO"]
    for row in report.posttrain:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["sampled_accuracy"] <= 1 and 0 <= row["pref_accuracy"] <= 1
        assert row["n"] > 0 and row["pref_pairs"] > 0
    out = Path(cfg.out_dir)
    for stage in ("sft", "dpo", "grpo"):
        assert load_model(out / stage).num_parameters() == report.params
    again = run(cfg)
    assert again.reused == ["tokenizer", "data", "pretrain", "sft", "dpo", "grpo"]
    assert [r["accuracy"] for r in again.posttrain] == [r["accuracy"] for r in report.posttrain]


def test_unknown_compress_method_is_a_user_error_before_any_stage(tmp_path):
    with pytest.raises(LlmlabError, match="compress method 'int3'"):
        run(small(tmp_path / "r", compress_methods=("int8", "int3")))
    assert not (tmp_path / "r").exists()


def test_missing_input_is_a_user_error(tmp_path):
    with pytest.raises(LlmlabError, match="not found"):
        run(small(tmp_path / "r", inputs=[str(tmp_path / "nope.jsonl")]))

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
                  sample_tokens=8, device="cpu")
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


def test_rerun_reuses_finished_stages(finished):
    cfg, report = finished
    again = run(cfg)
    assert again.reused == ["tokenizer", "data", "pretrain"]
    assert again.val_loss == pytest.approx(report.val_loss, abs=1e-6)


def test_rerun_with_other_settings_is_a_user_error(finished):
    cfg, _ = finished
    with pytest.raises(LlmlabError, match="other settings"):
        run(RunConfig(**{**cfg.__dict__, "vocab_size": 500}))


def test_missing_input_is_a_user_error(tmp_path):
    with pytest.raises(LlmlabError, match="not found"):
        run(small(tmp_path / "r", inputs=[str(tmp_path / "nope.jsonl")]))

"""The main job (`llmlab run`) on the tiny preset: it runs on real text and the model visibly learns."""

import math

import pytest

from llmlab.errors import LlmlabError
from llmlab.model.io import load_model
from llmlab.pipeline import run


def test_tiny_run_learns_and_saves(tmp_path):
    """60 AdamW steps on the Sonnets: validation loss drops well below ln(V), the untrained model's loss."""
    report = run(size="tiny", steps=60, batch=8, seq_len=64, out_dir=tmp_path / "run")
    assert abs(report.initial_val_loss - report.uniform_loss) < 0.3  # small init: close to uniform
    assert report.final_val_loss < report.initial_val_loss - 1.5
    assert report.params == load_model(tmp_path / "run").num_parameters()
    assert report.train_flops_per_token > 6 * report.non_embedding_params


@pytest.mark.parametrize("style", ["gpt2", "bert", "mistral", "qwen2"])
def test_every_style_trains(style, tmp_path):
    """Each family style, including the masked-LM encoder, takes steps and its loss goes down."""
    report = run(size="tiny", style=style, steps=25, batch=4, seq_len=32, out_dir=None)
    assert math.isfinite(report.final_val_loss)
    assert report.final_val_loss < report.initial_val_loss - 0.5


def test_seq_len_beyond_preset_is_a_user_error():
    with pytest.raises(LlmlabError, match="max_seq_len"):
        run(size="tiny", seq_len=10_000, steps=0)

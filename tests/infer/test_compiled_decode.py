"""generate(compile=True): decode steps as one torch.compile'd graph over a fixed-capacity cache.

Reference: the eager `generate` (itself equal to HF `generate`, tests/infer/test_generate.py) on the same random
model and prompt: identical tokens, greedy and sampled (same seed), with and without left padding, and past
max_seq_len (where the context slides and is re-prefilled). Per-step log-probs agree to fp32 tolerance
(atol 1e-5): attending over the whole capacity with masked keys sums in another order than over a slice.
Graph breaks and graphs: torch._dynamo's own counters, from a fresh start (the `dynamo_counters` fixture).
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch
from torch.testing import assert_close

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.generate import generate, stream
from llmlab.infer.sampling import SamplingParams
from llmlab.model.presets import preset
from llmlab.model.transformer import Transformer

V = 64


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=V, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=24,
                 init_std=0.2)  # large weights: peaked, input-dependent distributions
    return Transformer(cfg).eval()


def prompt(b: int, t: int) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(1))


# learned and sinusoidal positions once read max(position_ids) on the host: a graph break (an item() call), and a
# new graph at each step, the max being a new Python int every time
POSITION_CONFIGS = {
    "learned": dict(style="gpt2"),
    "sinusoidal": dict(style="gpt2", position="sinusoidal"),
    "alibi": dict(position="alibi"),
    "rope": dict(),
}


@pytest.mark.parametrize("position", list(POSITION_CONFIGS))
def test_compiled_decode_is_one_graph_for_every_position_encoding(position, dynamo_counters):
    """Greedy tokens equal eager; all decode steps run one graph: no graph break, no recompilation."""
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=V, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=24, init_std=0.2,
                 **POSITION_CONFIGS[position])
    model = Transformer(cfg).eval()
    assert model.cfg.position == position
    ids = prompt(1, 6)
    eager = generate(model, ids, 10, temperature=0.0)
    assert torch.equal(generate(model, ids, 10, temperature=0.0, compile=True), eager)
    assert dict(dynamo_counters["graph_break"]) == {}
    assert dynamo_counters["stats"]["unique_graphs"] == 1


def test_compile_is_opt_in():
    assert inspect.signature(generate).parameters["compile"].default is False
    assert inspect.signature(stream).parameters["compile"].default is False


@pytest.mark.parametrize("sampled", [False, True])
def test_compiled_tokens_equal_eager(model, sampled):
    ids = prompt(1, 6)
    kw = dict(temperature=0.8, top_k=20, seed=3) if sampled else dict(temperature=0.0)
    eager = generate(model, ids, 10, **kw)
    compiled = generate(model, ids, 10, compile=True, **kw)
    assert torch.equal(compiled, eager)


def test_compiled_left_padding_and_logprobs_equal_eager(model):
    ids = prompt(2, 6)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # row 0 is left-padded
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    eager = list(stream(model, ids, params, attention_mask=mask))
    compiled = list(stream(model, ids, params, attention_mask=mask, compile=True))
    assert torch.equal(torch.stack([s.tokens for s in compiled]), torch.stack([s.tokens for s in eager]))
    for c, e in zip(compiled, eager, strict=True):
        assert_close(c.logprobs, e.logprobs, atol=1e-5, rtol=1.3e-6)


def test_compiled_past_max_seq_len_equal_eager(model):
    ids = prompt(1, 20)  # 20 + 10 > max_seq_len = 24: the context slides and is re-prefilled
    assert torch.equal(generate(model, ids, 10, temperature=0.0, compile=True),
                       generate(model, ids, 10, temperature=0.0))


def test_compile_failure_is_a_clear_error(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    module = importlib.import_module("llmlab.infer.generate")  # llmlab.infer.generate is also the function
    monkeypatch.setattr(module, "_compiled_decode_step", broken)
    with pytest.raises(LlmlabError, match="compile=True.*compile=False"):
        generate(model, prompt(1, 4), 3, temperature=0.0, compile=True)


def test_compile_rejects_sliding_window():
    cfg = preset("tiny", vocab_size=V, n_layers=1, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=24,
                 sliding_window=4)
    with pytest.raises(ConfigError, match="sliding_window"):
        generate(Transformer(cfg), prompt(1, 4), 3, temperature=0.0, compile=True)

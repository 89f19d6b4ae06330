"""generate(): the plain (no KV cache) sampler used for samples during training.

References: greedy decoding equals a hand-written loop taking argmax of model(ids)[:, -1]; top_k=1 equals greedy;
sampling with a seeded generator is reproducible and draws from softmax(logits / temperature), checked against
torch.multinomial on the same probabilities and generator. Shapes: (B, T) -> (B, T + n), the prompt kept.
"""

from __future__ import annotations

import pytest
import torch

from llmlab.errors import LlmlabError
from llmlab.infer import generate
from llmlab.model.presets import preset
from llmlab.model.transformer import Transformer

V = 50


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=V, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=16,
                 init_std=0.2)  # large weights: peaked, input-dependent distributions
    return Transformer(cfg).train()


def prompt(b: int = 2, t: int = 5) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(1))


def test_shape_and_prompt_kept(model):
    x = prompt()
    out = generate(model, x, 7, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 12) and out.dtype == torch.long
    assert torch.equal(out[:, :5], x)
    assert ((out >= 0) & (out < V)).all()
    assert model.training  # put back in the mode it was in


def test_seeded_sampling_is_reproducible(model):
    a = generate(model, prompt(), 10, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(7))
    b = generate(model, prompt(), 10, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(7))
    c = generate(model, prompt(), 10, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_greedy_equals_argmax_loop_past_max_seq_len(model):
    """20 new tokens from a 5-token prompt run past max_seq_len=16: the context is cropped to the last 16 tokens."""
    ids = prompt()
    model.eval()
    with torch.no_grad():
        for _ in range(20):
            ids = torch.cat([ids, model(ids[:, -16:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    model.train()
    assert torch.equal(generate(model, prompt(), 20, temperature=0.0), ids)
    assert torch.equal(generate(model, prompt(), 20, top_k=1, generator=torch.Generator().manual_seed(0)), ids)


def test_one_sampled_token_matches_multinomial(model):
    x = prompt()
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(x)[:, -1] / 0.7, dim=-1)
    expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3))
    out = generate(model, x, 1, temperature=0.7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out[:, -1:], expected)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": -1}, "max_new_tokens"), ({"temperature": -0.5}, "temperature"), ({"top_k": 0}, "top_k"),
])
def test_bad_arguments(model, kwargs, message):
    with pytest.raises(LlmlabError, match=message):
        generate(model, prompt(), **{"max_new_tokens": 2, **kwargs})
    with pytest.raises(LlmlabError, match="input_ids"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)

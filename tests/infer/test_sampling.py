"""Logits transforms against HF transformers 5.24's logits processors, penalties against their closed forms.

References: `RepetitionPenaltyLogitsProcessor` (incl. `prompt_ignore_length` for left padding, as `generate`
uses it), `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`, `MinPLogitsWarper`, and a
`LogitsProcessorList` in `generate`'s order, on random logits with many ties (rounded to 0.5): the same
positions masked to -inf and exactly equal values elsewhere (torch.equal: the same float ops). Frequency and
presence penalties: a per-token loop over the OpenAI formula (exact). `sample`: HF's softmax + one
torch.multinomial draw under the same seed (identical tokens).
"""

from __future__ import annotations

import json

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.infer.sampling import (
    SamplingParams,
    apply_frequency_presence_penalty,
    apply_repetition_penalty,
    apply_temperature,
    min_p_filter,
    process_logits,
    sample,
    top_k_filter,
    top_p_filter,
)

tf = pytest.importorskip("transformers")
from transformers.generation import logits_process as lp  # noqa: E402

V = 40


def random_logits(seed: int = 0, b: int = 6) -> torch.Tensor:
    """(b, V) logits with many exact ties (values on a 0.5 grid), one row all equal, one very peaked."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.round(2 * torch.randn(b, V, generator=g) * 1.5) / 2
    logits[1] = 0.25  # a flat row: every token tied
    logits[2, 7] = 12.0  # one token holds nearly all the mass
    return logits


def history(seed: int = 0, b: int = 6, t: int = 12) -> torch.Tensor:
    """(b, t) token ids with repeats."""
    return torch.randint(0, V // 2, (b, t), generator=torch.Generator().manual_seed(seed + 100))


def assert_same(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Same positions at -inf, equal values elsewhere."""
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("k", [1, 3, 10, V, V + 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_equals_hf(k, seed):
    logits = random_logits(seed)
    assert_same(top_k_filter(logits, k), lp.TopKLogitsWarper(k)(None, logits.clone()))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 0.95, 0.999, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_top_p_equals_hf(p, seed):
    logits = random_logits(seed)
    assert_same(top_p_filter(logits, p), lp.TopPLogitsWarper(p)(None, logits.clone()))


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_min_p_equals_hf(min_p, seed):
    logits = random_logits(seed)
    assert_same(min_p_filter(logits, min_p), lp.MinPLogitsWarper(min_p)(None, logits.clone()))


@pytest.mark.parametrize("t", [0.3, 1.0, 1.7])
def test_temperature_equals_hf(t):
    logits = random_logits()
    assert_same(apply_temperature(logits, t), lp.TemperatureLogitsWarper(t)(None, logits.clone()))


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty_equals_hf(penalty):
    logits, ids = random_logits(), history()
    assert_same(apply_repetition_penalty(logits, ids, penalty),
                lp.RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone()))


def test_repetition_penalty_skips_left_padding_as_hf_generate():
    """HF 5.24 `generate` passes prompt_ignore_length = the number of leading pads; ours takes the mask."""
    logits, ids = random_logits(), history()
    mask = torch.ones_like(ids)
    n_pads = torch.tensor([0, 3, 5, 11, 1, 0])
    for row, n in enumerate(n_pads.tolist()):
        mask[row, :n] = 0
    ref = lp.RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=n_pads)(ids, logits.clone())
    assert_same(apply_repetition_penalty(logits, ids, 1.5, attention_mask=mask), ref)
    assert not torch.equal(ref, apply_repetition_penalty(logits, ids, 1.5))  # the padding made a difference


@pytest.mark.parametrize("frequency, presence", [(0.5, 0.0), (0.0, 1.0), (0.7, -0.4), (-1.0, 2.0)])
def test_frequency_presence_closed_form(frequency, presence):
    """logits[j] -= frequency * c[j] + presence * (c[j] > 0), c[j] = count of j (OpenAI API docs)."""
    logits, ids = random_logits(), history()
    expected = logits.clone()
    for row in range(ids.shape[0]):
        for token in set(ids[row].tolist()):
            count = ids[row].tolist().count(token)
            expected[row, token] -= frequency * count + presence * 1.0
    torch.testing.assert_close(apply_frequency_presence_penalty(logits, ids, frequency, presence), expected,
                               atol=1e-6, rtol=0)


def test_process_logits_equals_hf_processor_list_in_generate_order():
    """repetition penalty -> temperature -> top-k -> top-p -> min-p, as `_get_logits_processor` builds them."""
    params = SamplingParams(temperature=0.8, top_k=12, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    hf = tf.LogitsProcessorList([lp.RepetitionPenaltyLogitsProcessor(1.3), lp.TemperatureLogitsWarper(0.8),
                                 lp.TopKLogitsWarper(12), lp.TopPLogitsWarper(0.9), lp.MinPLogitsWarper(0.05)])
    for seed in range(4):
        logits, ids = random_logits(seed), history(seed)
        assert_same(process_logits(logits, ids, params), hf(ids, logits.clone()))


def test_process_logits_greedy_keeps_the_argmax():
    """temperature 0 applies only the penalties; the filters could not move the argmax anyway."""
    logits, ids = random_logits(), history()
    greedy = process_logits(logits, ids, SamplingParams(temperature=0, repetition_penalty=1.3, top_k=2))
    assert_same(greedy, apply_repetition_penalty(logits, ids, 1.3))


def test_frequency_presence_count_generated_tokens_only():
    logits, ids = random_logits(), history()
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)
    expected = apply_frequency_presence_penalty(logits, ids[:, 5:], 0.5, 0.25)
    assert_same(process_logits(logits, ids, params, n_prompt=5), expected)


def test_sample_equals_hf_multinomial_draw():
    """HF `_sample`: probs = softmax(scores); torch.multinomial(probs, num_samples=1).squeeze(1), global RNG."""
    scores = top_k_filter(random_logits(), 5)
    torch.manual_seed(11)
    expected = [torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1) for _ in range(5)]
    torch.manual_seed(11)
    assert all(torch.equal(sample(scores), e) for e in expected)
    g = torch.Generator().manual_seed(11)  # a generator seeded alike draws the same stream
    assert all(torch.equal(sample(scores, g), e) for e in expected)
    assert (torch.isfinite(scores.gather(1, expected[0][:, None]))).all()  # never a filtered token


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("top_k", 0), ("top_p", 1.5), ("min_p", -0.1), ("repetition_penalty", 0.0),
    ("frequency_penalty", 2.5), ("presence_penalty", -3.0), ("max_new_tokens", -1), ("stop_token_ids", [-2]),
    ("stop_strings", [""]), ("seed", 1.5),
])
def test_bad_params_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"^{field}="):
        SamplingParams(**{field: value})


def test_params_json_round_trip():
    params = SamplingParams(temperature=0.5, top_p=0.9, stop_token_ids=(3, 4), stop_strings=("\n\n",), seed=3)
    assert SamplingParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    with pytest.raises(ConfigError, match="top_q"):
        SamplingParams.from_dict({"top_q": 0.9})

"""Beam search against HF transformers 5.24 `generate(num_beams=n, do_sample=False, ...)`.

Reference: random-weight Llama and GPT-2 (tests/infer/hf_models.py) loaded into llmlab; HF's `sequences` must
equal ours token for token (same length, same pad filling) and `sequences_scores` match at fp32 atol 1e-5,
rtol 0 (the two models' logits differ by ~1e-6). The grid covers num_beams 2-4, num_return_sequences 1 and
num_beams, length_penalty 0.5/1/2 and early_stopping True/False/"never", on a left-padded batch of two
prompts, with an eos the beams do generate (asserted).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.testing import assert_close

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.beam import beam_search
from tests.infer.hf_models import BEAM_EOS, N_PROMPT, hf_and_ours, prompts

tf = pytest.importorskip("transformers")

NEW = 10
PAD = 1
SCORES = {"atol": 1e-5, "rtol": 0.0}
GRID = [(nb, nrs, lp, es) for nb, lp, es in itertools.product([2, 3, 4], [0.5, 1.0, 2.0], [True, False])
        for nrs in sorted({1, nb})] + [(3, 3, 2.0, "never"), (4, 2, 0.5, "never")]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """name -> (HF model, llmlab model), built once per module."""
    return {name: hf_and_ours(name, tmp_path_factory.mktemp(name)) for name in ("llama", "gpt2")}


def both(pair, ids, mask, nb, nrs, lp, es, eos):
    hf, ours = pair
    mask = mask if mask is not None else torch.ones_like(ids)  # else HF masks prompt tokens equal to PAD
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, num_beams=nb, do_sample=False,
                           num_return_sequences=nrs, length_penalty=lp, early_stopping=es, eos_token_id=eos,
                           pad_token_id=PAD, return_dict_in_generate=True, output_scores=True)
    out = beam_search(ours, ids, nb, NEW, num_return_sequences=nrs, length_penalty=lp, early_stopping=es,
                      eos_token_id=eos, pad_token_id=PAD, attention_mask=mask)
    return expected, out


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_beam_search_equals_hf(pairs, name):
    """The whole grid on one model; also shows the options matter: early stopping and length penalty change
    some results, and eos ends some returned hypotheses before max_new_tokens."""
    ids, mask = prompts(padded=True, batch=2)
    eos = BEAM_EOS[name]
    results = {}
    for nb, nrs, lp, es in GRID:
        expected, out = both(pairs[name], ids, mask, nb, nrs, lp, es, eos)
        case = f"num_beams={nb} num_return_sequences={nrs} length_penalty={lp} early_stopping={es}"
        assert out.sequences.shape == expected.sequences.shape, case
        assert torch.equal(out.sequences, expected.sequences), case
        assert_close(out.scores, expected.sequences_scores, **SCORES, msg=case)
        results[nb, nrs, lp, es] = out
    ended = [bool((r.sequences[:, N_PROMPT:-1] == eos).any()) for r in results.values()]
    assert sum(ended) >= len(GRID) // 4  # eos is generated, before the last step, in many cases
    assert any(not torch.equal(results[k[:3] + (True,)].scores, results[k[:3] + (False,)].scores)
               for k in results if k[3] is True)
    assert any(not torch.equal(results[k].sequences, results[k[:2] + (2.0, k[3])].sequences)
               for k in results if k[2] == 0.5 and k[3] != "never")


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_beam_search_without_eos_or_padding_equals_hf(pairs, name):
    """No eos: every hypothesis runs to max_new_tokens; scores are sum log-probs / NEW ** length_penalty."""
    ids, _ = prompts(padded=False, batch=2)
    expected, out = both(pairs[name], ids, None, 3, 3, 1.0, False, None)
    assert torch.equal(out.sequences, expected.sequences)
    assert out.sequences.shape == (6, N_PROMPT + NEW)
    assert_close(out.scores, expected.sequences_scores, **SCORES)


def test_scores_are_length_normalised_log_probs(pairs):
    """score = sum over generated tokens of log p(token | prefix) / n_generated ** length_penalty (eos counted)."""
    _, ours = pairs["gpt2"]
    ids, _ = prompts(padded=False, batch=1)
    eos = BEAM_EOS["gpt2"]
    out = beam_search(ours, ids, 3, NEW, num_return_sequences=3, length_penalty=2.0, eos_token_id=eos,
                      pad_token_id=PAD)
    for seq, score in zip(out.sequences, out.scores, strict=True):
        gen = seq[N_PROMPT:].tolist()
        n = gen.index(eos) + 1 if eos in gen else len(gen)
        with torch.no_grad():
            logprobs = torch.log_softmax(ours(seq[None, :N_PROMPT + n])[0, N_PROMPT - 1:-1].float(), dim=-1)
        total = logprobs.gather(1, seq[N_PROMPT:N_PROMPT + n, None]).sum()
        assert_close(score, total / n ** 2.0, **SCORES)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_beams": 0}, "num_beams"), ({"num_return_sequences": 4}, "num_return_sequences"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"early_stopping": "sometimes"}, "early_stopping"),
    ({"max_new_tokens": 5000}, "max_seq_len"),
])
def test_bad_arguments(pairs, kwargs, message):
    _, ours = pairs["llama"]
    ids, _ = prompts(padded=False, batch=1)
    with pytest.raises(LlmlabError, match=message):
        beam_search(ours, ids, **{"num_beams": 3, "max_new_tokens": 4, **kwargs})
    with pytest.raises(ConfigError):
        beam_search(ours, ids, 2, 4, num_return_sequences=0)

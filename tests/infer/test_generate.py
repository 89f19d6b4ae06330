"""generate() / stream(): KV-cached decoding against HF `generate` and against uncached recomputation.

References:
- HF transformers 5.24 `generate` on random-weight Llama and GPT-2 (tests/infer/hf_models.py), loaded into llmlab
  with `load_model`: greedy (`do_sample=False`) and sampled (`do_sample=True`, same `torch.manual_seed` before
  each) generations give identical tokens, with and without left padding, with an eos that some rows generate.
- Uncached recomputation: the full sequence through the model at every step (positions from the mask), then the
  same processing and draw: identical tokens, and per-step log-probs equal at fp32 defaults (atol 1e-5,
  rtol 1.3e-6).
- The plain loop the training samples used to run: argmax of model(last max_seq_len tokens), past max_seq_len.
- Stop token ids and stop strings (a toy one-letter-per-token decode): stop at the step the stop completes.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer import generate
from llmlab.infer.generate import stream, truncate_at_stop
from llmlab.infer.sampling import SamplingParams, process_logits, sample
from llmlab.model.presets import preset
from llmlab.model.transformer import Transformer
from tests.infer.hf_models import N_PROMPT, hf_and_ours, prompts

tf = pytest.importorskip("transformers")

V = 50
NEW = 12


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=V, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=16,
                 init_std=0.2)  # large weights: peaked, input-dependent distributions
    return Transformer(cfg).train()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """name -> (HF model, llmlab model), built once per module."""
    return {name: hf_and_ours(name, tmp_path_factory.mktemp(name)) for name in ("llama", "gpt2")}


def prompt(b: int = 2, t: int = 5) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(1))


def hf_generate(hf, ids, mask, seed=None, **kw):
    if seed is not None:
        torch.manual_seed(seed)
    return hf.generate(ids, attention_mask=mask if mask is not None else torch.ones_like(ids),
                       max_new_tokens=NEW, **kw)


# --- the training-sample API: shapes, seeds, the argmax loop


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
    d = generate(model, prompt(), 10, temperature=1.0, top_k=20, seed=7)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(a, d)


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
    ({"top_p": 2.0}, "top_p"), ({"top_q": 0.5}, "top_q"), ({"stop_strings": ("x",)}, "decode="),
])
def test_bad_arguments(model, kwargs, message):
    with pytest.raises(LlmlabError, match=message):
        generate(model, prompt(), **{"max_new_tokens": 2, **kwargs})
    with pytest.raises(LlmlabError, match="input_ids"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)


def test_stream_checks_arguments_before_the_first_step(model):
    with pytest.raises(ConfigError, match="decode="):
        stream(model, prompt(), SamplingParams(stop_strings=("ab",)))


# --- HF generate


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("padded", [False, True])
def test_greedy_equals_hf(pairs, name, padded):
    """eos = the token row 0 generates at step 3: row 0 stops there, the others go on (pads after eos)."""
    hf, ours = pairs[name]
    ids, mask = prompts(padded)
    free = hf_generate(hf, ids, mask, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(generate(ours, ids, NEW, temperature=0, attention_mask=mask), free)
    eos = int(free[0, N_PROMPT + 3])
    expected = hf_generate(hf, ids, mask, do_sample=False, eos_token_id=eos, pad_token_id=1)
    out = generate(ours, ids, NEW, temperature=0, attention_mask=mask, eos_token_id=eos, pad_token_id=1)
    assert torch.equal(out, expected)
    assert (out[0, N_PROMPT + 4:] == 1).all() and not (out[1:, N_PROMPT:] == 1).all()


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("sampling", [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=20, top_p=0.8),
    dict(temperature=1.3, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
    dict(temperature=0.9, top_k=5, repetition_penalty=0.8),
])
def test_sampling_equals_hf_with_same_seed(pairs, name, padded, sampling):
    """Same torch.manual_seed before each: HF draws one torch.multinomial (B, V) per step, as we do."""
    hf, ours = pairs[name]
    ids, mask = prompts(padded)
    hf_kw = {"top_k": 0, **sampling}  # HF's default top_k is 50: off unless asked
    for seed in range(3):
        expected = hf_generate(hf, ids, mask, seed, do_sample=True, eos_token_id=None, pad_token_id=0, **hf_kw)
        torch.manual_seed(seed)
        assert torch.equal(generate(ours, ids, NEW, attention_mask=mask, **sampling), expected)
        assert torch.equal(generate(ours, ids, NEW, attention_mask=mask, seed=seed, **sampling), expected)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_sampling_with_eos_equals_hf(pairs, name):
    """eos = the most frequent sampled token: rows stop at different steps; finished rows get pad tokens."""
    hf, ours = pairs[name]
    ids, mask = prompts(padded=True)
    free = hf_generate(hf, ids, mask, 0, do_sample=True, top_k=0, eos_token_id=None, pad_token_id=0)
    eos = int(free[:, N_PROMPT:].flatten().mode().values)
    expected = hf_generate(hf, ids, mask, 0, do_sample=True, top_k=0, eos_token_id=eos, pad_token_id=1)
    torch.manual_seed(0)
    out = generate(ours, ids, NEW, attention_mask=mask, eos_token_id=eos, pad_token_id=1)
    assert torch.equal(out, expected)
    assert (out[:, N_PROMPT:] == eos).any(dim=1).sum() >= 2


# --- the KV cache against recomputation


@torch.no_grad()
def uncached(model, ids, mask, params, n_new, generator):
    """The reference loop: the whole sequence through the model each step, no cache; returns tokens, logprobs."""
    n_prompt, steps = ids.shape[1], []
    for _ in range(n_new):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(ids, attention_mask=mask, position_ids=pos)[:, -1].float()
        scores = process_logits(logits, ids, params, attention_mask=mask, n_prompt=n_prompt)
        token = scores.argmax(-1) if params.greedy else sample(scores, generator)
        steps.append(torch.log_softmax(logits, -1))
        ids, mask = torch.cat([ids, token[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return ids, steps


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_new_tokens=NEW, repetition_penalty=1.2),
    SamplingParams(temperature=0.8, top_p=0.9, frequency_penalty=0.5, presence_penalty=0.3, max_new_tokens=NEW),
])
def test_cached_equals_uncached_recomputation(pairs, name, params):
    _, ours = pairs[name]
    ids, mask = prompts(padded=True)
    expected, ref_logprobs = uncached(ours, ids, mask, params, NEW, torch.Generator().manual_seed(4))
    steps = list(stream(ours, ids, params, attention_mask=mask, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(torch.cat([ids] + [s.tokens[:, None] for s in steps], dim=1), expected)
    for step, ref in zip(steps, ref_logprobs, strict=True):
        assert_close(step.logprobs, ref)


@torch.no_grad()
def test_frequency_presence_penalise_generated_tokens_only(pairs):
    """Greedy with penalties equals a loop over the OpenAI formula with counts over the generated tokens."""
    _, ours = pairs["llama"]
    ids, _ = prompts(padded=False)
    expected = ids
    for _ in range(NEW):
        counts = torch.stack([torch.bincount(row, minlength=97) for row in expected[:, N_PROMPT:]]).float()
        logits = ours(expected)[:, -1] - 0.6 * counts - 0.9 * (counts > 0).float()
        expected = torch.cat([expected, logits.argmax(-1, keepdim=True)], dim=1)
    out = generate(ours, ids, NEW, temperature=0, frequency_penalty=0.6, presence_penalty=0.9)
    assert torch.equal(out, expected)
    assert not torch.equal(out, generate(ours, ids, NEW, temperature=0))


# --- stopping and streaming


def letters(ids: list[int]) -> str:
    """A toy decode: one letter per token."""
    return "".join(chr(ord("a") + i % 26) for i in ids)


def test_stop_token_ids_and_stream_steps(pairs):
    _, ours = pairs["gpt2"]
    ids, mask = prompts(padded=True)
    free = generate(ours, ids, NEW, temperature=0, attention_mask=mask)
    stop = int(free[1, N_PROMPT + 2])
    params = SamplingParams(temperature=0, max_new_tokens=NEW, stop_token_ids=(stop,))
    steps = list(stream(ours, ids, params, attention_mask=mask, pad_token_id=0))
    first = (free[1, N_PROMPT:] == stop).nonzero()[0].item()  # row 1 stops at its first `stop`, at step <= 2
    assert steps[first].done[1] and (first == 0 or not steps[first - 1].done[1])
    assert all(s.tokens[1] == 0 for s in steps[first + 1:])
    assert steps[0].logprobs.shape == (3, 97) and steps[0].tokens.shape == (3,)
    out = generate(ours, ids, NEW, temperature=0, attention_mask=mask, stop_token_ids=(stop,), pad_token_id=0)
    assert torch.equal(out, torch.cat([ids] + [s.tokens[:, None] for s in steps], dim=1))


def test_stop_string_spanning_tokens(pairs):
    """The stop string is the letters of generated tokens 3 and 4 of row 0: row 0 stops at the step of its
    first occurrence (found in text, not tokens), the text is cut before it; other rows go on."""
    _, ours = pairs["llama"]
    ids, _ = prompts(padded=False)
    free = generate(ours, ids, NEW, temperature=0)
    text0 = letters(free[0, N_PROMPT:].tolist())
    stop = text0[3:5]
    end = text0.index(stop) + len(stop)  # one letter per token: the step that completes the first occurrence
    steps = list(stream(ours, ids, SamplingParams(temperature=0, max_new_tokens=NEW, stop_strings=(stop,)),
                        decode=letters))
    done_at = [bool(s.done[0]) for s in steps].index(True)
    assert done_at == end - 1
    generated = [int(s.tokens[0]) for s in steps[:done_at + 1]]
    assert generated == free[0, N_PROMPT:N_PROMPT + end].tolist()
    assert truncate_at_stop(letters(generated), [stop]) == text0[:end - len(stop)]
    assert truncate_at_stop("no stop here", ["zz", "q"]) == "no stop here"
    assert truncate_at_stop("abcXYdefXY", ["def", "XY"]) == "abc"

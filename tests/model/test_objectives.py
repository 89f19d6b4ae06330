"""Pretraining objectives: BERT masking statistics and the causal LM loss.

References: Devlin et al. 2019's recipe (15% chosen; of those 80% [MASK], 10% random, 10% unchanged) checked with
5-sigma binomial bounds on 65,536 tokens at a fixed seed; `F.cross_entropy` on shifted logits for the next-token
loss (fp64, atol = rtol = 1e-12).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from llmlab.model.config import TransformerConfig
from llmlab.model.loss import next_token_loss
from llmlab.model.objectives import lm_loss, mask_tokens
from llmlab.model.transformer import Transformer

V = 100
MASK_ID = V  # outside the token range, so a masked position is recognisable
FP64 = {"atol": 1e-12, "rtol": 1e-12}


def within(observed: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """observed successes out of n within `sigmas` binomial standard deviations of n p."""
    return abs(observed - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def masked():
    x = torch.randint(0, V, (64, 1024), generator=torch.Generator().manual_seed(0))
    inputs, labels = mask_tokens(x, MASK_ID, V, torch.Generator().manual_seed(1))
    return x, inputs, labels


def test_about_15_percent_chosen(masked):
    x, _, labels = masked
    chosen = labels != -100
    assert within(int(chosen.sum()), x.numel(), 0.15)


def test_80_10_10_split(masked):
    """Of the chosen: 80% [MASK]; 10% a random id (which equals the original with probability 1/V); 10% unchanged."""
    x, inputs, labels = masked
    chosen = labels != -100
    n = int(chosen.sum())
    is_mask = chosen & (inputs == MASK_ID)
    is_random = chosen & (inputs != MASK_ID) & (inputs != x)
    is_kept = chosen & (inputs == x)
    assert int(is_mask.sum() + is_random.sum() + is_kept.sum()) == n
    assert within(int(is_mask.sum()), n, 0.8)
    assert within(int(is_random.sum()), n, 0.1 * (1 - 1 / V))
    assert within(int(is_kept.sum()), n, 0.1 + 0.1 / V)
    assert ((inputs >= 0) & (inputs < V) | (inputs == MASK_ID)).all()  # random ids are real tokens


def test_labels_and_unchosen_inputs(masked):
    """labels = the original token where chosen, -100 exactly elsewhere; unchosen inputs are untouched."""
    x, inputs, labels = masked
    chosen = labels != -100
    assert torch.equal(labels[chosen], x[chosen])
    assert (labels[~chosen] == -100).all()
    assert torch.equal(inputs[~chosen], x[~chosen])
    assert chosen[inputs != x].all()  # every changed input is a prediction target
    assert inputs.shape == labels.shape == x.shape and inputs.dtype == labels.dtype == x.dtype


def test_masking_is_reproducible_and_rate_is_honoured():
    x = torch.randint(0, V, (32, 512), generator=torch.Generator().manual_seed(0))
    a = mask_tokens(x, MASK_ID, V, torch.Generator().manual_seed(5))
    b = mask_tokens(x, MASK_ID, V, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    _, labels = mask_tokens(x, MASK_ID, V, torch.Generator().manual_seed(6), rate=0.4)
    assert within(int((labels != -100).sum()), x.numel(), 0.4)
    _, labels = mask_tokens(x, MASK_ID, V, torch.Generator().manual_seed(6), rate=0.0)
    assert (labels == -100).all()


def test_next_token_loss_equals_cross_entropy_on_shifted_logits():
    """Reference: F.cross_entropy(logits[:, :-1] flattened, ids[:, 1:] flattened), also with ignored targets."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 17, V, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, V, (3, 17), generator=gen)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    got = next_token_loss(logits, ids)
    assert_close(got, want, **FP64)
    assert_close(torch.autograd.grad(got, logits)[0], torch.autograd.grad(want, logits)[0], **FP64)
    ids[1, 10:] = -100  # padding labelled with ignore_index
    assert_close(next_token_loss(logits, ids),
                 F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1), ignore_index=-100), **FP64)


TINY = dict(vocab_size=V + 1, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=40)


def test_lm_loss_decoder_is_next_token_cross_entropy():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**TINY)).double()
    ids = torch.randint(0, V, (2, 20))
    logits = model(ids)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, V + 1), ids[:, 1:].reshape(-1))
    assert_close(lm_loss(model, ids), want, **FP64)


def test_lm_loss_encoder_is_masked_token_cross_entropy():
    """Reference: F.cross_entropy(model(inputs), labels, ignore_index=-100) with mask_tokens under the same seed."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**TINY, arch="encoder", position="learned")).double()
    ids = torch.randint(0, V, (4, 30))
    inputs, labels = mask_tokens(ids, MASK_ID, V + 1, torch.Generator().manual_seed(3))
    want = F.cross_entropy(model(inputs).reshape(-1, V + 1), labels.reshape(-1), ignore_index=-100)
    assert_close(lm_loss(model, ids, mask_id=MASK_ID, gen=torch.Generator().manual_seed(3)), want, **FP64)
    with pytest.raises(ValueError, match="mask_id"):
        lm_loss(model, ids)

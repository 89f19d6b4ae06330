"""Training tricks that must not change the maths: gradient accumulation, activation checkpointing, bf16 autocast.

References: the plain full-batch run on the same weights. Accumulation: every parameter gradient in float64 at
atol = rtol = 1e-12. Checkpointing: float64, exact (the recomputed forward replays the same ops and the same dropout
masks). bf16 autocast: the fp32 loss at torch.testing's bf16 tolerance (rtol 1.6e-2, atol 1e-5).
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from llmlab.model.loss import cross_entropy, next_token_loss
from llmlab.model.objectives import lm_loss
from llmlab.model.presets import preset
from llmlab.model.transformer import Transformer

FP64 = {"atol": 1e-12, "rtol": 1e-12}
EXACT = {"atol": 0.0, "rtol": 0.0}
V, K, B, T = 64, 4, 2, 16  # K micro-batches of B sequences of T tokens


def tiny_model(dtype: torch.dtype = torch.float64, **overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=V, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64,
                 init_std=0.2, **overrides)  # a large init_std so logits (and their errors) are far from uniform
    return Transformer(cfg).to(dtype)


def tokens(batch: int) -> torch.Tensor:
    return torch.randint(0, V, (batch, T), generator=torch.Generator().manual_seed(1))


def grads(model: Transformer) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


def test_grad_accumulation_equals_full_batch():
    """K micro-batches of B, each loss / K backpropagated, give the gradient of one K*B batch (fp64 1e-12).

    next_token_loss is a mean over tokens. With equal-size micro-batches (same B and T, no ignored targets)
    every micro-batch holds N/K of the N tokens, so mean(all) = (1/K) sum_k mean(micro_k): dividing by K is exact.
    """
    model = tiny_model()
    x = tokens(K * B)
    lm_loss(model, x).backward()
    full = grads(model)
    for micro in x.chunk(K):  # (B, T) each
        (lm_loss(model, micro) / K).backward()  # .grad accumulates (+=) across backward calls
    for g, f in zip(grads(model), full, strict=True):
        assert_close(g, f, **FP64)


def test_grad_accumulation_with_uneven_token_counts_needs_a_global_mean():
    """With ignored targets (padding) the micro-batches hold unequal token counts: loss / K is then wrong.

    Dividing each micro-batch's summed loss by the token count of the whole batch is right (fp64 1e-12).
    """
    model = tiny_model()
    x = tokens(K * B)
    labels = x[:, 1:].clone()  # (K*B, T-1)
    labels[:B, 4:] = -100  # the first micro-batch is mostly padding
    cross_entropy(model(x)[:, :-1], labels).backward()  # mean over the valid targets of the whole batch
    full = grads(model)

    n_valid = (labels != -100).sum()
    for micro, micro_labels in zip(x.chunk(K), labels.chunk(K), strict=True):
        (cross_entropy(model(micro)[:, :-1], micro_labels, reduction="sum") / n_valid).backward()
    for g, f in zip(grads(model), full, strict=True):
        assert_close(g, f, **FP64)

    for micro, micro_labels in zip(x.chunk(K), labels.chunk(K), strict=True):  # the naive mean of means
        (cross_entropy(model(micro)[:, :-1], micro_labels) / K).backward()
    naive = grads(model)
    assert max(((g - f).norm() / f.norm()).item() for g, f in zip(naive, full, strict=True)) > 1e-2


def count_block_calls(model: Transformer) -> list[int]:
    """Wrap each block's forward with a counter (forward hooks do not fire during checkpoint's recompute)."""
    calls = [0]

    def counted(forward):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            return forward(*args, **kwargs)
        return wrapper

    for block in model.blocks:
        block.forward = counted(block.forward)
    return calls


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no-dropout", "dropout"])
def test_activation_checkpointing_gives_identical_gradients(dropout):
    """set_gradient_checkpointing(True) vs the plain run, same seed: loss and every gradient exact in fp64.

    With dropout the recomputation in backward must draw the same masks: torch.utils.checkpoint saves and restores
    the RNG state (preserve_rng_state=True). The call count proves the blocks really ran twice.
    """
    model = tiny_model(dropout=dropout, attn_dropout=dropout).train()
    calls = count_block_calls(model)
    x = tokens(B)
    runs = {}
    for checkpointing in (False, True):
        model.set_gradient_checkpointing(checkpointing)
        calls[0] = 0
        torch.manual_seed(7)
        loss = lm_loss(model, x)
        loss.backward()
        runs[checkpointing] = (loss.detach(), grads(model), calls[0])
    (plain_loss, plain, plain_calls), (ckpt_loss, ckpt, ckpt_calls) = runs[False], runs[True]
    assert (plain_calls, ckpt_calls) == (2, 4)  # 2 blocks: forward only vs forward + recompute in backward
    assert_close(ckpt_loss, plain_loss, **EXACT)
    for g, p in zip(ckpt, plain, strict=True):
        assert_close(g, p, **EXACT)
    if dropout:  # dropout is live: another seed gives other masks, so the equality above is not vacuous
        torch.manual_seed(8)
        assert lm_loss(model, x).item() != plain_loss.item()


def test_bf16_autocast_loss_close_to_fp32():
    """torch.autocast("cpu", bfloat16): the loss equals the fp32 loss within bf16 tolerance (rtol 1.6e-2, atol 1e-5).

    The matmuls really run in bf16 (logits come out bf16, the loss differs from fp32); cross_entropy upcasts
    logits to fp32. Gradients (fp32 parameters) agree to within 5% relative L2 error (about 2% measured).
    """
    model = tiny_model(torch.float32)
    x = tokens(4 * B)
    loss32 = lm_loss(model, x)
    loss32.backward()
    grads32 = grads(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss16 = next_token_loss(logits, x)
    loss16.backward()
    assert logits.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    assert loss16.item() != loss32.item()
    assert_close(loss16, loss32, rtol=1.6e-2, atol=1e-5)
    grads16 = grads(model)
    assert all(g.dtype == torch.float32 for g in grads16)
    flat16, flat32 = (torch.cat([g.flatten() for g in gs]) for gs in (grads16, grads32))
    assert ((flat16 - flat32).norm() / flat32.norm()).item() < 0.05

import math

import torch


def attention(q, k, v, causal=False, key_padding_mask=None):
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    tq, tk = q.shape[-2], k.shape[-2]
    mask = torch.ones(tq, tk, dtype=torch.bool)
    if causal:
        mask = torch.ones(tq, tk, dtype=torch.bool).tril()  # ignores the Tk - Tq offset of decode queries
    mask = mask[None, None]
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :]
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
    return p.masked_fill(~mask, 0.0) @ v

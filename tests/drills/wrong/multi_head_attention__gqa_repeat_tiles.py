import math

import torch


def multi_head_attention(x, wq, wk, wv, wo, n_heads, n_kv_heads, causal=True, key_padding_mask=None):
    b, t, _ = x.shape
    d = wq.shape[0] // n_heads
    q = (x @ wq.T).view(b, t, n_heads, d).transpose(1, 2)
    k = (x @ wk.T).view(b, t, n_kv_heads, d).transpose(1, 2)
    v = (x @ wv.T).view(b, t, n_kv_heads, d).transpose(1, 2)
    rep = n_heads // n_kv_heads
    k, v = k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1)  # tiles heads 0,1,0,1: query head i gets kv head i % Hkv
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    mask = torch.ones(t, t, dtype=torch.bool)
    if causal:
        mask = mask.tril()
    mask = mask[None, None]
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :]
    out = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v
    return out.transpose(1, 2).reshape(b, t, n_heads * d) @ wo.T

import torch


def attention(q, k, v, causal=False, key_padding_mask=None):
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    s = q @ k.transpose(-2, -1)  # missing / sqrt(D)
    tq, tk = q.shape[-2], k.shape[-2]
    mask = torch.ones(tq, tk, dtype=torch.bool)
    if causal:
        mask = torch.arange(tk)[None, :] <= torch.arange(tk - tq, tk)[:, None]
    mask = mask[None, None]
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :]
    p = (s.masked_fill(~mask, float("-inf")) - s.amax(-1, keepdim=True)).exp()
    p = p / p.sum(-1, keepdim=True)
    return p.masked_fill(~mask, 0.0) @ v

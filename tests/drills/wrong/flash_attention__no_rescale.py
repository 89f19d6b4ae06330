import math

import torch


def flash_attention_forward(q, k, v, causal=False, block_q=4, block_k=4):
    tq, tk = q.shape[-2], k.shape[-2]
    scale = 1 / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    for q0 in range(0, tq, block_q):
        q_i = q[..., q0:q0 + block_q, :].float()
        m = torch.full(q_i.shape[:-1], float("-inf"))
        l = torch.zeros_like(m)
        o = torch.zeros_like(q_i)
        for k0 in range(0, tk, block_k):
            s = q_i @ k[..., k0:k0 + block_k, :].float().transpose(-2, -1) * scale
            if causal:
                qp = torch.arange(q0, q0 + q_i.shape[-2])[:, None] + tk - tq
                kp = torch.arange(k0, k0 + s.shape[-1])[None, :]
                s = s.masked_fill(kp > qp, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[..., None])
            l = l + p.sum(-1)  # forgets to rescale l and o by exp(m - m_new)
            o = o + p @ v[..., k0:k0 + block_k, :].float()
            m = m_new
        out[..., q0:q0 + block_q, :] = (o / l[..., None]).to(q.dtype)
    return out

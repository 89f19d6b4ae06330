import torch


def top_k_filter(logits, k):
    k = min(k, logits.shape[-1])
    idx = torch.topk(logits, k, dim=-1).indices  # exactly k: tokens tied with the k-th are dropped
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(1, idx, True)
    return logits.masked_fill(~keep, float("-inf"))

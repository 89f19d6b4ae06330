import torch


def cross_entropy(logits, targets, ignore_index=-100, label_smoothing=0.0, z_loss=0.0):
    x = logits.reshape(-1, logits.shape[-1])
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    t = targets.reshape(-1)
    valid = t != ignore_index
    t = t.masked_fill(~valid, 0)
    lse = torch.logsumexp(x, dim=-1)
    logp = x - lse[:, None]
    nll = -logp.gather(1, t[:, None]).squeeze(1)
    v = x.shape[-1]
    others = (-logp.sum(-1) - nll) / (v - 1)  # eps spread over the V - 1 wrong classes, not all V
    loss = (1 - label_smoothing) * nll + label_smoothing * others + z_loss * lse.square()
    return loss.masked_fill(~valid, 0.0).sum() / valid.sum()

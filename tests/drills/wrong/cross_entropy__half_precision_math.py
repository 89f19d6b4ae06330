import torch


def cross_entropy(logits, targets, ignore_index=-100):
    # log-softmax in the logits' own dtype, cast to float32 only at the end: ~1e-2 off for bf16 logits
    x = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    valid = t != ignore_index
    logp = x - torch.logsumexp(x, dim=-1, keepdim=True)
    nll = -logp.gather(1, t.masked_fill(~valid, 0)[:, None]).squeeze(1)
    return nll.masked_fill(~valid, 0.0).float().sum() / valid.sum()

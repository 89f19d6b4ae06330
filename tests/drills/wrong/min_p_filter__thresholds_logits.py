def min_p_filter(logits, min_p):
    if min_p <= 0:
        return logits
    top = logits.amax(-1, keepdim=True)
    return logits.masked_fill(logits < min_p * top, float("-inf"))  # logits, not probabilities

def accept_and_residual(p, q):
    acc = (p / q).clamp(max=1.0)  # q == 0 gives nan / inf
    r = (p - q).clamp(min=0)
    return acc, r / r.sum(-1, keepdim=True)

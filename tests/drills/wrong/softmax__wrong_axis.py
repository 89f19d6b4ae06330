def softmax(x, dim=-1):
    e = (x - x.amax(0, keepdim=True)).exp()  # always over dim 0
    return e / e.sum(0, keepdim=True)

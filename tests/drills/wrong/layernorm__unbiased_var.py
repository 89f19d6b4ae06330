import torch


def layer_norm(x, weight, bias, eps=1e-5):
    h = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mean = h.mean(-1, keepdim=True)
    var = h.var(-1, keepdim=True)  # unbiased: divides by D - 1
    return ((h - mean) * torch.rsqrt(var + eps) * weight + bias).to(x.dtype)

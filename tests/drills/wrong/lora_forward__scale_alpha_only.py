def lora_forward(x, weight, lora_A, lora_B, alpha, bias=None):
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y + alpha * (x @ lora_A.T @ lora_B.T)  # forgets to divide alpha by the rank r

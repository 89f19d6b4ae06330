import torch.nn.functional as F


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, label_smoothing=0.0):
    z = beta * (chosen - rejected)  # forgets the reference model's log-probs
    return (1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)

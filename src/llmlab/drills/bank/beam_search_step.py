"""One beam-search step: the best k extensions of all beams, by summed log-probability."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.infer.beam import beam_candidates, beam_search

STARTER = '''"""Drill: beam_search_step. Check with `llmlab drill check beam_search_step`."""
import torch
from torch import Tensor


def beam_candidates(logprobs: Tensor, beam_scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """One step of beam search (HF generate, num_beams > 1): extend every beam by every token and keep the k
    best extensions of all beams together, ranked by summed log-prob beam_scores[b, i] + logprobs[b, i, v].

    logprobs: (B, nb, V) float, each beam's next-token log-probs; beam_scores: (B, nb), same dtype, each beam's
    summed log-prob so far (-inf: an unused beam). 1 <= k <= nb * V.
    Returns (scores, beam, token), each (B, k), best first: scores in logprobs' dtype, beam and token int64.
    The order among equal scores is not graded.
    """
    raise NotImplementedError
'''


def _logprobs(g: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Peaked log-probs rounded to multiples of 2^-10: sums are exact in float32, so its ranking is float64's."""
    x = torch.log_softmax(randn(g, *shape, dtype=torch.float64, scale=2.0), dim=-1)
    return ((x * 1024).round() / 1024).to(dtype)


def _scores(g: torch.Generator, b: int, nb: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Running beam scores: sums of a few steps' log-probs, sorted best first as beam search keeps them."""
    x = -(randn(g, b, nb, dtype=torch.float64, scale=3.0).abs() + 1.0)
    return ((x * 1024).round() / 1024).sort(dim=-1, descending=True).values.to(dtype)


def canonical(out):
    """Sort equal scores by (beam, token): torch.topk's order among ties (what HF returns) is unspecified.
    The last item says whether the scores came best first."""
    scores, beam, token = out
    best_first = bool((scores[:, 1:] <= scores[:, :-1]).all())
    order = torch.argsort(token, dim=-1, stable=True)
    order = order.gather(-1, torch.argsort(beam.gather(-1, order), dim=-1, stable=True))
    order = order.gather(-1, torch.argsort(scores.gather(-1, order), dim=-1, descending=True, stable=True))
    return (scores.gather(-1, order), beam.gather(-1, order), token.gather(-1, order),
            "best first" if best_first else "not sorted best first")


def _case(g: torch.Generator, draw, k: int, tags: tuple[str, ...]) -> Case:
    """Redraw until the k-th and (k+1)-th best scores differ: which of two tied candidates makes the cut is
    torch.topk's unspecified choice, so no seed may put a tie there."""
    while True:
        logprobs, beam_scores = draw(g)
        s = (logprobs.double() + beam_scores.double()[..., None]).flatten(1).sort(-1, descending=True).values
        if k == s.shape[1] or (s[:, k - 1] != s[:, k]).all():
            return Case(dict(logprobs=logprobs, beam_scores=beam_scores, k=k), tags)


def examples() -> list[Case]:
    logprobs = torch.tensor([[[-0.5, -1.0, -3.5, -4.0], [-0.25, -2.0, -2.5, -5.0]]])
    return [Case(dict(logprobs=logprobs, beam_scores=torch.tensor([[-1.0, -2.0]]), k=4), ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    v = randint(g, 5, 20)
    first = torch.full((1, 4), float("-inf"))
    first[:, 0] = 0.0  # the first step: only beam 0 is live, as beam_search starts
    behind = torch.tensor([[-0.5, -9.0, -20.0], [-3.0, -3.25, -30.0]])  # a beam's best loses to the leader's 2nd
    f64 = torch.float64
    return [
        _case(g, lambda g: (_logprobs(g, 2, 3, v), _scores(g, 2, 3)), 6, ("random", "batch")),
        _case(g, lambda g: (_logprobs(g, 1, 4, 12), first), 8, ("first-step",)),
        _case(g, lambda g: (_logprobs(g, 3, 1, v), _scores(g, 3, 1)), 2, ("num-beams-1",)),
        _case(g, lambda g: (_logprobs(g, 2, 2, v), _scores(g, 2, 2)), 1, ("k1",)),
        # two beams with the same score and log-probs: every candidate score appears twice, in pairs
        _case(g, lambda g: (_logprobs(g, 1, 1, 6).expand(1, 2, 6).clone(), torch.tensor([[-1.5, -1.5]])), 4,
              ("ties",)),
        _case(g, lambda g: (_logprobs(g, 2, 3, v), behind), 3, ("beam-score",)),
        _case(g, lambda g: (_logprobs(g, 2, 3, v, dtype=f64), _scores(g, 2, 3, dtype=f64)), 5, ("fp64",)),
        _case(g, lambda g: (_logprobs(g, 1, 2, 3), _scores(g, 1, 2)), 6, ("k-all",)),
    ]


DRILL = Drill(
    name="beam_search_step", area="inference", difficulty=2, minutes=10, func="beam_candidates",
    statement="Write beam search's step: the k best extensions of all beams by summed log-prob (HF generate).",
    starter=STARTER, reference=beam_candidates, sources=(beam_candidates, beam_search), examples=examples,
    hidden=hidden, compare_as=canonical, tags=("ties", "first-step", "num-beams-1", "batch"),
    hints=("Add each beam's running score to its log-probs: (logprobs + beam_scores[..., None]) is (B, nb, V).",
           "Rank all nb * V extensions of an item together: flatten to (B, nb * V) and take torch.topk(.., k).",
           "A flat index f is beam f // V, token f % V."),
    tag_hints={"random": "one top-k over all nb * V extensions of each item (not a share per beam), ranked by "
                         "beam score + log-prob.",
               "beam-score": "rank by beam_scores + logprobs, not by the new token's log-prob alone.",
               "batch": "flatten per item, (B, nb * V), not across the batch.",
               "first-step": "beams at -inf never win; one top-k over all beams handles them with no special case.",
               "k-all": "k may equal nb * V: every extension is returned, sorted.",
               "ties": "the k best across all beams: ranking per beam (k // nb from each) misses ties and leaders.",
               "num-beams-1": "with one beam the step is top-k of that beam's log-probs (plus its score)."},
    banned=("beam_candidates", "beam_search"),
)

"""The repetition penalty of CTRL (Keskar et al. 2019) on next-token logits, as HF applies it."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.infer.sampling import apply_repetition_penalty, token_counts

STARTER = '''"""Drill: repetition_penalty. Check with `llmlab drill check repetition_penalty`."""
import torch
from torch import Tensor


def repetition_penalty(logits: Tensor, input_ids: Tensor, penalty: float,
                       attention_mask: Tensor | None = None) -> Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019; HF RepetitionPenaltyLogitsProcessor): for every distinct
    token that occurs in a row of input_ids, its logit becomes logit / penalty if positive, logit * penalty if
    negative (so penalty > 1 always makes it less likely). A token counts once however often it occurs.

    logits: (B, V) float; input_ids: (B, T) int64 token ids < V (prompt and generated tokens);
    attention_mask: (B, T) bool, False = left padding, whose ids are not counted (None: all count).
    penalty > 0 (1 = off). Returns (B, V) in logits' dtype; other tokens unchanged.
    """
    raise NotImplementedError
'''


def repetition_penalty(logits: Tensor, input_ids: Tensor, penalty: float,
                       attention_mask: Tensor | None = None) -> Tensor:
    return apply_repetition_penalty(logits, input_ids, penalty, attention_mask)


def _ids(g: torch.Generator, b: int, t: int, v: int) -> Tensor:
    return torch.randint(0, v, (b, t), generator=g)


def examples() -> list[Case]:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    return [Case(dict(logits=logits, input_ids=torch.tensor([[0, 1, 1]]), penalty=2.0), ("basic", "negative"), True)]


def hidden(g: torch.Generator) -> list[Case]:
    v = randint(g, 8, 40)
    b, t = randint(g, 2, 5), randint(g, 2, 10)
    repeats = torch.tensor([[3, 3, 3, 3, 1], [2, 2, 0, 2, 2]])  # counted once, not per occurrence
    # left padding with id 5: token 5 is penalised in row 1 (a real token there) but not in row 0
    pad_ids = torch.tensor([[5, 5, 1, 2], [5, 0, 5, 3]])
    pad_mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    return [Case(dict(logits=randn(g, b, v, scale=2.0), input_ids=_ids(g, b, t, v), penalty=1.3), ("random",)),
            Case(dict(logits=-randn(g, 2, v).abs() - 0.5, input_ids=_ids(g, 2, t, v), penalty=1.5), ("negative",)),
            Case(dict(logits=randn(g, 2, 6), input_ids=repeats, penalty=1.2), ("repeats",)),
            Case(dict(logits=randn(g, 2, 8, scale=2.0), input_ids=pad_ids, penalty=2.0, attention_mask=pad_mask),
                 ("padding",)),
            Case(dict(logits=randn(g, 3, v), input_ids=_ids(g, 3, 4, v), penalty=0.7), ("penalty-below-1",)),
            Case(dict(logits=randn(g, 2, v), input_ids=_ids(g, 2, 1, v), penalty=1.4), ("len1",)),
            Case(dict(logits=randn(g, 3, v, dtype=torch.float16, scale=3.0), input_ids=_ids(g, 3, t, v),
                      penalty=1.2), ("fp16",)),
            Case(dict(logits=randn(g, 2, v, dtype=torch.bfloat16, scale=3.0), input_ids=_ids(g, 2, t, v),
                      penalty=1.2), ("bf16",))]


DRILL = Drill(
    name="repetition_penalty", area="sampling", difficulty=1, minutes=8, func="repetition_penalty",
    statement="Apply CTRL's repetition penalty to next-token logits: divide positive, multiply negative logits of "
              "every token already seen (HF RepetitionPenaltyLogitsProcessor).",
    starter=STARTER, reference=repetition_penalty, sources=(apply_repetition_penalty, token_counts),
    examples=examples, hidden=hidden, tags=("negative", "repeats", "padding", "fp16"),
    hints=("Build seen (B, V) bool: zeros(B, V).scatter_(1, input_ids, True) marks every token of each row.",
           "penalized = torch.where(logits < 0, logits * penalty, logits / penalty); the sign decides.",
           "Return torch.where(seen, penalized, logits). With a mask, scatter only the real positions "
           "(e.g. scatter_add of the mask, then > 0)."),
    tag_hints={"negative": "a negative logit is multiplied by the penalty (dividing would make it *more* likely).",
               "repeats": "a token seen several times is penalised once, not penalty ** count.",
               "padding": "ids at attention_mask == False are padding: they must not mark their token as seen.",
               "penalty-below-1": "the same formula with penalty < 1 boosts seen tokens; no special case."},
    banned=("apply_repetition_penalty", "process_logits", "RepetitionPenaltyLogitsProcessor"),
)

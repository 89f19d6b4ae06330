"""Int8 absmax quantization, one scale per row. The reference is llmlab's own `compress.int8.quantize_absmax`."""

from __future__ import annotations

import torch

from llmlab.compress.int8 import quantize_absmax
from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill

STARTER = '''"""Drill: int8_absmax. Check with `llmlab drill check int8_absmax`."""
import torch
from torch import Tensor


def quantize_absmax(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 absmax quantization per row (LLM.int8(), Dettmers et al. 2022, vector-wise):
    scale = max|x| over the last dim / 127;  q = round(x / scale) in [-127, 127], int8.
    A row of zeros gets scale 0 and q 0. x: (..., D) float. Returns (q (..., D) int8, scale (..., 1) in x's dtype);
    x is approximately q * scale.
    """
    raise NotImplementedError
'''


def examples() -> list[Case]:
    return [Case(dict(x=torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])), ("zero-row",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    d = randint(g, 3, 40)
    return [Case(dict(x=randn(g, 5, d, scale=3.0)), ("per-row",)),
            Case(dict(x=randn(g, 2, 3, d) * torch.tensor([1.0, 100.0, 0.01])[:, None]), ("per-row", "3d")),
            Case(dict(x=torch.tensor([[-4.0, 1.0, 2.0], [3.0, 3.0, -1.5]])), ("negative-max",)),
            Case(dict(x=torch.zeros(2, 4)), ("zero-row",)),
            Case(dict(x=randn(g, 3, d, dtype=torch.float64)), ("fp64",))]


DRILL = Drill(
    name="int8_absmax", area="efficiency", difficulty=1, minutes=10, func="quantize_absmax",
    statement="Quantize a matrix to int8 with one absmax scale per row.",
    starter=STARTER, reference=quantize_absmax, examples=examples, hidden=hidden, tags=("per-row", "zero-row"),
    hints=("scale = x.abs().amax(-1, keepdim=True) / 127: the largest magnitude maps to +-127.",
           "q = (x / scale).round().clamp(-127, 127).to(torch.int8): round to nearest, not truncate.",
           "Guard zero rows: where scale == 0 return q = 0 (0 / 0 is NaN)."),
    tag_hints={"per-row": "one scale per row (amax over the last dim, keepdim=True), not one for the tensor.",
               "negative-max": "use the absolute value: max |x|, not max x.",
               "zero-row": "a zero row has scale 0: set q to 0 there instead of dividing by 0."},
    banned=("quantize_per_tensor", "quantize_per_channel", "quantize_dynamic"),
)

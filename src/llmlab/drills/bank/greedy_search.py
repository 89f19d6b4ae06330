"""Greedy decoding: append the argmax token until eos or the token budget, padding rows that have finished."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import TinyLM, randint
from llmlab.drills.grader import Case, Drill
from llmlab.infer.generate import _steps, generate

STARTER = '''"""Drill: greedy_search. Check with `llmlab drill check greedy_search`."""
import torch
from torch import Tensor


def greedy_search(model, input_ids: Tensor, max_new_tokens: int, eos_token_id: int | None = None,
                  pad_token_id: int = 0) -> Tensor:
    """Greedy decoding (HF generate with do_sample=False, num_beams=1): at each step append the argmax of the
    last position's logits.

    model: a callable, model(ids (B, T) int64) -> logits (B, T, V) float. input_ids: (B, T) int64.
    A row that generates eos_token_id has finished: it keeps that eos and gets pad_token_id at every later step.
    Stop after max_new_tokens steps, or as soon as every row has finished.
    Returns (B, T + n) int64: the prompt followed by the n generated tokens.
    """
    raise NotImplementedError
'''

VOCAB = 61


def greedy_search(model: TinyLM, input_ids: Tensor, max_new_tokens: int, eos_token_id: int | None = None,
                  pad_token_id: int = 0) -> Tensor:
    return generate(model.model, input_ids, max_new_tokens, temperature=0.0, eos_token_id=eos_token_id,
                    pad_token_id=pad_token_id)


def _prompt(g: torch.Generator, b: int, t: int) -> Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=g)


def _eos_at(model: TinyLM, ids: Tensor, row: int, step: int) -> int:
    """A token greedy decoding generates in `row` at `step`: as eos, that row finishes early."""
    return int(greedy_search(model, ids, step + 1)[row, ids.shape[1] + step])


def examples() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    return [Case(dict(model=TinyLM(g), input_ids=_prompt(g, 1, 4), max_new_tokens=5), ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    model = TinyLM(g)
    ids = _prompt(g, 3, randint(g, 2, 8))
    one = _prompt(g, 2, 1)
    solo = _prompt(g, 1, 5)
    return [Case(dict(model=model, input_ids=ids, max_new_tokens=8), ("batch", "no-eos")),
            Case(dict(model=model, input_ids=ids, max_new_tokens=8, eos_token_id=_eos_at(model, ids, 0, 1),
                      pad_token_id=VOCAB - 1), ("eos", "batch")),
            Case(dict(model=model, input_ids=solo, max_new_tokens=10, eos_token_id=_eos_at(model, solo, 0, 3)),
                 ("early-stop",)),
            Case(dict(model=model, input_ids=one, max_new_tokens=6), ("len1",)),
            Case(dict(model=model, input_ids=ids, max_new_tokens=1), ("max-new-1",))]


DRILL = Drill(
    name="greedy_search", area="inference", difficulty=1, minutes=10, func="greedy_search",
    statement="Write greedy decoding with eos handling: finished rows get padding; stop when all rows finish.",
    starter=STARTER, reference=greedy_search, sources=(generate, _steps), examples=examples, hidden=hidden,
    tags=("eos", "early-stop", "len1"),
    hints=("Loop max_new_tokens times: logits = model(ids)[:, -1]; token = logits.argmax(-1); ids = cat([ids, "
           "token[:, None]], dim=1). (llmlab feeds only the new token through a KV cache; the tokens are the same.)",
           "Keep done (B,) bool: token = token.masked_fill(done, pad_token_id), then done |= token == eos_token_id.",
           "Break as soon as done.all(), after appending that step's tokens; with no eos, run all the steps."),
    tag_hints={"eos": "a finished row keeps its eos, then gets pad_token_id at every later step (not more tokens).",
               "early-stop": "stop when every row has finished: the output is shorter than T + max_new_tokens.",
               "max-new-1": "exactly one step: append one token per row.",
               "len1": "a one-token prompt works the same: logits of the last (only) position."},
    banned=("generate", "stream", "_steps", "beam_search"),
)

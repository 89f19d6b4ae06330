"""Perplexity of a causal LM over a stream longer than its context: the strided sliding window of HF's guide."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import TinyLM, randint
from llmlab.drills.grader import Case, Drill
from llmlab.eval.perplexity import Window, perplexity, sliding_windows

STARTER = '''"""Drill: sliding_window_perplexity. Check with `llmlab drill check sliding_window_perplexity`."""
import math

import torch
from torch import Tensor


def sliding_window_perplexity(model, token_ids: Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """PPL = exp(-(1/n) sum_i log p(x_i | context)) over one long stream, with the strided windows of HF's guide
    "Perplexity of fixed-length models": the model sees at most max_length tokens at once.

    Windows [begin, end): begin = 0, stride, 2 * stride, ...; end = min(begin + max_length, N); stop after the
    first window whose end is N. Each window scores only the tokens after the previous window's end (prev_end,
    0 for the first); earlier ones are context. The logits at position t - 1 predict token t, so a window never
    scores its own first token (with no context before it, token `begin` goes unscored). Each token is scored
    at most once; n counts the scored tokens.

    model: a callable, model(ids (1, L) int64) -> logits (1, L, V) float64, L <= max_length.
    token_ids: (N,) int64, N >= 2; 2 <= max_length; 1 <= stride <= max_length.
    Returns (ppl as a Python float, n as an int).
    """
    raise NotImplementedError
'''


def sliding_window_perplexity(model: TinyLM, token_ids: Tensor, max_length: int, stride: int) -> tuple[float, int]:
    result = perplexity(model.model, token_ids, max_length=max_length, stride=stride)
    return result.ppl, result.n_tokens


VOCAB = 53


def _case(g: torch.Generator, model: TinyLM, n: int, max_length: int, stride: int, tags: tuple[str, ...],
          visible: bool = False) -> Case:
    ids = torch.randint(0, VOCAB, (n,), generator=g)
    return Case(dict(model=model, token_ids=ids, max_length=max_length, stride=stride), tags, visible)


def examples() -> list[Case]:
    g = torch.Generator().manual_seed(6)
    return [_case(g, TinyLM(g, VOCAB, max_seq_len=16), 10, 4, 4, ("disjoint",), True),
            _case(g, TinyLM(g, VOCAB, max_seq_len=16), 10, 6, 3, ("overlap",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    model = TinyLM(g, VOCAB, max_seq_len=16)
    n = randint(g, 20, 40)
    return [_case(g, model, n, 8, 8, ("disjoint", "last-window")),
            _case(g, model, n, 8, randint(g, 2, 8), ("overlap",)),
            _case(g, model, 25, 10, 4, ("overlap", "last-window")),
            _case(g, model, 17, 6, 1, ("stride-1",)),
            _case(g, model, 9, 16, 4, ("one-window",)),
            _case(g, model, 2, 8, 8, ("len2", "one-window")),
            _case(g, model, 13, 2, 2, ("max-length-2", "disjoint")),
            _case(g, model, 24, 8, 8, ("disjoint", "exact-fit")),  # N a multiple of max_length
            _case(g, model, 25, 8, 8, ("disjoint", "lone-last-token"))]  # the last chunk is one unscored token


DRILL = Drill(
    name="sliding_window_perplexity", area="eval", difficulty=2, minutes=20, func="sliding_window_perplexity",
    statement="Compute a causal LM's perplexity over a stream longer than its context with HF's strided sliding "
              "window: every token scored once, each with as much context as the window allows.",
    starter=STARTER, reference=sliding_window_perplexity, sources=(perplexity, sliding_windows, Window),
    examples=examples, hidden=hidden, tags=("overlap", "last-window", "stride-1", "len2"),
    tol={torch.float64: (1e-9, 1e-6)},
    hints=("Loop begin over range(0, N, stride): end = min(begin + max_length, N); score tokens "
           "[max(prev_end, begin + 1), end); set prev_end = end and break once end == N.",
           "In a window x = ids[begin:end], token t (absolute) is predicted by logits[0, t - 1 - begin]: sum "
           "-log_softmax(logits)[t - 1 - begin, x_t] over the scored t.",
           "Sum the NLL over all windows and divide by the total count of scored tokens (not a mean of window "
           "means); ppl = exp of that."),
    tag_hints={"overlap": "with stride < max_length the windows overlap: score only tokens after the previous "
                          "window's end, never one twice.",
               "disjoint": "stride == max_length: each chunk's first token has no context, so it is not scored.",
               "last-window": "the last window is shorter (end = N); weight windows by their scored tokens.",
               "stride-1": "stride 1: every window after the first scores exactly one new token.",
               "one-window": "N <= max_length: one window, tokens 1 .. N - 1 scored.",
               "lone-last-token": "a last window of one token scores nothing (it has no context): n excludes it.",
               "len2": "N = 2: one scored token."},
    banned=("perplexity", "evaluate_text", "sliding_windows", "cross_entropy", "nll_loss"),
)

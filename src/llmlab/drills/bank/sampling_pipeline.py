"""Next-token logits -> the scores HF `generate` samples from: penalty, temperature, top-k, top-p, min-p, in order."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.infer.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    apply_temperature,
    min_p_filter,
    process_logits,
    top_k_filter,
    top_p_filter,
)

STARTER = '''"""Drill: sampling_pipeline. Check with `llmlab drill check sampling_pipeline`."""
import torch
from torch import Tensor


def process_logits(logits: Tensor, input_ids: Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0) -> Tensor:
    """The scores HF generate samples from, its logits processors applied in HF's order:
    1. repetition penalty (CTRL): a token seen in the row's input_ids: logit / p if > 0, logit * p if < 0;
    2. temperature 0 means greedy: return here (the filters never change the argmax);
    3. temperature: logits / T;
    4. top-k: set logits below the k-th largest to -inf (tokens tied with it stay); None = off;
    5. top-p (nucleus, Holtzman et al. 2020): sort ascending, remove tokens while the cumulative softmax
       probability is <= 1 - top_p, always keep the most likely token; 1.0 = off;
    6. min-p (Nguyen et al. 2024): remove tokens with probability < min_p * the top probability; 0.0 = off.
    Each filter's softmax is taken over the scores it receives (after the steps before it).

    logits: (B, V) float; input_ids: (B, T) int64, the tokens so far. Returns (B, V) in logits' dtype, removed
    tokens -inf. Graded on the values: kept tokens must carry the penalised, temperature-scaled logit.
    """
    raise NotImplementedError
'''


def process(logits: Tensor, input_ids: Tensor, temperature: float = 1.0, top_k: int | None = None,
            top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0) -> Tensor:
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repetition_penalty=repetition_penalty)
    return process_logits(logits, input_ids, params)


def _ids(g: torch.Generator, b: int, t: int, v: int) -> Tensor:
    return torch.randint(0, v, (b, t), generator=g)


def examples() -> list[Case]:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    ids = torch.tensor([[0, 3]])
    return [Case(dict(logits=logits, input_ids=ids, temperature=0.5, top_k=3), ("temperature", "top-k"), True),
            Case(dict(logits=logits, input_ids=ids, temperature=2.0, top_p=0.8, repetition_penalty=1.5),
                 ("order", "penalty"), True)]


def hidden(g: torch.Generator) -> list[Case]:
    v, t = randint(g, 10, 40), randint(g, 2, 8)

    def case(tags, b=3, dtype=torch.float32, scale=2.0, **params):
        return Case(dict(logits=randn(g, b, v, dtype=dtype, scale=scale), input_ids=_ids(g, b, t, v), **params),
                    tags)

    return [case(("temperature",), temperature=0.7),
            case(("order", "top-p"), temperature=3.0, top_p=0.7),  # a hot distribution widens the nucleus
            case(("order", "min-p"), temperature=0.4, min_p=0.3),
            case(("all",), temperature=1.3, top_k=8, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
            case(("greedy",), temperature=0.0, top_k=2, top_p=0.5, repetition_penalty=1.5),
            case(("penalty", "order"), temperature=0.5, top_p=0.6, repetition_penalty=2.0),
            case(("off",), temperature=1.0),
            case(("large-logits",), scale=200.0, temperature=5.0, top_p=0.95),
            case(("fp64",), dtype=torch.float64, temperature=0.8, top_k=5, min_p=0.1),
            case(("fp16",), b=2, dtype=torch.float16, temperature=0.5, top_k=4)]


DRILL = Drill(
    name="sampling_pipeline", area="sampling", difficulty=2, minutes=15, func="process_logits",
    statement="Chain the sampling controls in HF generate's order: repetition penalty, temperature (0 = greedy), "
              "top-k, top-p, min-p.",
    starter=STARTER, reference=process, examples=examples, hidden=hidden,
    sources=(process_logits, apply_repetition_penalty, apply_temperature, top_k_filter, top_p_filter, min_p_filter),
    tags=("temperature", "order", "greedy", "large-logits", "fp16"),
    hints=("Write one small function per step (penalty, temperature, top-k, top-p, min-p) and call them in order.",
           "Temperature comes before the filters: top-p and min-p read softmax(logits / T), so T changes which "
           "tokens they keep. Temperature 0 returns right after the penalty.",
           "Top-p: sort ascending, cumsum of softmax, drop where cumsum <= 1 - p except the last (largest) column, "
           "scatter the drop mask back to vocabulary order."),
    tag_hints={"order": "divide by the temperature *before* top-p / min-p: their softmax sees the scaled logits.",
               "temperature": "kept tokens carry logits / T, not the raw logits.",
               "greedy": "temperature 0: apply the penalty only and return (no division by 0, no filters).",
               "penalty": "penalise first: logit / p when positive, logit * p when negative, for tokens in input_ids.",
               "off": "temperature 1, top_k None, top_p 1, min_p 0, penalty 1: return the logits unchanged.",
               "large-logits": "use a max-subtracted softmax (torch.softmax) for the filters' probabilities."},
    banned=("process_logits", "apply_repetition_penalty", "apply_temperature", "top_k_filter", "top_p_filter",
            "min_p_filter", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper", "TemperatureLogitsWarper"),
)

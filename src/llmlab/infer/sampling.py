"""Logits transforms and token sampling: pure functions on next-token logits (B, V).

Each transform equals the matching HF transformers logits processor (tests/infer/test_sampling.py), and
`process_logits` applies them in the order HF `generate` does: repetition penalty -> temperature -> top-k ->
top-p -> min-p, with the OpenAI frequency/presence penalties right after the repetition penalty.
Filters set the tokens they remove to -inf, so a softmax gives them probability 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from llmlab.errors import ConfigError


@dataclass
class SamplingParams:
    """How to pick each next token, and when to stop. temperature=0 is greedy (HF `do_sample=False`).

    top_k=None, top_p=1.0 and min_p=0.0 switch their filter off; penalties of 1.0 (repetition) and 0.0
    (frequency, presence) do nothing. seed makes sampling reproducible without passing a torch.Generator.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    max_new_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        self.stop_token_ids = tuple(self.stop_token_ids)  # lists from JSON become tuples
        self.stop_strings = tuple(self.stop_strings)
        checks = [
            ("temperature", self.temperature >= 0, "must be >= 0 (0 = greedy)"),
            ("top_k", self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 1),
             "must be an integer >= 1, or None for no top-k"),
            ("top_p", 0 <= self.top_p <= 1, "must be in [0, 1] (1 = off)"),
            ("min_p", 0 <= self.min_p <= 1, "must be in [0, 1] (0 = off)"),
            ("repetition_penalty", self.repetition_penalty > 0, "must be > 0 (1 = off)"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be in [-2, 2] as in the OpenAI API"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "must be in [-2, 2] as in the OpenAI API"),
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0,
             "must be an integer >= 0"),
            ("stop_token_ids", all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
             "must be token ids (integers >= 0)"),
            ("stop_strings", all(isinstance(s, str) and s for s in self.stop_strings), "must be non-empty strings"),
            ("seed", self.seed is None or isinstance(self.seed, int), "must be an integer or None"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} {rule}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingParams:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        return cls(**d)


def token_counts(input_ids: Tensor, vocab_size: int, attention_mask: Tensor | None = None) -> Tensor:
    """input_ids (B, T) -> (B, V) float: how often each token occurs in each row; padding (mask 0) not counted."""
    ones = torch.ones(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    if attention_mask is not None:
        ones = ones * attention_mask.to(ones.device, torch.float32)
    return torch.zeros(input_ids.shape[0], vocab_size, device=input_ids.device).scatter_add_(1, input_ids, ones)


def apply_repetition_penalty(logits: Tensor, input_ids: Tensor, penalty: float,
                             attention_mask: Tensor | None = None) -> Tensor:
    """Each distinct token seen in input_ids: logit / penalty if positive, logit * penalty if negative
    (Keskar et al. 2019, CTRL; HF `RepetitionPenaltyLogitsProcessor`, which also skips left padding)."""
    seen = token_counts(input_ids, logits.shape[-1], attention_mask) > 0  # (B, V): once per token, however often
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def apply_frequency_presence_penalty(logits: Tensor, input_ids: Tensor, frequency: float, presence: float,
                                     attention_mask: Tensor | None = None) -> Tensor:
    """logits -= frequency * count + presence * (count > 0), count = occurrences in input_ids
    (OpenAI API docs, "Frequency and presence penalties"; `generate` passes the generated tokens only)."""
    counts = token_counts(input_ids, logits.shape[-1], attention_mask).to(logits.dtype)  # (B, V)
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """softmax(logits / T): T < 1 sharpens the distribution, T > 1 flattens it. T must be > 0."""
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits per row, and every token tied with the k-th (HF `TopKLogitsWarper`)."""
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the most likely tokens whose probabilities sum to >= p.

    As HF `TopPLogitsWarper`: sort ascending, drop tokens while the cumulative probability is <= 1 - p,
    always keep the most likely one. Ties are ordered by torch.sort, as in HF, so the kept set is the same.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)  # (B, V), least likely first
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= 1 - p
    drop_sorted[:, -1] = False  # the most likely token always stays
    drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Keep tokens with probability >= min_p * the top token's probability
    (Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling"; HF `MinPLogitsWarper`)."""
    if min_p <= 0:
        return logits
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    drop = probs < min_p * probs.amax(dim=-1, keepdim=True)  # the top token is never below it: min_p <= 1
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: Tensor, input_ids: Tensor, params: SamplingParams, *,
                   attention_mask: Tensor | None = None, n_prompt: int = 0) -> Tensor:
    """Next-token logits (B, V) -> the scores to sample from (or take the argmax of), in HF `generate`'s order.

    input_ids (B, T): the prompt (its first n_prompt columns) and the tokens generated so far; attention_mask
    (B, T) marks left padding, which no penalty counts. The repetition penalty sees prompt and generated tokens
    (HF); frequency and presence penalties see the generated ones only (OpenAI: tokens "sampled so far").
    Greedy (temperature 0) stops after the penalties: the filters never remove the top token, so the argmax
    is the same (HF likewise applies its warpers only when sampling).
    """
    if params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, input_ids, params.repetition_penalty, attention_mask)
    if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
        generated_mask = None if attention_mask is None else attention_mask[:, n_prompt:]
        logits = apply_frequency_presence_penalty(logits, input_ids[:, n_prompt:], params.frequency_penalty,
                                                  params.presence_penalty, generated_mask)
    if params.greedy:
        return logits
    if params.temperature != 1.0:
        logits = apply_temperature(logits, params.temperature)
    if params.top_k is not None:
        logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    return min_p_filter(logits, params.min_p)


def sample(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Processed logits (B, V) -> one token per row (B,), drawn from softmax(logits).

    Exactly HF's draw (`_sample`): softmax, then one torch.multinomial call over the whole (B, V) batch, so the
    same seed (torch.manual_seed, or a torch.Generator seeded alike) gives the same tokens.
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)

"""One request as the engine sees it (nano-vllm's Sequence): prompt, sampling settings, tokens so far, state.

A sequence is WAITING (queued, or preempted and queued again), RUNNING (its tokens are in the KV cache) or
FINISHED. While running, the cache holds every token but the last generated one: the next decode step feeds that
one. A preempted sequence loses its cache and is prefilled again from prompt + generated tokens (vLLM's recompute
preemption); its generator is not reset, so a seeded request draws the same tokens either way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from llmlab.infer.sampling import SamplingParams
from llmlab.serve.detokenizer import Detokenizer


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]  # eos + params.stop_token_ids: generating one of them ends the request
    detokenizer: Detokenizer
    n_logprobs: int = 0  # top log-probs to report per token
    generator: torch.Generator | None = None  # per request, so batch neighbours never shift its random draws
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: str | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def n_prompt(self) -> int:
        return len(self.prompt_ids)

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)


"""The model runner: forward passes on the paged KV cache and the choice of each sequence's next token.

Prefill feeds one sequence's tokens (its prompt, or prompt + generated tokens after a preemption); decode feeds the
last token of every running sequence in one batch, each at its own length (the paged cache left-pads and masks).
Each row's logits are then processed and sampled alone, with its own parameters and its own torch.Generator, exactly
as `llmlab.infer.generate.stream` does for a batch of one: same fp32 logits processing, same single
torch.multinomial draw. So a request gets the tokens it would get alone, whatever it is batched with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmlab.infer.paged_cache import PagedKVCache
from llmlab.infer.sampling import process_logits, sample
from llmlab.model.transformer import Transformer
from llmlab.serve.sequence import Sequence


@dataclass
class Choice:
    token_id: int
    logprob: float  # log-prob of token_id under the processed distribution (what it was sampled from)
    top_logprobs: list[tuple[int, float]]  # the n most likely tokens of that distribution; filtered ones left out


class ModelRunner:
    def __init__(self, model: Transformer, cache: PagedKVCache) -> None:
        self.model, self.cache = model, cache
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def prefill(self, seq: Sequence) -> Tensor:
        """Run all of seq's tokens through the cache; returns the next-token logits (1, V), fp32."""
        ids = torch.tensor([seq.all_ids], device=self.device)  # (1, T)
        return self.model(ids, cache=self.cache.batch([seq.request_id]))[:, -1].float()

    @torch.no_grad()
    def decode(self, seqs: list[Sequence]) -> Tensor:
        """Feed each sequence's last token in one batch; returns next-token logits (B, V), fp32."""
        ids = torch.tensor([[s.output_ids[-1]] for s in seqs], device=self.device)  # (B, 1)
        return self.model(ids, cache=self.cache.batch([s.request_id for s in seqs]))[:, -1].float()

    def choose(self, seq: Sequence, logits: Tensor) -> Choice:
        """seq's next token from its logits (1, V): penalties and filters of its params, then argmax or a draw."""
        ids = torch.tensor([seq.all_ids], device=logits.device)  # (1, T): what the penalties count
        scores = process_logits(logits, ids, seq.params, n_prompt=seq.n_prompt)  # (1, V)
        token = scores.argmax(dim=-1) if seq.params.greedy else sample(scores, seq.generator)  # (1,)
        logprobs = torch.log_softmax(scores[0], dim=-1)  # (V,)
        top: list[tuple[int, float]] = []
        if seq.n_logprobs:
            values, indices = torch.topk(logprobs, min(seq.n_logprobs, logprobs.shape[0]))
            top = [(i, v) for i, v in zip(indices.tolist(), values.tolist(), strict=True) if v != float("-inf")]
        token_id = int(token.item())
        return Choice(token_id, float(logprobs[token_id]), top)

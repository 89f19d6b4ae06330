"""The model runner: forward passes on the paged KV cache and the choice of each sequence's next token.

Prefill feeds one sequence's tokens (its prompt, or prompt + generated tokens after a preemption); decode feeds the
last token of every running sequence in one batch, each at its own length (the paged cache left-pads and masks).
Each row's logits are then processed and sampled alone, with its own parameters and its own torch.Generator, exactly
as `llmlab.infer.generate.stream` does for a batch of one: same fp32 logits processing, same single
torch.multinomial draw. So a request gets the tokens it would get alone, whatever it is batched with. (Greedy rows
without penalties need no processing: their argmax and log-softmax, row-wise ops, are taken for all of them at once.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmlab.infer.generate import compile_error
from llmlab.infer.paged_cache import GraphPagedBatch, PagedKVCache
from llmlab.infer.sampling import SamplingParams, process_logits, sample
from llmlab.model.transformer import Transformer
from llmlab.serve.sequence import Sequence


@dataclass
class Choice:
    token_id: int
    logprob: float  # log-prob of token_id under the processed distribution (what it was sampled from)
    top_logprobs: list[tuple[int, float]]  # the n most likely tokens of that distribution; filtered ones left out


class ModelRunner:
    """compile=True: each decode step runs as one torch.compile'd graph with dynamic shapes (batch size and key
    length change every step without recompiling: one graph for batch 1, one for larger batches); prefill stays
    eager."""

    def __init__(self, model: Transformer, cache: PagedKVCache, compile: bool = False) -> None:
        self.model, self.cache, self.compile = model, cache, compile
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def prefill(self, seq: Sequence) -> Tensor:
        """Run all of seq's tokens through the cache; returns the next-token logits (1, V), fp32."""
        ids = torch.tensor([seq.all_ids], device=self.device)  # (1, T)
        return self.model(ids, cache=self.cache.batch([seq.request_id]))[:, -1].float()

    @torch.no_grad()
    def decode(self, seqs: list[Sequence]) -> Tensor:
        """Feed each sequence's last token in one batch; returns next-token logits (B, V), fp32."""
        if self.compile:
            return self._compiled_decode(seqs)
        ids = torch.tensor([[s.output_ids[-1]] for s in seqs], device=self.device)  # (B, 1)
        return self.model(ids, cache=self.cache.batch([s.request_id for s in seqs]))[:, -1].float()

    def _compiled_decode(self, seqs: list[Sequence]) -> Tensor:
        global _compiled_step
        slots, mask, new_slots, positions = self.cache.decode_inputs([s.request_id for s in seqs])
        ids = torch.tensor([[s.output_ids[-1]] for s in seqs], device=self.device)  # (B, 1)
        # two graphs in all: batch 1 (dynamo specializes sizes 0 and 1) without a mask, and any larger batch with
        # one (all True when no row is padded), its batch size and key length symbolic and the rest static
        # (dynamic=True made the pools' sizes symbolic too, and a batch equal to n_kv_heads got a graph of its own)
        torch._dynamo.mark_dynamic(slots, 1)
        if len(seqs) > 1:
            mask = torch.ones_like(slots, dtype=torch.bool) if mask is None else mask
            torch._dynamo.mark_dynamic(mask, 1)
            for t in (ids, slots, mask, new_slots, positions):
                torch._dynamo.mark_dynamic(t, 0)
        if _compiled_step is None:
            _compiled_step = torch.compile(_decode_step)
        try:
            logits = _compiled_step(self.model, list(self.cache.flat_k), list(self.cache.flat_v), ids, slots, mask,
                                    new_slots, positions)
        except Exception as e:  # inductor needs a working C++ compiler on CPU, Triton on GPU
            raise compile_error(e) from e
        return logits.float()

    def choose(self, seqs: list[Sequence], logits: Tensor) -> list[Choice]:
        """Each sequence's next token from its row of logits (B, V): penalties and filters of its params, then
        argmax or a draw from its own generator."""
        # greedy rows without penalties: the scores are the logits themselves, so one batched log-softmax, argmax
        # and host copy serve them all (per-row work here cost ~35 us a token, as much as the cache bookkeeping)
        plain = [i for i, s in enumerate(seqs) if s.params.greedy and not has_penalty(s.params)]
        choices: list[Choice | None] = [None] * len(seqs)
        if plain:
            rows = logits if len(plain) == len(seqs) else logits[plain]  # (P, V)
            logprobs = torch.log_softmax(rows, dim=-1)
            tokens = rows.argmax(dim=-1)  # (P,) the argmax of the logits, as generate takes it
            chosen = logprobs.gather(1, tokens[:, None])[:, 0]
            for j, (i, token, lp) in enumerate(zip(plain, tokens.tolist(), chosen.tolist(), strict=True)):
                choices[i] = Choice(token, lp, top_logprobs(logprobs[j], seqs[i].n_logprobs))
        for i, seq in enumerate(seqs):
            if choices[i] is None:
                choices[i] = self._choose_one(seq, logits[i:i + 1])
        return choices

    def _choose_one(self, seq: Sequence, logits: Tensor) -> Choice:
        """seq's next token from its logits (1, V), processed and sampled alone, as `generate` does at batch 1."""
        ids = torch.tensor([seq.all_ids], device=logits.device)  # (1, T): what the penalties count
        scores = process_logits(logits, ids, seq.params, n_prompt=seq.n_prompt)  # (1, V)
        token = scores.argmax(dim=-1) if seq.params.greedy else sample(scores, seq.generator)  # (1,)
        logprobs = torch.log_softmax(scores[0], dim=-1)  # (V,)
        token_id = int(token.item())
        return Choice(token_id, float(logprobs[token_id]), top_logprobs(logprobs, seq.n_logprobs))


def _decode_step(model: Transformer, k: list[Tensor], v: list[Tensor], ids: Tensor, slots: Tensor,
                 mask: Tensor | None, new_slots: Tensor, positions: Tensor) -> Tensor:
    """One token per row through model on each layer's flat pools k[l], v[l]: logits (B, V)."""
    return model(ids, cache=GraphPagedBatch(k, v, slots, mask, new_slots, positions))[:, -1]


# torch.compile(_decode_step), made at the first compiled decode. Dynamic shapes rather than fixed ones (batches
# padded to buckets 1/2/4/8/16, max_seq_len keys per row): those were 2-3x slower than eager at 16 concurrent
# requests on the tiny preset, every row reading all max_seq_len keys
_compiled_step = None


def has_penalty(params: SamplingParams) -> bool:
    return params.repetition_penalty != 1.0 or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0


def top_logprobs(logprobs: Tensor, n: int) -> list[tuple[int, float]]:
    """The n most likely (token id, log-prob) of logprobs (V,), best first; filtered (-inf) tokens left out."""
    if not n:
        return []
    values, indices = torch.topk(logprobs, min(n, logprobs.shape[0]))
    return [(i, v) for i, v in zip(indices.tolist(), values.tolist(), strict=True) if v != float("-inf")]

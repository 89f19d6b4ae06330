"""Beam search with length penalty and early stopping, equal to HF `generate(num_beams=n, do_sample=False)`.

Each step, every running beam is extended by every token; the best (n_eos + 1) * num_beams extensions by
summed log-probability are kept, so that even if every one of the top num_beams ends in eos, num_beams
unfinished extensions remain to run on. Of those candidates, ones that end (eos, or max_new_tokens reached)
enter the pool of finished hypotheses, scored sum_logprob / n_generated ** length_penalty (eos counted in
n_generated) -- but only candidates ranked within the top num_beams may enter, as in HF. The pool keeps the
best num_beams. The best num_beams unfinished candidates run on.

A batch item is done when its pool is full and either early_stopping=True, or no running beam can still
beat the pool's worst: early_stopping=False estimates a running beam's best final score as its score now /
(tokens generated so far) ** length_penalty, early_stopping="never" (length_penalty > 0) as its score /
max_new_tokens ** length_penalty (HF's heuristics). Generation ends when every item is done, or at max_new_tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.kv_cache import KVCache
from llmlab.model.transformer import Transformer


@dataclass
class BeamSearchOutput:
    sequences: Tensor  # (B * num_return_sequences, T + n): prompt + hypothesis, best first, pad after it ends
    scores: Tensor  # (B * num_return_sequences,) fp32: sum of token log-probs / n_generated ** length_penalty


def reorder_cache(cache: KVCache, rows: Tensor) -> None:
    """Keep the cache's batch rows `rows` (B',), in that order: each new beam continues the beam it came from."""
    cache.k = cache.k.index_select(1, rows)  # (n_layers, B', Hkv, capacity, D)
    cache.v = cache.v.index_select(1, rows)
    if cache.mask is not None:
        cache.mask = cache.mask.index_select(0, rows)


def take(x: Tensor, index: Tensor) -> Tensor:
    """x (B, N, ...), index (B, K) -> (B, K, ...): x[b, index[b, k]] for each item b."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], index]


def beam_candidates(logprobs: Tensor, beam_scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The k best one-token extensions of all beams together, by summed log-prob, best first (HF's step).

    logprobs (B, nb, V): each beam's next-token log-probs; beam_scores (B, nb): each beam's summed log-prob so
    far. Returns (scores, beam, token), each (B, k): score = beam_scores[beam] + logprobs[beam, token].
    """
    b, _, vocab = logprobs.shape
    # one top-k over the nb * V flattened extensions of each item; flat index = beam * V + token
    scores, flat = torch.topk((logprobs + beam_scores[..., None]).view(b, -1), k)
    return scores, flat // vocab, flat % vocab


@torch.no_grad()
def beam_search(model: Transformer, input_ids: Tensor, num_beams: int, max_new_tokens: int, *,
                num_return_sequences: int = 1, length_penalty: float = 1.0, early_stopping: bool | str = False,
                eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
                attention_mask: Tensor | None = None) -> BeamSearchOutput:
    """The num_return_sequences best hypotheses for each prompt in input_ids (B, T); see the module docstring.

    attention_mask (B, T) marks left padding. Hypotheses shorter than the longest returned one are filled with
    pad_token_id (default: the first eos id). HF's defaults: length_penalty=1.0, early_stopping=False.
    """
    cfg = model.cfg
    if not cfg.causal:
        raise LlmlabError(f"beam search needs a causal decoder; this model has arch={cfg.arch!r}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise LlmlabError(f"input_ids must be (batch, seq) with seq >= 1, got shape {tuple(input_ids.shape)}")
    if num_beams < 1:
        raise ConfigError(f"num_beams={num_beams} must be >= 1")
    if not 1 <= num_return_sequences <= num_beams:
        raise ConfigError(f"num_return_sequences={num_return_sequences} must be in [1, num_beams={num_beams}]")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if early_stopping not in (True, False, "never"):
        raise ConfigError(f"early_stopping={early_stopping!r} must be True, False or 'never'")
    b, n_prompt = input_ids.shape
    if n_prompt + max_new_tokens - 1 > cfg.max_seq_len:
        raise LlmlabError(f"prompt ({n_prompt}) + max_new_tokens ({max_new_tokens}) exceed the model's "
                          f"max_seq_len={cfg.max_seq_len}")
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    device = input_ids.device
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    n_keep = (len(eos) + 1 if eos else 2) * num_beams  # candidates kept per step (HF: max(2, 1 + n_eos) * beams)
    total = n_prompt + max_new_tokens

    was_training = model.training
    model.eval()
    try:
        # every beam starts as a copy of its prompt; only beam 0 may be extended at the first step
        rows = input_ids.repeat_interleave(num_beams, dim=0)  # (B * nb, T)
        mask = attention_mask.repeat_interleave(num_beams, dim=0) if attention_mask is not None else None
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0) if mask is not None else None
        param = next(model.parameters())
        cache = KVCache(cfg, b * num_beams, max_len=total - 1, dtype=param.dtype, device=param.device)
        logits = model(rows, attention_mask=mask, position_ids=positions, cache=cache)[:, -1]  # (B * nb, V)
        next_pos = (mask.sum(-1) if mask is not None else torch.full((b * num_beams,), n_prompt)).to(device)

        running = input_ids[:, None, :].expand(b, num_beams, n_prompt)  # (B, nb, t) token ids
        running_scores = torch.full((b, num_beams), float("-inf"), device=device)  # summed log-probs
        running_scores[:, 0] = 0.0
        pool = torch.full((b, num_beams, total), pad, dtype=torch.long, device=device)  # finished hypotheses
        pool_scores = torch.full((b, num_beams), float("-inf"), device=device)  # -inf: an empty slot
        pool_len = torch.zeros((b, num_beams), dtype=torch.long, device=device)  # their generated lengths
        done = torch.zeros(b, dtype=torch.bool, device=device)

        for step in range(max_new_tokens):
            n_gen = step + 1  # tokens generated once this step's token is appended
            if step > 0:
                logits = model(running[:, :, -1].reshape(-1, 1), position_ids=next_pos[:, None], cache=cache)[:, -1]
                next_pos = next_pos + 1
            logprobs = torch.log_softmax(logits.float(), dim=-1).view(b, num_beams, -1)  # (B, nb, V)
            cand_scores, cand_beam, cand_token = beam_candidates(logprobs, running_scores, n_keep)  # (B, n_keep)
            cand = torch.cat([take(running, cand_beam), cand_token[..., None]], dim=-1)  # (B, n_keep, t + 1)
            ends = torch.isin(cand_token, eos_ids) | (n_gen == max_new_tokens)  # (B, n_keep)

            # finished candidates ranked in the top num_beams join the pool if they beat its worst
            joins = ends & (torch.arange(n_keep, device=device) < num_beams) & ~done[:, None]
            normalized = (cand_scores / n_gen ** length_penalty).masked_fill(~joins, float("-inf"))
            merged_scores = torch.cat([pool_scores, normalized], dim=1)  # (B, nb + n_keep)
            pool_scores, best = torch.topk(merged_scores, num_beams)
            merged = torch.cat([pool, F.pad(cand, (0, total - cand.shape[-1]), value=pad)], dim=1)
            pool = take(merged, best)
            pool_len = take(torch.cat([pool_len, torch.full_like(cand_token, n_gen)], dim=1), best)

            # the best num_beams candidates that did not end run on
            running_scores, keep = torch.topk(cand_scores.masked_fill(ends, float("-inf")), num_beams)
            running = take(cand, keep)
            source = take(cand_beam, keep)  # (B, nb): the beam each new beam extends
            reorder_cache(cache, (source + num_beams * torch.arange(b, device=device)[:, None]).view(-1))

            full = torch.isfinite(pool_scores).all(dim=-1)  # (B,)
            if early_stopping is True:
                done |= full
            else:
                length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else n_gen
                best_possible = running_scores[:, 0] / length ** length_penalty
                done |= full & (best_possible <= pool_scores.min(dim=-1).values)
            if done.all():
                break

        n = num_return_sequences
        out_len = n_prompt + int(pool_len[:, :n].max())
        return BeamSearchOutput(pool[:, :n, :out_len].reshape(b * n, out_len), pool_scores[:, :n].reshape(b * n))
    finally:
        model.train(was_training)

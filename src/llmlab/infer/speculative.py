"""Speculative decoding: a cheap drafter proposes k tokens, the target model checks them all in one forward pass.

Each round the target scores the pending token and the k drafts at once (k + 1 next-token distributions p),
accepts draft i with probability min(1, p_i(x) / q_i(x)), and at the first rejection draws from
norm(max(0, p_i - q_i)) instead; if all k pass it draws a bonus token from p_{k+1}. Every emitted token is then
distributed exactly as the target's own sample (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding"; Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling"). Greedy
(temperature 0) is the same rule on one-hot distributions: accept while the argmaxes agree, then emit the
target's argmax, so the tokens equal plain greedy decoding.

Drafters: a smaller model with its own KV cache (`speculative_generate`; `layer_skip_draft` builds one from the
target's first layers, "self-speculative" decoding, Zhang et al. 2023, "Draft & Verify"), or prompt lookup
(`prompt_lookup_generate`, Saxena 2023): the tokens that followed the last n-gram's earlier occurrence in the
context, a deterministic draft (q one-hot) whose acceptance probability is simply p(token).

One sequence at a time (batch size 1): rows of a batch accept different numbers of drafts, so their caches
would grow apart. Both caches are rolled back (`KVCache.crop`) to the accepted tokens after each round.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.kv_cache import KVCache
from llmlab.infer.sampling import apply_temperature, top_k_filter, top_p_filter
from llmlab.model.transformer import Transformer


@dataclass
class SpecStats:
    """Counters of one speculative generation. Plain decoding makes one target pass per token."""

    generated: int = 0  # new tokens emitted
    proposed: int = 0  # draft tokens the target checked
    accepted: int = 0  # draft tokens it kept
    target_passes: int = 0  # target forward passes, the first (prompt + drafts) included
    draft_passes: int = 0  # draft-model forward passes (0 for prompt lookup)

    @property
    def acceptance_rate(self) -> float:
        """accepted / proposed (0.0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """New tokens per target forward pass: 1.0 for plain decoding, up to k + 1."""
        return self.generated / self.target_passes if self.target_passes else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate, "tokens_per_pass": self.tokens_per_pass}


# ---------------------------------------------------------------- the accept / reject step (pure functions)

def accept_prob(p: Tensor, q: Tensor) -> Tensor:
    """min(1, p / q), elementwise; 1 where q = 0 (a token the drafter never proposes)."""
    return torch.where(q > 0, (p / q).clamp(max=1.0), torch.ones_like(p))


def residual(p: Tensor, q: Tensor) -> Tensor:
    """norm(max(0, p - q)) over the last dim: what to sample after a rejection. When p == q nothing is ever
    rejected and the residual is 0 / 0; return p then (any distribution would do)."""
    r = (p - q).clamp(min=0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp(min=torch.finfo(r.dtype).tiny), p)


def verify(p: Tensor, q: Tensor, drafts: Tensor, generator: torch.Generator | None = None) -> tuple[int, int]:
    """One round's verdict: p (n + 1, V) target probabilities, q (n, V) draft probabilities, drafts (n,).

    Returns (accepted, token): drafts[:accepted] are kept and `token` follows them, a resample from
    residual(p_i, q_i) at the first rejection, or a bonus draw from p_n when all n drafts pass.
    """
    # Leviathan et al. 2023, Algorithm 1: keep x_i ~ q_i if u < min(1, p_i(x_i) / q_i(x_i)), u ~ U(0, 1); greedy's
    # one-hot p and q make it exact (accept iff the argmaxes agree) though it still draws the random numbers
    for i, x in enumerate(drafts.tolist()):
        u = torch.rand((), generator=generator, device=p.device)
        if u >= accept_prob(p[i, x], q[i, x]):
            return i, int(torch.multinomial(residual(p[i], q[i]), 1, generator=generator))
    n = drafts.numel()
    return n, int(torch.multinomial(p[n], 1, generator=generator))


def next_token_probs(logits: Tensor, temperature: float, top_k: int | None = None, top_p: float = 1.0) -> Tensor:
    """logits (N, V) -> the distributions (N, V) float32 tokens are drawn from: softmax after temperature,
    top-k, top-p (`sampling.py`); temperature 0 (greedy) gives one-hot argmaxes."""
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    return torch.softmax(top_p_filter(logits, top_p), dim=-1)


def lookup_draft(ids: Tensor, ngram: int, k: int) -> Tensor:
    """Prompt lookup (Saxena 2023): the up to k tokens that followed the most recent earlier occurrence of the
    last `ngram` tokens of ids (T,); if there is none, of the last ngram - 1, ..., 1 tokens. Empty if no match.
    (Saxena's script takes the first occurrence; the most recent one follows the text being written.)"""
    t = ids.numel()
    for n in range(min(ngram, t - 1), 0, -1):
        windows = ids.unfold(0, n, 1)[:-1]  # (T - n, n): every n-gram but the suffix itself
        hits = (windows == ids[-n:]).all(-1).nonzero()
        if hits.numel():
            start = int(hits[-1]) + n
            return ids[start:start + k]
    return ids[:0]


# ---------------------------------------------------------------- drafters

class ModelDrafter:
    """Proposes tokens by sampling a small model autoregressively on its own KV cache."""

    def __init__(self, model: Transformer, capacity: int, sampling: dict, generator: torch.Generator | None):
        param = next(model.parameters())
        self.model, self.sampling, self.generator = model, sampling, generator
        self.cache = KVCache(model.cfg, 1, capacity, dtype=param.dtype, device=param.device)
        self.passes = 0

    def propose(self, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """ids (T,) -> k drafts (k,) and the distributions (k, V) they were drawn from."""
        drafts, q = [], []
        new = ids[self.cache.length:]  # the cache holds a prefix of ids; feed the rest
        for _ in range(k):
            logits = self.model(new[None], cache=self.cache)[0, -1:]  # (1, V)
            self.passes += 1
            probs = next_token_probs(logits, **self.sampling)
            new = torch.multinomial(probs, 1, generator=self.generator)[0]  # (1,)
            drafts.append(new)
            q.append(probs)
        if not drafts:
            return ids[:0], torch.empty(0, self.model.cfg.vocab_size, device=ids.device)
        return torch.cat(drafts), torch.cat(q)

    def rollback(self, length: int) -> None:
        """Keep at most the first `length` tokens: the ones the target accepted."""
        self.cache.crop(min(self.cache.length, length))


class LookupDrafter:
    """Proposes the continuation of the last n-gram's earlier occurrence; q is one-hot (a deterministic draft)."""

    def __init__(self, ngram: int, vocab_size: int):
        self.ngram, self.vocab_size, self.passes = ngram, vocab_size, 0

    def propose(self, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
        drafts = lookup_draft(ids, self.ngram, k)
        return drafts, torch.nn.functional.one_hot(drafts, self.vocab_size).float()

    def rollback(self, length: int) -> None:
        pass


# ---------------------------------------------------------------- the decoding loop

def speculative_generate(target: Transformer, draft: Transformer, input_ids: Tensor, max_new_tokens: int,
                         k: int = 4, temperature: float = 0.0, top_k: int | None = None,
                         generator: torch.Generator | None = None, *,
                         top_p: float = 1.0) -> tuple[Tensor, SpecStats]:
    """input_ids (1, T) -> (tokens (1, T + max_new_tokens), stats), distributed as the target's own sampling
    with the same temperature / top_k / top_p (greedy at temperature 0: the very tokens of greedy decoding).

    `draft` proposes k tokens per round; it must share the target's vocabulary. The two caches hold
    T + max_new_tokens tokens, which must fit both models' max_seq_len (the context does not slide).
    """
    if draft.cfg.vocab_size != target.cfg.vocab_size:
        raise ConfigError(f"the draft's vocab_size={draft.cfg.vocab_size} differs from the target's "
                          f"{target.cfg.vocab_size}: they must share a tokenizer")
    _check(draft, input_ids, max_new_tokens, k)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    drafter = ModelDrafter(draft, input_ids.shape[1] + max_new_tokens, sampling, generator)
    with eval_mode(draft):
        return _speculate(target, input_ids, max_new_tokens, drafter, k, sampling, generator)


def prompt_lookup_generate(target: Transformer, input_ids: Tensor, max_new_tokens: int, ngram: int = 3,
                           k: int = 4, temperature: float = 0.0, top_k: int | None = None,
                           generator: torch.Generator | None = None, *,
                           top_p: float = 1.0) -> tuple[Tensor, SpecStats]:
    """Speculative decoding drafted by prompt lookup (n-gram matching in the context, no draft model);
    arguments and guarantees as `speculative_generate`. A round without a match is a plain decoding step."""
    if ngram < 1:
        raise ConfigError(f"ngram={ngram} must be >= 1")
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    drafter = LookupDrafter(ngram, target.cfg.vocab_size)
    return _speculate(target, input_ids, max_new_tokens, drafter, k, sampling, generator)


@contextmanager
def eval_mode(model: Transformer) -> Iterator[None]:
    """Dropout off for the block, the model's mode restored after (switching costs a walk over all modules)."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _check(model: Transformer, input_ids: Tensor, max_new_tokens: int, k: int) -> None:
    if not model.cfg.causal:
        raise LlmlabError(f"speculative decoding needs causal decoders; this model has arch={model.cfg.arch!r}")
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise LlmlabError(f"speculative decoding runs one sequence at a time: input_ids must be (1, T) with "
                          f"T >= 1, got shape {tuple(input_ids.shape)}")
    if k < 1 or max_new_tokens < 0:
        raise ConfigError(f"need k >= 1 draft tokens per round and max_new_tokens >= 0, got k={k}, "
                          f"max_new_tokens={max_new_tokens}")
    total = input_ids.shape[1] + max_new_tokens
    if total > model.cfg.max_seq_len:
        raise LlmlabError(f"prompt ({input_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) = {total} tokens "
                          f"exceed max_seq_len={model.cfg.max_seq_len}: speculative decoding does not slide "
                          "the context; shorten the prompt or generate fewer tokens")


@torch.no_grad()
def _speculate(target: Transformer, input_ids: Tensor, max_new_tokens: int, drafter: ModelDrafter | LookupDrafter,
               k: int, sampling: dict, generator: torch.Generator | None) -> tuple[Tensor, SpecStats]:
    """Draft, verify in one target pass, keep the accepted prefix plus one token, roll the caches back; repeat."""
    _check(target, input_ids, max_new_tokens, k)
    n_prompt = input_ids.shape[1]
    param = next(target.parameters())
    cache = KVCache(target.cfg, 1, n_prompt + max_new_tokens, dtype=param.dtype, device=param.device)
    ids = input_ids[0]  # (T,); the cache holds a strict prefix of it, the rest is fed next round
    stats = SpecStats()
    with eval_mode(target):
        while ids.numel() - n_prompt < max_new_tokens:
            remaining = max_new_tokens - (ids.numel() - n_prompt)
            drafts, q = drafter.propose(ids, min(k, remaining - 1))  # a round emits up to n + 1 tokens
            n = drafts.numel()
            new = torch.cat([ids[cache.length:], drafts])
            logits = target(new[None], cache=cache)[0, -(n + 1):]  # (n + 1, V): after the pending token, each draft
            p = next_token_probs(logits, **sampling)
            accepted, token = verify(p, q, drafts, generator)
            ids = torch.cat([ids, drafts[:accepted], ids.new_tensor([token])])
            cache.crop(ids.numel() - 1)  # the new token is pending: fed (and cached) next round
            drafter.rollback(ids.numel() - 1)
            stats.proposed += n
            stats.accepted += accepted
            stats.target_passes += 1
    stats.generated = ids.numel() - n_prompt
    stats.draft_passes = drafter.passes
    return ids[None], stats


def layer_skip_draft(model: Transformer, n_layers: int) -> Transformer:
    """A draft made of the target's embeddings, first n_layers blocks, final norm and head (weights copied):
    self-speculative decoding without a second trained model (Zhang et al. 2023, "Draft & Verify")."""
    if not 1 <= n_layers <= model.cfg.n_layers:
        raise ConfigError(f"n_layers={n_layers} must be in [1, {model.cfg.n_layers}] (the target's layers)")
    param = next(model.parameters())
    draft = Transformer(model.cfg.replace(n_layers=n_layers)).to(param.device, param.dtype)
    missing, _ = draft.load_state_dict(model.state_dict(), strict=False)  # blocks >= n_layers are left out
    if missing:
        raise LlmlabError(f"cannot build a layer-skip draft: missing {missing[:5]}")
    return draft.eval()

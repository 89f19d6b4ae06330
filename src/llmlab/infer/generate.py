"""Autoregressive generation on a KV cache: prefill the prompt once, then feed one new token per step.

`stream` yields each step's tokens (what a server streams); `generate` collects them into a tensor. Both match
HF `generate` token for token (tests/infer/test_generate.py): the same logits processing (`sampling.py`), the
same single torch.multinomial call per step, eos handling (a finished row gets pad tokens while the others go
on) and left-padding positions (counted from each row's first real token).

Stop strings are found by decoding: after each step, a row's generated tokens are decoded in full and searched
for each stop string, so a stop string spanning several tokens is found at the step its last character
arrives (decoding the whole row, not just the new token, also handles tokens that are partial UTF-8
characters). The row then stops; its tokens end with the one that completed the stop string, and
`truncate_at_stop` cuts the decoded text before the stop string (OpenAI: the stop sequence is not returned).

compile=True (opt-in) runs each decode step as one torch.compile'd graph: the KV cache keeps a fixed capacity
(`StaticCache`: the new K/V is written at a slot given as a tensor, keys past the length are masked, not sliced),
so shapes never change and the step compiles once per (model, batch, capacity). Prefill stays eager.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.kv_cache import KVCache
from llmlab.infer.sampling import SamplingParams, process_logits, sample
from llmlab.model.transformer import Transformer


@dataclass
class Step:
    """One decoding step for a batch of B rows."""

    tokens: Tensor  # (B,) the token each row got; pad_token_id for rows that had already finished
    logprobs: Tensor  # (B, V) log-softmax of the model's raw logits (before penalties, temperature, filters)
    done: Tensor  # (B,) bool: the row has finished, at this step or before (eos, stop token, stop string)


def stream(model: Transformer, input_ids: Tensor, params: SamplingParams, *, attention_mask: Tensor | None = None,
           eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
           decode: Callable[[list[int]], str] | None = None,
           generator: torch.Generator | None = None, compile: bool = False) -> Iterator[Step]:
    """An iterator of one `Step` per generated token for input_ids (B, T), until every row is done or
    params.max_new_tokens. Arguments are checked now, not at the first step.

    attention_mask (B, T): 1 = token, 0 = left padding. eos_token_id and params.stop_token_ids end a row (the
    stopping token is kept); finished rows then get pad_token_id (default: the first eos id, else 0), as in HF.
    params.stop_strings need `decode` (token ids -> text). Randomness: `generator`, else a generator seeded with
    params.seed, else torch's global RNG (what HF uses: torch.manual_seed(s) then either gives the same tokens).
    The model runs in eval mode and is put back in its mode when the iterator ends or is closed.
    compile=True: decode steps run as one torch.compile'd graph (see the module docstring); a compilation
    failure raises LlmlabError at the first decode step.
    """
    if not model.cfg.causal:
        raise LlmlabError(f"generate needs a causal decoder; this model has arch={model.cfg.arch!r}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise LlmlabError(f"input_ids must be (batch, seq) with seq >= 1, got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise LlmlabError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                          f"{tuple(input_ids.shape)}")
    if compile and model.cfg.sliding_window is not None:
        # the compiled step attends over the whole capacity; a window would be measured from its last slot
        raise ConfigError(f"compile=True does not support sliding_window={model.cfg.sliding_window} models; "
                          "use compile=False")
    if params.stop_strings and decode is None:
        raise ConfigError("stop_strings need decode= (token ids -> text) to be detected")
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    stop_ids = torch.tensor(eos + list(params.stop_token_ids), dtype=torch.long, device=input_ids.device)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    if generator is None and params.seed is not None:
        generator = torch.Generator(input_ids.device).manual_seed(params.seed)
    return _steps(model, input_ids, attention_mask, params, stop_ids, pad, decode, generator, compile)


@torch.no_grad()
def _steps(model: Transformer, input_ids: Tensor, mask: Tensor | None, params: SamplingParams, stop_ids: Tensor,
           pad: int, decode: Callable[[list[int]], str] | None, generator: torch.Generator | None,
           compile: bool = False) -> Iterator[Step]:
    """The decoding loop behind `stream`: prefill once, then one token per step for all B rows."""
    if params.max_new_tokens == 0:
        return
    was_training = model.training
    model.eval()
    try:
        max_len = model.cfg.max_seq_len
        b, n_prompt = input_ids.shape
        ids = input_ids
        cache, logits = prefill(model, ids, mask, min(max_len, n_prompt + params.max_new_tokens))
        next_pos = mask.sum(-1, keepdim=True) if mask is not None else torch.full((b, 1), n_prompt)  # (B, 1)
        next_pos = next_pos.to(input_ids.device)
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        for step in range(params.max_new_tokens):
            if step > 0:
                if cache.length == cache.max_len:
                    # past max_seq_len: the context slides, re-prefilled from the last max_seq_len tokens
                    cache, logits = prefill(model, ids, mask, max_len)
                elif compile:
                    logits = compiled_step(model, cache, ids[:, -1:], next_pos, mask)
                else:
                    logits = model(ids[:, -1:], position_ids=next_pos, cache=cache)[:, -1]
                next_pos = next_pos + 1
            logits = logits.float()  # (B, V), as HF: processing and sampling in fp32
            scores = process_logits(logits, ids, params, attention_mask=mask, n_prompt=n_prompt)
            tokens = scores.argmax(dim=-1) if params.greedy else sample(scores, generator)  # (B,)
            tokens = tokens.masked_fill(done, pad)
            ids = torch.cat([ids, tokens[:, None]], dim=1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            finished = torch.isin(tokens, stop_ids)
            if params.stop_strings:
                finished |= hits_stop_string(ids[:, n_prompt:], params.stop_strings, decode)
            done = done | finished
            yield Step(tokens, torch.log_softmax(logits, dim=-1), done.clone())
            if done.all():
                return
    finally:
        model.train(was_training)


def prefill(model: Transformer, ids: Tensor, mask: Tensor | None, capacity: int) -> tuple[KVCache, Tensor]:
    """Run the last `capacity` tokens of ids (B, T) through a new cache; returns it and the last logits (B, V).

    With left padding, positions count from each row's first real token (HF's convention).
    """
    ids = ids[:, -capacity:]
    mask = mask[:, -capacity:] if mask is not None else None
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0) if mask is not None else None  # (B, T)
    param = next(model.parameters())
    cache = KVCache(model.cfg, ids.shape[0], max_len=capacity, dtype=param.dtype, device=param.device)
    logits = model(ids, attention_mask=mask, position_ids=positions, cache=cache)[:, -1]
    return cache, logits


class StaticCache:
    """A KVCache's buffers seen with fixed shapes, for one compiled decode step: the new K/V (one token) goes to
    slot `slot` (a (1,) tensor, so the graph does not specialise on it) and every layer attends over the whole
    capacity, keys past the slot masked out."""

    def __init__(self, k: Tensor, v: Tensor, slot: Tensor, key_mask: Tensor) -> None:
        self.k, self.v, self.slot = k, v, slot  # k, v: (L, B, Hkv, capacity, D)
        self.key_mask = key_mask  # (B, capacity) bool: a real token at or before the slot

    def reserve(self, batch_size: int, n_new: int, attention_mask: Tensor | None = None) -> Tensor:
        return self.slot.expand(batch_size, n_new)  # positions: the caller passes its own position_ids

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.k[layer].index_copy_(2, self.slot, k)  # k: (B, Hkv, 1, D) into slot of (B, Hkv, capacity, D)
        self.v[layer].index_copy_(2, self.slot, v)
        return self.k[layer], self.v[layer], self.key_mask


def _decode_step(model: Transformer, k: Tensor, v: Tensor, token: Tensor, position: Tensor, slot: Tensor,
                 pad_mask: Tensor | None) -> Tensor:
    """One token per row through `model` on fixed-capacity buffers k, v: logits (B, V). pad_mask (B, capacity)."""
    key_mask = (torch.arange(k.shape[3], device=k.device) <= slot).expand(k.shape[1], -1)  # (B, capacity)
    if pad_mask is not None:
        key_mask = key_mask & pad_mask
    return model(token, position_ids=position, cache=StaticCache(k, v, slot, key_mask))[:, -1]


_compiled_decode_step = None


def compiled_step(model: Transformer, cache: KVCache, token: Tensor, position: Tensor, mask: Tensor | None) -> Tensor:
    """`model(token, position_ids=position, cache=cache)[:, -1]` as one torch.compile'd graph over the whole
    capacity of a full (non-rolling) KVCache; mask (B, length + 1) covers past and new tokens, or None."""
    global _compiled_decode_step
    if cache.window is not None:
        raise LlmlabError("compile=True needs a full KVCache, not a rolling buffer")
    b, capacity = cache.batch_size, cache.k.shape[3]
    slot = torch.tensor([cache.length], device=cache.k.device)
    pad_mask = None
    if mask is not None:
        pad_mask = torch.ones(b, capacity, dtype=torch.bool, device=cache.k.device)
        pad_mask[:, :mask.shape[1]] = mask.bool()
    cache.reserve(b, 1, mask)  # bookkeeping only: length and padding mask, as an eager step would leave them
    if _compiled_decode_step is None:
        _compiled_decode_step = torch.compile(_decode_step, dynamic=False)
    try:
        # fresh contiguous inputs: a view's strides change every step and would recompile the graph
        return _compiled_decode_step(model, cache.k, cache.v, token.clone(memory_format=torch.contiguous_format),
                                     position.clone(memory_format=torch.contiguous_format), slot, pad_mask)
    except Exception as e:  # inductor needs a working C++ compiler on CPU, Triton on GPU
        raise compile_error(e) from e


def compile_error(e: Exception) -> LlmlabError:
    """A failed torch.compile as one line a user can act on (inductor's messages run to many lines)."""
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    return LlmlabError(f"compile=True: torch.compile failed ({type(e).__name__}: {first}); decode with compile=False")


def hits_stop_string(generated: Tensor, stop_strings: Sequence[str], decode: Callable[[list[int]], str]) -> Tensor:
    """generated (B, n) -> (B,) bool: the row's decoded text contains a stop string."""
    texts = [decode(row) for row in generated.tolist()]
    return torch.tensor([any(s in text for s in stop_strings) for text in texts], device=generated.device)


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """The text before the earliest stop string it contains (all of it when there is none)."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut]


def generate(model: Transformer, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None, *,
             attention_mask: Tensor | None = None, eos_token_id: int | Sequence[int] | None = None,
             pad_token_id: int | None = None, decode: Callable[[list[int]], str] | None = None,
             compile: bool = False, **sampling) -> Tensor:
    """input_ids (B, T) -> (B, T + n): the prompt followed by the generated tokens, n <= max_new_tokens.

    temperature=0 is greedy. `sampling` takes any other `SamplingParams` field (top_p=0.9, min_p=0.05,
    repetition_penalty=1.2, stop_strings=("\\n",), seed=0, ...); the other arguments are `stream`'s. Without
    eos/stop settings every row gets exactly max_new_tokens tokens; with them, generation ends when all rows
    have finished, and finished rows are filled with pad_token_id. compile=True: see `stream`.
    """
    unknown = sorted(set(sampling) - {f.name for f in dataclasses.fields(SamplingParams)})
    if unknown:
        raise ConfigError(f"unknown sampling parameter(s): {', '.join(unknown)}")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, **sampling)
    tokens = [step.tokens for step in stream(model, input_ids, params, attention_mask=attention_mask,
                                             eos_token_id=eos_token_id, pad_token_id=pad_token_id, decode=decode,
                                             generator=generator, compile=compile)]
    return torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1) if tokens else input_ids.clone()

"""The contiguous KV cache: each layer's keys and values of the tokens seen so far, so that a decode step
computes K/V for the new token only and attends over the stored ones (Pope et al. 2022, "Efficiently
Scaling Transformer Inference"). Keys are stored after RoPE, as HF does: a cached key never moves again.

Pass it as `model(new_ids, cache=cache)`; `Transformer.forward` calls `reserve` once, then `update` in
each layer. A sliding-window model can keep only the last `window` tokens (Mistral's rolling buffer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.errors import ConfigError, LlmlabError
from llmlab.model.config import TransformerConfig


class CacheFullError(LlmlabError):
    """The cache has no room for the new tokens; nothing was changed, so a caller can queue or finish requests."""


def bytes_per_token(cfg: TransformerConfig, dtype: torch.dtype = torch.float32) -> int:
    """KV cache bytes one token takes across the whole model."""
    # K and V (2) x n_layers x n_kv_heads x head_dim numbers x bytes per number: GQA/MQA shrink it by H / Hkv
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * dtype.itemsize


class KVCache:
    """Preallocated K/V buffers (n_layers, B, Hkv, capacity, D) for a batch of B sequences that grow together.

    capacity = max_len (default cfg.max_seq_len). rolling=True (sliding-window models only): capacity = window
    and position p lives in slot p % window (Mistral's rolling buffer, Jiang et al. 2023), since no query looks
    further back than the window; decoding can then go on past max_len with memory fixed at window tokens.
    Padded batches (left padding): give each forward an attention_mask over past and new tokens (B, length);
    a forward without one counts its new tokens as real.
    """

    def __init__(self, cfg: TransformerConfig, batch_size: int, max_len: int | None = None, *,
                 rolling: bool = False, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        if rolling and cfg.sliding_window is None:
            raise ConfigError("rolling=True keeps only the last sliding_window tokens, but the model has "
                              "sliding_window=None: use the full cache")
        self.max_len = cfg.max_seq_len if max_len is None else max_len
        self.window = cfg.sliding_window if rolling else None
        capacity = self.window if rolling else self.max_len
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, capacity, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # tokens per row so far, padding included, counting the forward in progress
        self.mask: Tensor | None = None  # (B, length) bool, True = real token; None while there is no padding

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def memory_bytes(self) -> int:
        """Bytes of the preallocated K and V buffers."""
        return 2 * self.k.numel() * self.k.element_size()

    def reserve(self, batch_size: int, n_new: int, attention_mask: Tensor | None = None) -> Tensor:
        """Make room for n_new tokens in every row; returns their positions (B, n_new), continuing from length."""
        if batch_size != self.batch_size:
            raise LlmlabError(f"input batch size {batch_size} != the cache's batch size {self.batch_size}")
        total = self.length + n_new
        if self.window is None and total > self.max_len:
            raise CacheFullError(f"{self.length} cached + {n_new} new tokens exceed the cache's max_len={self.max_len}")
        if attention_mask is not None:
            if attention_mask.shape != (batch_size, total):
                raise LlmlabError(f"with a cache, attention_mask covers past and new tokens: expected "
                                  f"{(batch_size, total)}, got {tuple(attention_mask.shape)}")
            self.mask = attention_mask.to(self.k.device, torch.bool)
        elif self.mask is not None:
            self.mask = torch.cat((self.mask, self.mask.new_ones(batch_size, n_new)), dim=1)
        positions = torch.arange(self.length, total, device=self.k.device).expand(batch_size, n_new)
        self.length = total
        return positions

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Store the new k, v (B, Hkv, n_new, D) of `layer`; return keys, values (B, Hkv, Tk, D) and their
        padding mask (B, Tk) or None: what the new queries attend over, oldest first."""
        if k.dtype != self.k.dtype:
            raise LlmlabError(f"the model computes in {k.dtype} but the cache holds {self.k.dtype}: build the "
                              f"cache with dtype={k.dtype}")
        start = self.length - k.shape[2]  # position of the first new token
        if self.window is None:
            self._write(layer, k, v, start)
            keys, values = self._read(layer, self.length)  # views of the buffer, no copy
        else:
            # read before writing: with n_new > 1 the new tokens may overwrite slots the first new queries need
            past_k, past_v = self._read(layer, start)
            keys, values = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
            keep = min(k.shape[2], self.window)
            self._write(layer, k[:, :, -keep:], v[:, :, -keep:], self.length - keep)
        mask = None if self.mask is None else self.mask[:, -keys.shape[2]:]  # the rolling buffer keeps the last Tk
        return keys, values, mask

    def crop(self, length: int) -> None:
        """Forget every token from position `length` on (speculative decoding's rollback of rejected drafts);
        the next forward writes over their slots. A rolling buffer cannot: it has overwritten older tokens."""
        if self.window is not None:
            raise LlmlabError("crop needs the full cache: a rolling buffer has overwritten the tokens it would "
                              "roll back to; build the KVCache with rolling=False")
        if not 0 <= length <= self.length:
            raise LlmlabError(f"crop length={length} must be in [0, {self.length}] (the tokens cached)")
        self.length = length
        if self.mask is not None:
            self.mask = self.mask[:, :length]

    def get(self, layer: int) -> tuple[Tensor, Tensor]:
        """The keys and values (B, Hkv, n, D) stored for `layer`, oldest first (rolling: the last `window`)."""
        return self._read(layer, self.length)

    def _slots(self, start: int, end: int) -> Tensor:
        """Buffer slots of positions [start, end): the position itself, or position % window when rolling."""
        pos = torch.arange(start, end, device=self.k.device)
        return pos if self.window is None else pos % self.window

    def _write(self, layer: int, k: Tensor, v: Tensor, start: int) -> None:
        if self.window is None:  # contiguous slots: a plain slice copy, no index tensor to build
            self.k[layer, :, :, start:start + k.shape[2]] = k
            self.v[layer, :, :, start:start + k.shape[2]] = v
            return
        slots = self._slots(start, start + k.shape[2])
        self.k[layer].index_copy_(2, slots, k)  # self.k[layer]: (B, Hkv, capacity, D), a view of the buffer
        self.v[layer].index_copy_(2, slots, v)

    def _read(self, layer: int, end: int) -> tuple[Tensor, Tensor]:
        """Stored keys and values of the positions before `end` that the buffer still holds, oldest first."""
        if self.window is None:
            return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        slots = self._slots(max(0, end - self.window), end)
        return self.k[layer].index_select(2, slots), self.v[layer].index_select(2, slots)

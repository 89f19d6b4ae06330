"""Perplexity of a causal LM over a long token stream, with the strided sliding window of HF's guide
"Perplexity of fixed-length models" (transformers docs).

PPL = exp(-(1/n) * sum_i log p(x_i | x_<i)). A model sees at most `max_length` tokens, so the stream is cut into
windows [begin, end) with begin = 0, stride, 2*stride, ... and end = min(begin + max_length, N), stopping at the
first window that reaches N. Tokens before `prev_end` (the previous window's end) are context only; the labels of a
window are the tokens [prev_end, end). stride == max_length: disjoint chunks; stride < max_length: every token
after the first window is scored with at least max_length - stride tokens of context.

Which tokens are scored (n_tokens). Token i is predicted by the logits at i - 1, so a window scores
[max(prev_end, begin + 1), end): a window that starts with no context (begin == prev_end) cannot score its first
token. Every token is scored at most once, and
    stride <  max_length: n_tokens = N - 1                     (only token 0 is unscored)
    stride == max_length: n_tokens = N - ceil(N / max_length)  (the first token of every chunk is unscored).

The guide's number (`hf_guide_nll`). The guide averages each window's mean loss weighted by
`(labels != -100).sum() - 1` = trg_len - 1, where trg_len = end - prev_end. That is the count it scores for a
window with no context (its first label is not predicted), but an overlapping window scores all trg_len labels
(its first label is predicted from the context before it), so the guide weights those windows by one token less
than they score. `nll` / `ppl` are the exact token-level average; `hf_guide_nll` reproduces the guide's weighting.
The two are identical when stride == max_length. (Where a window scores nothing, e.g. a lone last token with
stride == max_length, the guide multiplies a NaN mean by 0 and returns NaN; here it contributes 0.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.model.loss import cross_entropy


@dataclass(frozen=True)
class Window:
    """Tokens [begin, end) go through the model; the labels are [prev_end, end), as in the HF guide."""

    begin: int
    end: int
    prev_end: int

    @property
    def first_scored(self) -> int:
        # token i is predicted from the logits at i - 1: the window's first token never is
        return max(self.prev_end, self.begin + 1)

    @property
    def n_scored(self) -> int:
        return self.end - self.first_scored

    @property
    def hf_weight(self) -> int:
        # the guide's num_loss_tokens = (target_ids != -100).sum() - batch_size = trg_len - 1
        return self.end - self.prev_end - 1


@dataclass(frozen=True)
class PerplexityResult:
    nll_sum: float  # total NLL in nats over the scored tokens
    n_tokens: int  # tokens scored (see the module docstring)
    n_windows: int
    n_input_tokens: int  # N, the length of the stream
    hf_guide_nll: float  # mean NLL with the HF guide's window weights (see the module docstring)

    @property
    def nll(self) -> float:
        """Mean NLL per scored token, in nats."""
        return self.nll_sum / self.n_tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @property
    def bits_per_token(self) -> float:
        return self.nll / math.log(2)

    @property
    def hf_guide_ppl(self) -> float:
        return math.exp(self.hf_guide_nll)


@dataclass(frozen=True)
class TextPerplexity:
    perplexity: PerplexityResult
    n_bytes: int  # UTF-8 bytes of the text
    bits_per_byte: float


def sliding_windows(n: int, max_length: int, stride: int) -> list[Window]:
    """The HF guide's windows over a stream of n tokens: begin = 0, stride, ...; stop at the first that reaches n."""
    if max_length < 2:
        raise LlmlabError(f"max_length={max_length} must be at least 2 (a token to predict and one to predict from)")
    if not 1 <= stride <= max_length:
        raise LlmlabError(f"stride={stride} must lie in [1, max_length={max_length}]; a larger stride skips tokens")
    if n < 2:
        raise LlmlabError(f"perplexity needs at least 2 tokens, got {n}")
    windows, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        windows.append(Window(begin, end, prev_end))
        prev_end = end
        if end == n:
            break
    return windows


def bits_per_byte(nll_total: float, n_bytes: int) -> float:
    """Tokenizer-independent loss: total NLL (nats) / ln 2 / UTF-8 bytes  (Gao et al. 2020, The Pile, sec 2.1)."""
    if n_bytes <= 0:
        raise LlmlabError(f"n_bytes={n_bytes} must be positive")
    return nll_total / math.log(2) / n_bytes


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    token_ids: list[int] | Tensor,
    *,
    max_length: int,
    stride: int,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """Strided sliding-window perplexity of a causal LM (llmlab Transformer or an HF model) over one token stream.

    `batch_size` windows of equal length go through the model together; `progress(windows_done, windows_total)`
    is called after each forward."""
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    if ids.dim() != 1:
        raise LlmlabError(f"token_ids must be one stream (1-D), got shape {tuple(ids.shape)}")
    if batch_size < 1:
        raise LlmlabError(f"batch_size={batch_size} must be at least 1")
    windows = sliding_windows(len(ids), max_length, stride)
    _check_model(model, ids)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nlls = []  # per window, nats summed over its scored tokens
    try:
        for group in _equal_length_batches(windows, batch_size):
            x = torch.stack([ids[w.begin : w.end] for w in group]).to(device)  # (B, L)
            out = model(x)
            logits = out.logits if hasattr(out, "logits") else out  # (B, L, V)
            for row, w in enumerate(group):
                s = w.first_scored - w.begin  # first scored position inside the window
                # -log p(x_t | x_<t) for t in [s, L): the logits at t - 1 score the token at t
                nlls.append(cross_entropy(logits[row, s - 1 : -1], x[row, s:], reduction="sum").item())
            if progress is not None:
                progress(len(nlls), len(windows))
    finally:
        model.train(was_training)
    hf_weights = [w.hf_weight for w in windows]
    # the guide: sum_w mean_w * (trg_len_w - 1) / sum_w (trg_len_w - 1); a window scoring nothing weighs 0
    hf_sum = sum(nll / w.n_scored * h for nll, w, h in zip(nlls, windows, hf_weights, strict=True) if h > 0)
    return PerplexityResult(nll_sum=sum(nlls), n_tokens=sum(w.n_scored for w in windows), n_windows=len(windows),
                            n_input_tokens=len(ids), hf_guide_nll=hf_sum / sum(h for h in hf_weights if h > 0))


def evaluate_text(
    model: torch.nn.Module,
    tokenizer,
    text: str,
    max_length: int,
    stride: int,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> TextPerplexity:
    """Encode `text` with any tokenizer that has `encode(str) -> list[int]`; perplexity and bits per byte.

    Bits per byte as The Pile defines it: BPB = (L_T / L_B) * l / ln 2, with L_T the tokens and L_B the UTF-8
    bytes of the whole text, and l the mean NLL per scored token."""
    ids = tokenizer.encode(text)
    result = perplexity(model, ids, max_length=max_length, stride=stride, batch_size=batch_size, progress=progress)
    n_bytes = len(text.encode("utf-8"))
    return TextPerplexity(result, n_bytes, bits_per_byte(result.nll * result.n_input_tokens, n_bytes))


def _equal_length_batches(windows: list[Window], batch_size: int) -> list[list[Window]]:
    """Consecutive windows, at most batch_size per group, all of one length (only the last window may be shorter)."""
    groups: list[list[Window]] = []
    for w in windows:
        last = groups[-1] if groups else None
        if last and len(last) < batch_size and last[0].end - last[0].begin == w.end - w.begin:
            last.append(w)
        else:
            groups.append([w])
    return groups


def _check_model(model: torch.nn.Module, ids: Tensor) -> None:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and cfg.arch != "decoder":
        raise LlmlabError(f"perplexity needs a causal LM; this model is arch={cfg.arch!r}")
    vocab = cfg.vocab_size if cfg is not None else model.config.vocab_size
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        raise LlmlabError(f"token id {hi if hi >= vocab else lo} is outside the model's vocabulary [0, {vocab}): "
                          "is this the model's tokenizer?")

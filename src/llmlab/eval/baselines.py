"""Loss baselines a language model must beat, in nats per token, for the same tokenizer.

uniform: ln V — a model that knows nothing.
unigram: cross-entropy of the val tokens under the train tokens' frequencies (add-alpha smoothed) — a model
that knows which tokens are common but ignores context. A trained LM below this has learned context.
"""

from __future__ import annotations

import math

import numpy as np


def uniform_loss(vocab_size: int) -> float:
    return math.log(vocab_size)


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int, alpha: float = 1.0) -> float:
    """-(1/N) sum_i log p(val_i), p(t) = (count_train(t) + alpha) / (N_train + alpha V)  (Laplace smoothing)."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    log_p = np.log(counts + alpha) - math.log(counts.sum() + alpha * vocab_size)
    return float(-log_p[np.asarray(val_tokens, dtype=np.int64)].mean())

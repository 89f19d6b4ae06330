"""Evaluation: perplexity with HF's strided sliding window, bits per byte."""

from llmlab.eval.perplexity import (
    PerplexityResult,
    TextPerplexity,
    Window,
    bits_per_byte,
    evaluate_text,
    perplexity,
    sliding_windows,
)

__all__ = ["PerplexityResult", "TextPerplexity", "Window", "bits_per_byte", "evaluate_text", "perplexity",
           "sliding_windows"]

"""Inference: sampling, KV-cached generation (streaming), beam search."""

from llmlab.infer.beam import beam_search
from llmlab.infer.generate import generate, stream
from llmlab.infer.sampling import SamplingParams

__all__ = ["SamplingParams", "beam_search", "generate", "stream"]

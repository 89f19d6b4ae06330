"""Inference: sampling, KV-cached generation (streaming), beam search, speculative decoding, seq2seq greedy."""

from llmlab.infer.beam import beam_search
from llmlab.infer.generate import generate, stream
from llmlab.infer.sampling import SamplingParams
from llmlab.infer.seq2seq_generate import generate_seq2seq
from llmlab.infer.speculative import prompt_lookup_generate, speculative_generate

__all__ = ["SamplingParams", "beam_search", "generate", "generate_seq2seq", "prompt_lookup_generate",
           "speculative_generate", "stream"]

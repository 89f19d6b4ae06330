"""Inference: text generation from a trained model."""

from llmlab.infer.generate import generate

__all__ = ["generate"]

"""Applications built on the workbench's pieces: retrieval (BM25) for RAG-style pipelines."""

from llmlab.apps.bm25 import BM25, tokenize

__all__ = ["BM25", "tokenize"]

"""Drills: write an LLM building block by hand, graded against the very code llmlab runs (see README.md)."""

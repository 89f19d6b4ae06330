"""Tests never touch the network: every HF object is built from a config."""

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(var, "1")

# trust_remote_code loads copy model code into HF_MODULES_CACHE, under the export dir's name: one private cache per
# test process (each xdist worker too), so workers never write the same files and ~/.cache is left alone.
# transformers reads the variable once, at import: it must be set before any test imports it.
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="llmlab-hf-modules-")
atexit.register(shutil.rmtree, os.environ["HF_MODULES_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

# pytest -n 2 runs two workers on the 2 CI cores: one thread each avoids oversubscription
torch.set_num_threads(1)


@pytest.fixture
def dynamo_counters() -> Iterator[dict]:
    """torch._dynamo's counters (graph breaks, unique graphs) from a fresh start: caches emptied, so the test's graphs
    are compiled, and counted, during the test whatever earlier tests compiled."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield counters
    counters.clear()

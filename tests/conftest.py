"""Tests never touch the network: every HF object is built from a config."""

import os

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(var, "1")

import torch  # noqa: E402

# pytest -n 2 runs two workers on the 2 CI cores: one thread each avoids oversubscription
torch.set_num_threads(1)

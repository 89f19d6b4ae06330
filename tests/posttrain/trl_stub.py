"""Run TRL 1.16 trainer methods on given tensors: a stand-in `self` with only the attributes those methods read."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM


class Accelerator:
    """Single-process accelerate.Accelerator: gather/reduce are the identity."""

    device = torch.device("cpu")
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x

    def unwrap_model(self, model):
        return model


def trainer_self(**attrs) -> SimpleNamespace:
    """`self` for calling e.g. `DPOTrainer._compute_loss(trainer_self(...), model, inputs, False)`."""
    base = dict(accelerator=Accelerator(), model=SimpleNamespace(training=True), aux_loss_enabled=False,
                _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    return SimpleNamespace(**{**base, **attrs})


def tiny_llama(seed: int) -> LlamaForCausalLM:
    """A 2-layer random Llama built from a config (no download), eager attention, eval mode (no dropout)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    cfg._attn_implementation = "eager"
    return LlamaForCausalLM(cfg).eval()

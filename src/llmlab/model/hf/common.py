"""What every HF family converter shares: activation names, field checks, and name-table renaming."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig

# HF `hidden_act` / `activation_function` -> ours (transformers/activations.py: ACT2FN)
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu",
               "swish": "silu", "relu": "relu"}
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "silu": "silu", "relu": "relu"}


def act_from_hf(name: str, field: str) -> str:
    if name not in ACT_FROM_HF:
        raise LlmlabError(f"{field}={name!r} is not supported; llmlab has {', '.join(sorted(ACT_FROM_HF))}")
    return ACT_FROM_HF[name]


def require(cfg: TransformerConfig, family: str, **expected: Any) -> None:
    """Raise, naming the first field whose value the HF family cannot express."""
    for field, want in expected.items():
        have = getattr(cfg, field)
        if have != want:
            raise LlmlabError(f"cannot export as {family}: {field}={have!r}, {family} needs {field}={want!r}")


def refuse_if(cond: bool, message: str) -> None:
    if cond:
        raise LlmlabError(message)


def take(hf_state: dict[str, Tensor], names: dict[str, str], ignore: tuple[str, ...], source: str
         ) -> dict[str, Tensor]:
    """{ours: hf_state[hf]} for names {ours: hf}. A missing key raises; so does a leftover one not in ignore.

    ignore holds name suffixes of tensors we drop on purpose (causal-mask buffers, RoPE caches, tied copies).
    """
    missing = [hf for hf in names.values() if hf not in hf_state]
    if missing:
        raise LlmlabError(f"{source}: checkpoint lacks {len(missing)} tensor(s) its config needs, "
                          f"e.g. {missing[:3]}")
    used = set(names.values())
    extra = sorted(k for k in hf_state if k not in used and not k.endswith(ignore))
    if extra:
        raise LlmlabError(f"{source}: checkpoint has {len(extra)} tensor(s) its config does not explain, "
                          f"e.g. {extra[:3]}")
    return {ours: hf_state[hf] for ours, hf in names.items()}


def strip_prefix(hf_state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Drop a leading `prefix` (e.g. "model.") so ...ForCausalLM and base-model checkpoints read the same."""
    return {k.removeprefix(prefix): v for k, v in hf_state.items()}

"""model_type "llmlab" (HF remote code) <-> llmlab: any TransformerConfig, for configs no native family expresses.

config.json embeds the whole TransformerConfig under `llmlab_config`, and its `auto_map` names the two files in
`remote_code/` that `save_hf_model` copies next to the weights: thin transformers wrappers that build the
installed llmlab Transformer, so `AutoModelFor{CausalLM,MaskedLM}.from_pretrained(dir, trust_remote_code=True)`
runs our own model code. Weights keep our names under a "transformer." prefix; a tied lm_head is not stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.hf.common import take
from llmlab.model.transformer import Transformer

MODEL_TYPE = "llmlab"
CODE_DIR = Path(__file__).parent / "remote_code"
CODE_FILES = ("configuration_llmlab.py", "modeling_llmlab.py")
PREFIX = "transformer."  # the wrapper's attribute holding the Transformer


def config_from_hf(d: dict[str, Any]) -> TransformerConfig:
    if not isinstance(d.get("llmlab_config"), dict):
        raise LlmlabError("model_type='llmlab' config.json has no llmlab_config object (the TransformerConfig)")
    cfg = TransformerConfig.from_dict(d["llmlab_config"])
    if cfg.arch == "encoder-decoder":
        raise LlmlabError("model_type='llmlab' holds a Transformer; arch='encoder-decoder' exports as t5 instead")
    return cfg


def config_to_hf(cfg: TransformerConfig) -> dict[str, Any]:
    head = "CausalLM" if cfg.causal else "MaskedLM"
    return {
        "model_type": MODEL_TYPE, "architectures": [f"LlmlabFor{head}"],
        "auto_map": {"AutoConfig": "configuration_llmlab.LlmlabConfig",
                     f"AutoModelFor{head}": f"modeling_llmlab.LlmlabFor{head}"},
        "llmlab_config": cfg.to_dict(), "tie_word_embeddings": cfg.tie_embeddings,
    }


def _names(cfg: TransformerConfig) -> dict[str, str]:
    """ours -> HF: every state key of Transformer(cfg) (built on the meta device: no memory), prefixed."""
    with torch.device("meta"):
        keys = Transformer(cfg).state_dict().keys()
    return {k: PREFIX + k for k in keys if not (cfg.tie_embeddings and k == "lm_head.weight")}


def state_from_hf(hf_state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    state = take(hf_state, _names(cfg), (), MODEL_TYPE)
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state


def state_to_hf(state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    return {hf: state[ours].contiguous() for ours, hf in _names(cfg).items()}

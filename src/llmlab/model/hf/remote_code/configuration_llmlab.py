"""`LlmlabConfig`: the HF config of an llmlab model that no native HF family expresses.

`llmlab.model.hf.save_hf_model` copies this file next to the weights; transformers loads it with
`trust_remote_code=True`. The whole llmlab `TransformerConfig` rides along in `llmlab_config` (its `to_dict()`):
this class only carries it, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig


class LlmlabConfig(PreTrainedConfig):
    model_type = "llmlab"

    llmlab_config: dict[str, Any] | None = None  # TransformerConfig.to_dict()
    tie_word_embeddings: bool = False  # HF ties lm_head to the embeddings by this flag; = tie_embeddings

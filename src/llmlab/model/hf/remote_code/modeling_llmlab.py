"""`LlmlabForCausalLM` and `LlmlabForMaskedLM`: HF `PreTrainedModel` wrappers around the installed llmlab Transformer.

`llmlab.model.hf.save_hf_model` copies this file next to the weights; transformers loads it with
`trust_remote_code=True`. No model code lives here: `self.transformer` is `llmlab.model.transformer.Transformer`
built from `config.llmlab_config`, so the weights keep llmlab's names under a "transformer." prefix.
`generate` works without a KV cache: every step runs the whole sequence so far.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, MaskedLMOutput

from llmlab.model.config import TransformerConfig
from llmlab.model.transformer import Transformer, init_parameter

from .configuration_llmlab import LlmlabConfig


def fresh_buffers(cfg: TransformerConfig) -> dict[str, Tensor]:
    """Every buffer of Transformer(cfg), by name, computed on the CPU. Parameters go to the meta device as they are
    registered, so this costs no parameter memory or init (accelerate's init_empty_weights(include_buffers=False))."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        with torch.device("cpu"):
            return dict(Transformer(cfg).named_buffers())
    finally:
        nn.Module.register_parameter = register


class LlmlabPreTrainedModel(PreTrainedModel):
    config_class = LlmlabConfig
    # HF ties these (target: source) when config.tie_word_embeddings, after loading a checkpoint without the target
    _tied_weights_keys = {"transformer.lm_head.weight": "transformer.tok_emb.weight"}
    _no_split_modules = ["Block"]

    def __init__(self, config: LlmlabConfig) -> None:
        super().__init__(config)
        self.transformer = Transformer(TransformerConfig.from_dict(config.llmlab_config))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.tok_emb = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.transformer.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.transformer.lm_head = value

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Fill what loading did not. from_pretrained builds the model on the meta device and leaves non-persistent
        buffers (RoPE frequencies, position tables, ALiBi slopes) as empty memory: they get llmlab's values again.
        A parameter the checkpoint lacked gets llmlab's own init. HF flags every tensor it loaded."""
        loaded = lambda t: getattr(t, "_is_hf_initialized", False)  # noqa: E731
        buffers = [(n, b) for n, b in module.named_buffers(recurse=False) if not loaded(b)]
        params = [(n, p) for n, p in module.named_parameters(recurse=False) if not loaded(p)]
        if not (buffers or params):
            return
        prefix = next((n for n, m in self.transformer.named_modules() if m is module), None)
        if prefix is None:  # not part of the llmlab Transformer
            return
        qualified = lambda name: f"{prefix}.{name}" if prefix else name  # noqa: E731
        if buffers:
            fresh = fresh_buffers(self.transformer.cfg)
            for name, b in buffers:
                b.copy_(fresh[qualified(name)])
        for name, p in params:
            init_parameter(qualified(name), p, self.transformer.cfg)

    def _logits(self, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None,
                token_type_ids: Tensor | None, kwargs: dict[str, Any]) -> Tensor:
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("llmlab models take input_ids, not inputs_embeds")
        return self.transformer(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                token_type_ids=token_type_ids)

    def _loss(self, logits: Tensor, labels: Tensor | None, kwargs: dict[str, Any]) -> Tensor | None:
        """HF's loss for this class (next-token for CausalLM, per position for MaskedLM); None without labels."""
        if labels is None:
            return None
        return self.loss_function(logits=logits, labels=labels, vocab_size=self.transformer.cfg.vocab_size,
                                  num_items_in_batch=kwargs.get("num_items_in_batch"))


class LlmlabForCausalLM(LlmlabPreTrainedModel, GenerationMixin):
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None, return_dict: bool | None = None,
                **kwargs: Any) -> CausalLMOutput | tuple[Tensor, ...]:
        """logits (B, T, vocab); with labels, the mean next-token loss (label i scores logits i-1; -100 ignored)."""
        logits = self._logits(input_ids, attention_mask, position_ids, token_type_ids, kwargs)
        loss = self._loss(logits, labels, kwargs)
        out = CausalLMOutput(loss=loss, logits=logits)
        return out if return_dict is not False else out.to_tuple()

    # No KV cache, whatever use_cache says: generate builds none, and each step runs the whole sequence so far
    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    def prepare_inputs_for_generation(self, input_ids: Tensor, **kwargs: Any) -> dict[str, Any]:
        kwargs["next_sequence_length"] = None  # with use_cache=True, generate would pass only the newest token
        return super().prepare_inputs_for_generation(input_ids, **kwargs)


class LlmlabForMaskedLM(LlmlabPreTrainedModel):
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, labels: Tensor | None = None, return_dict: bool | None = None,
                **kwargs: Any) -> MaskedLMOutput | tuple[Tensor, ...]:
        """logits (B, T, vocab); with labels, the mean loss over positions whose label is not -100."""
        logits = self._logits(input_ids, attention_mask, position_ids, token_type_ids, kwargs)
        loss = self._loss(logits, labels, kwargs)
        out = MaskedLMOutput(loss=loss, logits=logits)
        return out if return_dict is not False else out.to_tuple()

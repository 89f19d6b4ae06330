"""Prefix tuning (Li & Liang 2021): P trainable key/value vectors per layer and K/V head, prepended to every layer's
attention keys and values; the model's own weights stay frozen. PEFT's `PrefixTuningConfig` on a causal LM.

What a forward computes, as PEFT 0.21 does on HF Llama/GPT-2 (`PeftModelForCausalLM.forward`, `get_prompt`): the
prefix is a past KV cache of P tokens, so the T real tokens sit at positions P .. P+T-1 (explicit position_ids are
shifted by P), every query sees all P prefix keys (attention_mask gets P ones in front), RoPE never touches the
prefix (it is stored as post-RoPE keys, like any cached key). The prefix is either the parameter itself, or
MLP(embedding) with an (embedding dim -> encoder_hidden_size -> tanh -> L*2*Hkv*D) MLP: Li & Liang's
reparameterization, which they found steadier to train; after training only its output is kept.

Saved in PEFT's file format (adapter_config.json + adapter_model.safetensors, one tensor `prompt_embeddings` of
shape (P, L*2*Hkv*D), laid out (token, layer, key/value, head, dim)), so `PeftModel.from_pretrained(hf_model, dir)`
opens it on the model `llmlab.model.hf.save_hf_model` exports; tests/posttrain/test_prefix_tuning.py checks both ways.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from llmlab.errors import ConfigError, LlmlabError
from llmlab.model.io import atomic_write
from llmlab.model.transformer import Transformer

CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"


class PrefixCache:
    """`Transformer.forward`'s cache interface (reserve, update) with the prefix K/V in front of every layer's keys.

    prefix_kv (L, 2, Hkv, P, D). inner=None (training, scoring): nothing is stored, keys are [prefix; new tokens].
    inner=a KVCache (generation): it stores the real tokens as usual and the prefix is put in front of what it
    returns, so `infer.generate` works on a PrefixTuning model unchanged. Keys are concatenated rather than written
    into a preallocated buffer: in-place writes of later layers would invalidate tensors autograd saved.
    """

    def __init__(self, prefix_kv: Tensor, inner=None) -> None:
        self.kv, self.inner, self.mask = prefix_kv, inner, None

    def reserve(self, batch_size: int, n_new: int, attention_mask: Tensor | None = None) -> Tensor:
        """Positions (B, n_new) of the new tokens, counted after the P prefix tokens."""
        n_prefix = self.kv.shape[3]
        if self.inner is not None:
            return self.inner.reserve(batch_size, n_new, attention_mask) + n_prefix
        if attention_mask is not None:
            if attention_mask.shape != (batch_size, n_new):
                raise LlmlabError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                                  f"{(batch_size, n_new)}")
            self.mask = attention_mask.bool()
        return torch.arange(n_prefix, n_prefix + n_new, device=self.kv.device).expand(batch_size, n_new)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """k, v (B, Hkv, T, D) -> keys, values (B, Hkv, P + Tk, D) and their padding mask (B, P + Tk) or None."""
        mask = self.mask
        if self.inner is not None:
            k, v, mask = self.inner.update(layer, k, v)
        b = k.shape[0]
        pk = self.kv[layer, 0].to(k.dtype).expand(b, -1, -1, -1)  # (B, Hkv, P, D)
        pv = self.kv[layer, 1].to(v.dtype).expand(b, -1, -1, -1)
        if mask is not None:  # prefix keys are never padding
            mask = torch.cat((mask.new_ones(b, pk.shape[2]), mask), dim=1)
        return torch.cat((pk, k), dim=2), torch.cat((pv, v), dim=2), mask


class PrefixTuning(nn.Module):
    """A frozen causal `Transformer` with a trainable prefix; called like the model: `m(input_ids, attention_mask)`.

    num_virtual_tokens P; prefix_projection: learn an embedding (P, Hkv*D) and the MLP instead of the prefix itself,
    encoder_hidden_size its hidden width (PEFT's default: Hkv*D). Initialised as PEFT does: N(0, 1) prefix or
    embedding, nn.Linear's default init for the MLP.
    """

    def __init__(self, base: Transformer, num_virtual_tokens: int, *, prefix_projection: bool = False,
                 encoder_hidden_size: int | None = None) -> None:
        super().__init__()
        cfg = base.cfg
        if not cfg.causal:
            raise ConfigError(f"prefix tuning needs a causal decoder, not arch={cfg.arch!r}")
        if num_virtual_tokens < 1:
            raise ConfigError(f"num_virtual_tokens={num_virtual_tokens} must be >= 1")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.num_virtual_tokens, self.prefix_projection = num_virtual_tokens, prefix_projection
        self.token_dim = cfg.n_kv_heads * cfg.head_dim  # one virtual token's K (or V) in one layer
        self.encoder_hidden_size = encoder_hidden_size or self.token_dim
        out_dim = cfg.n_layers * 2 * self.token_dim
        device = next(base.parameters()).device
        if prefix_projection:
            self.embedding = nn.Parameter(torch.randn(num_virtual_tokens, self.token_dim, device=device))
            self.mlp = nn.Sequential(nn.Linear(self.token_dim, self.encoder_hidden_size), nn.Tanh(),
                                     nn.Linear(self.encoder_hidden_size, out_dim)).to(device)
        else:  # (P, L*2*Hkv*D), PEFT's layout
            self.prefix = nn.Parameter(torch.randn(num_virtual_tokens, out_dim, device=device))

    @property
    def cfg(self):
        return self.base.cfg

    def flat_prefix(self) -> Tensor:
        """(P, L*2*Hkv*D): the prefix as PEFT saves it (`prompt_embeddings`)."""
        return self.mlp(self.embedding) if self.prefix_projection else self.prefix

    def prefix_kv(self) -> Tensor:
        """(L, 2, Hkv, P, D): layer l's prefix keys are [l, 0], its values [l, 1]."""
        cfg = self.cfg
        flat = self.flat_prefix().view(self.num_virtual_tokens, cfg.n_layers, 2, cfg.n_kv_heads, cfg.head_dim)
        return flat.permute(1, 2, 3, 0, 4)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                cache=None, segment_ids: Tensor | None = None) -> Tensor:
        """As `Transformer.forward`: logits (B, T, vocab) of the T tokens, each attending to the prefix as well."""
        if segment_ids is not None:
            raise LlmlabError("prefix tuning cannot train packed rows: every example needs the prefix in front of "
                              "it; use packing=False")
        if position_ids is not None:
            position_ids = position_ids + self.num_virtual_tokens  # PEFT shifts explicit positions past the prefix
        return self.base(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=PrefixCache(self.prefix_kv(), cache))

    def num_parameters(self) -> int:
        """The base model's parameters plus the prefix's (the MLP included)."""
        return self.base.num_parameters() + sum(p.numel() for n, p in self.named_parameters()
                                                if not n.startswith("base."))


def save_prefix(model: PrefixTuning, out_dir: str | Path) -> Path:
    """Write the prefix as `PeftModel.save_pretrained` does: the MLP's output when there is one. The config says
    prefix_projection=false, since the file holds the prefix itself (PEFT writes the training setting, but then
    cannot resume training from its own file); for inference PEFT ignores the MLP either way."""
    cfg = model.cfg
    with torch.no_grad():
        state = {"prompt_embeddings": model.flat_prefix().detach().float().cpu().contiguous()}
    config = dict(peft_type="PREFIX_TUNING", task_type="CAUSAL_LM", num_virtual_tokens=model.num_virtual_tokens,
                  token_dim=model.token_dim, num_transformer_submodules=1, num_attention_heads=cfg.n_kv_heads,
                  num_layers=cfg.n_layers, encoder_hidden_size=model.token_dim, prefix_projection=False,
                  init_weights=None, inference_mode=True, base_model_name_or_path=None, modules_to_save=None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return out


def load_prefix(base: Transformer, adapter_dir: str | Path) -> PrefixTuning:
    """A PEFT prefix-tuning adapter (ours or `PeftModel.save_pretrained`'s) on `base`: a PrefixTuning holding the
    saved prefix as its parameter (no MLP, as PEFT loads it for inference)."""
    d = Path(adapter_dir)
    try:
        config = json.loads((d / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LlmlabError(f"cannot read {d / CONFIG_NAME}: {e}") from None
    if config.get("peft_type") != "PREFIX_TUNING":
        raise LlmlabError(f"{d}: peft_type={config.get('peft_type')!r}; load_prefix reads PREFIX_TUNING adapters")
    cfg = base.cfg
    expected = {"num_layers": cfg.n_layers, "num_attention_heads": cfg.n_kv_heads,
                "token_dim": cfg.n_kv_heads * cfg.head_dim, "num_transformer_submodules": 1}
    wrong = {k: config.get(k) for k, v in expected.items() if config.get(k) != v}
    if wrong:
        raise LlmlabError(f"{d}: {wrong} do not fit the model, which needs {expected} (num_attention_heads counts "
                          "K/V heads)")
    try:
        flat = load_file(str(d / WEIGHTS_NAME))["prompt_embeddings"]
    except (OSError, KeyError) as e:
        raise LlmlabError(f"cannot read prompt_embeddings from {d / WEIGHTS_NAME}: {e}") from None
    model = PrefixTuning(base, int(config["num_virtual_tokens"]))
    if flat.shape != model.prefix.shape:
        raise LlmlabError(f"{d / WEIGHTS_NAME}: prompt_embeddings {tuple(flat.shape)}, expected "
                          f"{tuple(model.prefix.shape)}")
    with torch.no_grad():
        model.prefix.copy_(flat)
    return model

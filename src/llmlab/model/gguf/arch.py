"""llmlab configs and weights <-> llama.cpp's architectures in GGUF: llama (also Mistral-style), qwen2 and gpt2.

Key and tensor names are llama.cpp's (gguf-py constants.py `Keys` and `TENSOR_NAMES`, as `convert_hf_to_gguf.py`
writes them). What llama.cpp reads for an architecture is in its src/llama-model.cpp `load_hparams` / `load_tensors`.

RoPE layout. llmlab rotates the pairs (x[i], x[i + D/2]) of a head (HF's rotate-half, positions.py). llama.cpp's
`llama` architecture uses ggml's "normal" RoPE, which rotates adjacent pairs (x[2i], x[2i + 1]); both turn pair i by
pos * theta^(-2i/D). So `convert_hf_to_gguf.py`'s LlamaModel permutes the rows of the Q and K weights (and biases)
of every head: row i -> 2i and row i + D/2 -> 2i + 1 (`permute`: reshape(n_head, 2, D/2, ...).swapaxes(1, 2)).
q.k is a sum over pairs, unchanged when q and k are permuted alike, so attention is the same function. llama.cpp's
`qwen2` uses ggml's NEOX RoPE, which is rotate-half: its Q and K are written as they are. gpt2 has no RoPE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.model.config import RopeScaling, TransformerConfig
from llmlab.model.gguf.format import Value, ValueType
from llmlab.model.hf.common import require

ARCHS = ("llama", "qwen2", "gpt2")

# ours -> llama.cpp, per block (gguf-py TENSOR_NAMES: blk.{bid}.attn_q, ...)
LAYER = {"attn_norm": "attn_norm", "attn.q_proj": "attn_q", "attn.k_proj": "attn_k", "attn.v_proj": "attn_v",
         "attn.o_proj": "attn_output", "mlp_norm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}
GLOBAL = {"tok_emb.weight": "token_embd.weight", "pos_emb.weight": "position_embd.weight",
          "final_norm.weight": "output_norm.weight", "final_norm.bias": "output_norm.bias",
          "lm_head.weight": "output.weight"}


# ---------------------------------------------------------------------------------------------------------- checks
def arch_for(cfg: TransformerConfig) -> str:
    """The llama.cpp architecture that runs cfg: gpt2 (learned positions), qwen2 (RoPE, q/k/v biases only) or llama
    (RoPE, any of the optional biases llama.cpp's llama loads). Raises a one-line LlmlabError naming the first field
    none of them expresses."""
    if cfg.arch != "decoder":
        raise LlmlabError(f"cannot export arch={cfg.arch!r} to GGUF: llmlab writes decoders (llama, qwen2, gpt2)")
    if cfg.n_experts:
        raise LlmlabError(f"cannot export n_experts={cfg.n_experts} to GGUF: llmlab writes dense models only")
    common = dict(norm_position="pre", embed_norm=False, attn_softcap=None, n_token_types=0, mlm_head_transform=False,
                  lm_head_bias=False, attn_scale=None)  # llama.cpp scales attention by 1/sqrt(head_dim)
    if cfg.position == "learned":
        require(cfg, "GGUF gpt2", norm="layernorm", gated_mlp=False, activation="gelu_tanh", qkv_bias=True,
                out_bias=True, mlp_bias=True, n_kv_heads=cfg.n_heads, head_dim=cfg.d_model // cfg.n_heads,
                sliding_window=None, **common)
        return "gpt2"
    if cfg.position != "rope":
        raise LlmlabError(f"cannot export position={cfg.position!r} to GGUF: llama.cpp's llama and qwen2 need "
                          "'rope', gpt2 'learned'")
    arch = "qwen2" if cfg.qkv_bias and not cfg.out_bias and not cfg.mlp_bias else "llama"
    # llama.cpp's llama and qwen2 have no sliding window (convert_hf_to_gguf.py drops Mistral's)
    require(cfg, f"GGUF {arch}", norm="rmsnorm", gated_mlp=True, activation="silu", sliding_window=None, **common)
    s = cfg.rope_scaling
    if s is not None and s.kind not in ("linear", "ntk"):
        raise LlmlabError(f"cannot export rope_scaling.kind={s.kind!r} to GGUF: llmlab writes linear and ntk "
                          "(llama.cpp's yarn and llama3 factors are not verified equal here)")
    return arch


# -------------------------------------------------------------------------------------------------------- metadata
def config_metadata(cfg: TransformerConfig, arch: str) -> dict[str, Value]:
    """The `{arch}.*` keys (types as gguf-py's GGUFWriter.add_* writes them: counts UINT32, floats FLOAT32)."""
    u32, f32 = Value.u32, Value.f32
    md = {f"{arch}.context_length": u32(cfg.max_seq_len), f"{arch}.embedding_length": u32(cfg.d_model),
          f"{arch}.block_count": u32(cfg.n_layers), f"{arch}.feed_forward_length": u32(cfg.d_ff),
          f"{arch}.attention.head_count": u32(cfg.n_heads)}
    if arch == "gpt2":
        md[f"{arch}.attention.layer_norm_epsilon"] = f32(cfg.norm_eps)
        return md
    theta, s, d = cfg.rope_theta, cfg.rope_scaling, cfg.head_dim
    if s is not None and s.kind == "ntk":  # static NTK is plain RoPE with theta' = theta * s^(d/(d-2)) (bloc97 2023)
        theta, s = theta * s.factor ** (d / (d - 2)), None
    md.update({f"{arch}.attention.head_count_kv": u32(cfg.n_kv_heads), f"{arch}.rope.freq_base": f32(theta),
               f"{arch}.attention.layer_norm_rms_epsilon": f32(cfg.norm_eps),
               f"{arch}.attention.key_length": u32(d), f"{arch}.attention.value_length": u32(d),
               f"{arch}.rope.dimension_count": u32(d), f"{arch}.vocab_size": u32(cfg.vocab_size)})
    if s is not None:  # linear: positions / factor (llama.cpp freq_scale = 1 / factor)
        md[f"{arch}.rope.scaling.type"] = Value.string("linear")
        md[f"{arch}.rope.scaling.factor"] = f32(s.factor)
    return md


def _f32(x: float) -> float:
    """A FLOAT32 from the file as the shortest decimal that rounds to it: 1e-5 comes back 1e-05, not 9.99999975e-06
    (the model computes in float32 either way)."""
    return float(str(np.float32(x)))


def config_from_metadata(md: dict[str, Value], shapes: dict[str, tuple[int, ...]], source: str) -> TransformerConfig:
    """A TransformerConfig from a GGUF file's metadata and its tensors' shapes (which optional tensors it has)."""
    arch = md["general.architecture"].value if "general.architecture" in md else None
    if arch not in ARCHS:
        raise LlmlabError(f"{source}: general.architecture={arch!r} is not supported; llmlab reads {', '.join(ARCHS)}")

    def get(key: str, default: Any = None) -> Any:
        v = md.get(f"{arch}.{key}")
        if v is None:
            if default is None:
                raise LlmlabError(f"{source}: missing metadata key {arch}.{key}")
            return default
        if v.type == ValueType.ARRAY:
            raise LlmlabError(f"{source}: {arch}.{key} differs per layer; llmlab has one value for every layer")
        return v.value

    if "token_embd.weight" not in shapes:
        raise LlmlabError(f"{source}: no token_embd.weight tensor")
    n_vocab = shapes["token_embd.weight"][0]  # {arch}.vocab_size is optional (gpt2 files lack it)
    d_model, n_heads = get("embedding_length"), get("attention.head_count")
    shape = dict(vocab_size=n_vocab, d_model=d_model, n_layers=get("block_count"), n_heads=n_heads,
                 d_ff=get("feed_forward_length"), max_seq_len=get("context_length"),
                 tie_embeddings="output.weight" not in shapes)
    if arch == "gpt2":
        return TransformerConfig(**shape, position="learned", norm="layernorm",
                                 norm_eps=_f32(get("attention.layer_norm_epsilon")), activation="gelu_tanh",
                                 gated_mlp=False, qkv_bias=True, out_bias=True, mlp_bias=True)
    head_dim = get("attention.key_length", d_model // n_heads)
    if get("attention.value_length", head_dim) != head_dim:
        raise LlmlabError(f"{source}: key_length != value_length; llmlab has one head_dim")
    if get("rope.dimension_count", head_dim) != head_dim:
        raise LlmlabError(f"{source}: {arch}.rope.dimension_count={get('rope.dimension_count')} is a partial "
                          f"rotary embedding (head_dim {head_dim}); llmlab rotates the whole head")
    kind = get("rope.scaling.type", "none")
    if kind not in ("none", "linear"):
        raise LlmlabError(f"{source}: {arch}.rope.scaling.type={kind!r} is not supported (none, linear)")
    if "rope_freqs.weight" in shapes:
        raise LlmlabError(f"{source}: rope_freqs.weight (per-pair RoPE factors, e.g. Llama 3.1) is not supported")
    has = lambda name: f"blk.0.{name}.bias" in shapes  # noqa: E731
    return TransformerConfig(
        **shape, n_kv_heads=get("attention.head_count_kv", n_heads), head_dim=head_dim, position="rope",
        rope_theta=_f32(get("rope.freq_base", 10000.0)),
        rope_scaling=RopeScaling("linear", _f32(get("rope.scaling.factor"))) if kind == "linear" else None,
        norm="rmsnorm", norm_eps=_f32(get("attention.layer_norm_rms_epsilon")), activation="silu", gated_mlp=True,
        qkv_bias=has("attn_q"), out_bias=has("attn_output"), mlp_bias=has("ffn_up"))


# ---------------------------------------------------------------------------------------------------------- tensors
def permute_rope(w: Tensor, n_heads: int) -> Tensor:
    """Rotate-half rows -> interleaved pairs, per head: convert_hf_to_gguf.py LlamaModel.permute. w: (n_heads * D, ...)
    (a weight or a bias); in each head, row i goes to 2i and row i + D/2 to 2i + 1."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_rope(w: Tensor, n_heads: int) -> Tensor:
    """The inverse of permute_rope: interleaved pairs -> rotate-half rows."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _names(cfg: TransformerConfig, state_keys: set[str]) -> dict[str, str]:
    """ours -> GGUF for every tensor of the state but a tied head (q, k, v as attn_q/k/v: gpt2 fuses them later)."""
    names = {ours: gguf for ours, gguf in GLOBAL.items() if ours in state_keys}
    if cfg.tie_embeddings:  # llama.cpp uses token_embd.weight when output.weight is absent
        names.pop("lm_head.weight", None)
    for i in range(cfg.n_layers):
        for ours, gguf in LAYER.items():
            for p in ("weight", "bias"):
                if f"blocks.{i}.{ours}.{p}" in state_keys:
                    names[f"blocks.{i}.{ours}.{p}"] = f"blk.{i}.{gguf}.{p}"
    return names


def state_to_gguf(state: dict[str, Tensor], cfg: TransformerConfig, arch: str) -> dict[str, Tensor]:
    """llmlab state dict -> {GGUF name: tensor in PyTorch shape}, Q/K permuted for llama, q/k/v fused for gpt2."""
    out: dict[str, Tensor] = {}
    for ours, gguf in _names(cfg, set(state)).items():
        t = state[ours].detach()
        if arch == "llama" and ".attn.q_proj." in ours:
            t = permute_rope(t, cfg.n_heads)
        elif arch == "llama" and ".attn.k_proj." in ours:
            t = permute_rope(t, cfg.n_kv_heads)
        if arch == "gpt2" and ".attn.q_proj." in ours:  # attn_qkv: (3d, ...) = cat(q, k, v), as HF's c_attn
            gguf = gguf.replace("attn_q.", "attn_qkv.")
            t = torch.cat([state[ours.replace("q_proj", f"{x}_proj")] for x in "qkv"])
        elif arch == "gpt2" and (".attn.k_proj." in ours or ".attn.v_proj." in ours):
            continue
        out[gguf] = t.contiguous()
    return _ordered(out, cfg)


def _ordered(tensors: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """llama.cpp's order: embeddings, each block (attention, then MLP), the final norm and the head."""
    order = ["token_embd.weight", "position_embd.weight"]
    for i in range(cfg.n_layers):
        for name in ("attn_norm", "attn_qkv", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
                     "ffn_up", "ffn_down"):
            order += [f"blk.{i}.{name}.weight", f"blk.{i}.{name}.bias"]
    order += ["output_norm.weight", "output_norm.bias", "output.weight"]
    unplaced = sorted(set(tensors) - set(order))
    if unplaced:  # a tensor name this table does not know would otherwise be dropped silently
        raise LlmlabError(f"no GGUF position for tensor(s) {unplaced[:3]}")
    return {name: tensors[name] for name in order if name in tensors}


def state_from_gguf(tensors: dict[str, Tensor], cfg: TransformerConfig, arch: str, want: set[str], source: str
                    ) -> dict[str, Tensor]:
    """{GGUF name: float tensor} -> llmlab state dict with the keys `want` (a Transformer(cfg)'s); the inverse of
    state_to_gguf. Missing or extra tensors raise."""
    if arch == "gpt2":
        tensors = dict(tensors)
        for i in range(cfg.n_layers):
            for p in ("weight", "bias"):
                fused = tensors.pop(f"blk.{i}.attn_qkv.{p}", None)
                if fused is not None:
                    for x, part in zip(("q", "k", "v"), fused.chunk(3, dim=0), strict=True):
                        tensors[f"blk.{i}.attn_{x}.{p}"] = part
    names = _names(cfg, want)
    missing = sorted(g for g in names.values() if g not in tensors)
    extra = sorted(set(tensors) - set(names.values()))
    if missing or extra:
        raise LlmlabError(f"{source}: tensors do not match the {arch} config: missing {missing[:3]}, "
                          f"unexpected {extra[:3]}")
    state = {}
    for ours, gguf in names.items():
        t = tensors[gguf]
        if arch == "llama" and ".attn.q_proj." in ours:
            t = unpermute_rope(t, cfg.n_heads)
        elif arch == "llama" and ".attn.k_proj." in ours:
            t = unpermute_rope(t, cfg.n_kv_heads)
        state[ours] = t
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state


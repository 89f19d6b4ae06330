"""`TransformerConfig`: one dataclass that turns into GPT-2, Llama, Mistral, Qwen2, Mixtral, Qwen2-MoE, BERT or T5.

Every architectural choice is a field; the model code reads fields, it never branches on a family name.
Values are checked at construction so a bad value fails here, naming the field, not deep in a forward pass.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError

ARCHS = ("decoder", "encoder", "encoder-decoder")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "t5_relative", "none")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
BACKENDS = ("naive", "sdpa", "flash")
ROPE_KINDS = ("linear", "ntk", "dynamic", "yarn", "llama3")


@dataclass
class RopeScaling:
    """How RoPE frequencies are stretched for contexts longer than training.

    linear: position interpolation, pos / factor (Chen et al. 2023).
    ntk: static NTK-aware base change, theta * factor^(d/(d-2)) (bloc97 2023).
    dynamic: NTK base recomputed from the current length once it exceeds original_max_seq_len (HF "dynamic").
    yarn: NTK-by-parts ramp between beta_fast and beta_slow plus attention temperature (Peng et al. 2023).
    llama3: wavelength-banded scaling with low/high_freq_factor (Llama 3.1).
    """

    kind: str = "linear"
    factor: float = 1.0
    original_max_seq_len: int | None = None  # training context; yarn, dynamic and llama3 need it
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn: None -> 0.1 * ln(factor) + 1
    truncate: bool = True  # yarn: round the ramp bounds to whole dimensions, as HF does by default
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3

    def __post_init__(self) -> None:
        if self.kind not in ROPE_KINDS:
            raise ConfigError(f"rope_scaling.kind={self.kind!r} must be one of {', '.join(ROPE_KINDS)}")
        if not self.factor > 0:
            raise ConfigError(f"rope_scaling.factor={self.factor} must be > 0")
        if self.kind in ("yarn", "dynamic", "llama3") and not self.original_max_seq_len:
            raise ConfigError(f"rope_scaling.original_max_seq_len is required for kind={self.kind!r}")


@dataclass
class TransformerConfig:
    """A Transformer stack. Defaults give a small Llama-style decoder."""

    # --- shape
    arch: str = "decoder"  # decoder: causal LM; encoder: bidirectional stack with a masked-LM head (BERT);
    # encoder-decoder: a bidirectional encoder and a causal decoder that cross-attends to it (T5; model.seq2seq)
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None -> n_heads (MHA); 1 -> MQA; in between -> GQA
    head_dim: int | None = None  # None -> d_model // n_heads
    d_ff: int = 352
    max_seq_len: int = 256
    n_decoder_layers: int | None = None  # encoder-decoder: decoder depth; None -> n_layers (the encoder's)
    decoder_start_token_id: int | None = None  # encoder-decoder: the decoder's first input; None -> 0 (T5's pad)
    # --- positions
    position: str = "rope"
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rel_buckets: int = 32  # t5_relative: buckets of key - query offsets, one learned bias per (bucket, head)
    rel_max_distance: int = 128  # t5_relative: offsets this far or further share the last bucket
    # --- attention
    attn_backend: str = "sdpa"  # sdpa is the fast default; naive and flash are ours, tested equal to it
    sliding_window: int | None = None  # a query sees the `sliding_window` most recent keys, itself included
    attn_softcap: float | None = None  # logits -> cap * tanh(logits / cap) (Gemma 2)
    attn_scale: float | None = None  # scores = scale * Q K^T; None -> 1/sqrt(head_dim); T5: 1.0 (folded into init)
    qkv_bias: bool = False
    out_bias: bool = False
    flash_block_q: int = 64
    flash_block_k: int = 64
    # --- norms and MLP
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_position: str = "pre"  # pre: x + f(norm(x)) (GPT-2 onward); post: norm(x + f(x)) (original, BERT)
    embed_norm: bool = False  # a norm right after the embeddings (BERT)
    activation: str = "silu"
    gated_mlp: bool = True  # act(x W_gate) * (x W_up) -> W_down: SwiGLU with silu (Shazeer 2020)
    mlp_bias: bool = False
    # --- mixture of experts (llmlab.model.moe): the MLP of a layer becomes n_experts MLPs and a top-k router
    n_experts: int = 0  # 0 -> dense: every layer has one MLP
    n_experts_per_tok: int = 2  # k: experts each token is sent to
    moe_d_ff: int | None = None  # an expert's hidden width; None -> d_ff
    norm_topk_prob: bool = True  # renormalise the k chosen weights to sum to 1 (Mixtral); False: raw probs (Qwen2-MoE)
    shared_expert_d_ff: int = 0  # > 0: a shared expert every token uses, sigmoid-gated (Qwen2-MoE); 0 -> none
    moe_layers: list[int] | None = None  # layers whose MLP is MoE; None -> every layer (the rest use d_ff MLPs)
    router_aux_loss_coef: float = 0.01  # load-balancing loss weight in training (Switch: Fedus et al. 2021)
    router_z_loss_coef: float = 0.0  # router z-loss weight in training (ST-MoE: Zoph et al. 2022); 0 -> off
    capacity_factor: float | None = None  # training: an expert takes at most ceil(cf * k * T / E) tokens per row
    # --- embeddings and head
    tie_embeddings: bool = False
    n_token_types: int = 0  # segment embeddings (BERT's token_type); 0 -> none
    mlm_head_transform: bool = False  # dense + act + norm before the vocab projection (BERT's MLM head)
    lm_head_bias: bool = False
    scale_head_input: bool = False  # encoder-decoder: h * d_model**-0.5 before the head (T5 with tied embeddings)
    # --- regularisation and init
    dropout: float = 0.0  # on embeddings and residual branches
    attn_dropout: float = 0.0  # on attention probabilities
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            unknown = sorted(set(self.rope_scaling) - {f.name for f in dataclasses.fields(RopeScaling)})
            if unknown:
                raise ConfigError(f"unknown rope_scaling field(s): {', '.join(unknown)}")
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        self._check_choice("arch", ARCHS)
        self._check_choice("position", POSITIONS)
        self._check_choice("norm", NORMS)
        self._check_choice("norm_position", NORM_POSITIONS)
        self._check_choice("activation", ACTIVATIONS)
        self._check_choice("attn_backend", BACKENDS)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len",
                     "flash_block_q", "flash_block_k"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(f"n_heads={self.n_heads} must divide d_model={self.d_model} (or set head_dim)")
            self.head_dim = self.d_model // self.n_heads
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if self.position == "rope" and self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for position='rope'")
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"d_model={self.d_model} must be even for position='sinusoidal'")
        if self.rope_scaling is not None and self.position != "rope":
            raise ConfigError(f"rope_scaling is set but position={self.position!r}; it needs position='rope'")
        if self.rope_theta <= 0:
            raise ConfigError(f"rope_theta={self.rope_theta} must be > 0")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"sliding_window={self.sliding_window} must be a positive integer or None")
        if self.attn_softcap is not None and self.attn_softcap <= 0:
            raise ConfigError(f"attn_softcap={self.attn_softcap} must be > 0 or None")
        if self.attn_softcap is not None and self.attn_backend == "sdpa":
            raise ConfigError("attn_softcap needs attn_backend='naive' or 'flash': torch SDPA cannot soft-cap logits")
        if self.attn_dropout > 0 and self.attn_backend == "flash":
            raise ConfigError("attn_dropout > 0 needs attn_backend='naive' or 'sdpa': our flash kernel has no dropout")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.norm_eps <= 0:
            raise ConfigError(f"norm_eps={self.norm_eps} must be > 0")
        if self.n_token_types < 0:
            raise ConfigError(f"n_token_types={self.n_token_types} must be >= 0")
        if self.attn_scale is not None and not self.attn_scale > 0:
            raise ConfigError(f"attn_scale={self.attn_scale} must be > 0 or None (= 1/sqrt(head_dim))")
        self._check_moe()
        self._check_seq2seq()

    def _check_moe(self) -> None:
        if not isinstance(self.n_experts, int) or self.n_experts < 0:
            raise ConfigError(f"n_experts={self.n_experts!r} must be an integer >= 0 (0 = dense)")
        if self.n_experts == 0:  # no dead flags: the expert settings need experts
            for name, dense in (("moe_d_ff", None), ("shared_expert_d_ff", 0), ("moe_layers", None),
                                ("capacity_factor", None)):
                if getattr(self, name) != dense:
                    raise ConfigError(f"{name}={getattr(self, name)!r} needs n_experts > 0 (a mixture of experts)")
            return
        k = self.n_experts_per_tok
        if not isinstance(k, int) or not 1 <= k <= self.n_experts:
            raise ConfigError(f"n_experts_per_tok={k!r} must be an integer in [1, n_experts={self.n_experts}]")
        if self.moe_d_ff is not None and (not isinstance(self.moe_d_ff, int) or self.moe_d_ff <= 0):
            raise ConfigError(f"moe_d_ff={self.moe_d_ff!r} must be a positive integer or None (= d_ff)")
        if not isinstance(self.shared_expert_d_ff, int) or self.shared_expert_d_ff < 0:
            raise ConfigError(f"shared_expert_d_ff={self.shared_expert_d_ff!r} must be an integer >= 0 (0 = none)")
        if self.moe_layers is not None:
            layers = sorted(set(self.moe_layers))
            if not layers or len(layers) != len(self.moe_layers) or not all(
                    isinstance(i, int) and 0 <= i < self.n_layers for i in layers):
                raise ConfigError(f"moe_layers={self.moe_layers!r} must list distinct layer indices in "
                                  f"[0, n_layers={self.n_layers}), at least one (None = every layer)")
            self.moe_layers = None if layers == list(range(self.n_layers)) else layers
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise ConfigError(f"capacity_factor={self.capacity_factor} must be > 0 or None (no token dropped)")

    def _check_seq2seq(self) -> None:
        if self.position == "t5_relative":
            if self.arch != "encoder-decoder":
                raise ConfigError(f"position='t5_relative' needs arch='encoder-decoder', not {self.arch!r}")
            if self.attn_backend == "flash":
                raise ConfigError("position='t5_relative' needs attn_backend 'naive' or 'sdpa': our flash kernel "
                                  "adds ALiBi slopes, not a learned bias")
            if not isinstance(self.rel_buckets, int) or self.rel_buckets < 4:
                raise ConfigError(f"rel_buckets={self.rel_buckets!r} must be an integer >= 4")
            if not isinstance(self.rel_max_distance, int) or self.rel_max_distance <= self.rel_buckets // 2:
                raise ConfigError(f"rel_max_distance={self.rel_max_distance!r} must be an integer > rel_buckets // 2"
                                  f" = {self.rel_buckets // 2} (the exact buckets come first)")
        if self.arch != "encoder-decoder":  # no dead flags: these settings need a decoder reading an encoder
            for name, default in (("n_decoder_layers", None), ("decoder_start_token_id", None),
                                  ("scale_head_input", False)):
                if getattr(self, name) != default:
                    raise ConfigError(f"{name}={getattr(self, name)!r} needs arch='encoder-decoder'")
            return
        if self.position not in ("t5_relative", "none"):
            raise ConfigError(f"position={self.position!r} is not supported with arch='encoder-decoder': use "
                              "'t5_relative' (T5) or 'none'")
        for name, default in (("n_experts", 0), ("sliding_window", None), ("n_token_types", 0),
                              ("mlm_head_transform", False), ("embed_norm", False)):
            if getattr(self, name) != default:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not supported with arch='encoder-decoder'")
        if self.n_decoder_layers is None:
            self.n_decoder_layers = self.n_layers
        if not isinstance(self.n_decoder_layers, int) or self.n_decoder_layers <= 0:
            raise ConfigError(f"n_decoder_layers={self.n_decoder_layers!r} must be a positive integer")
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = 0
        if not isinstance(self.decoder_start_token_id, int) or not 0 <= self.decoder_start_token_id < self.vocab_size:
            raise ConfigError(f"decoder_start_token_id={self.decoder_start_token_id!r} must be a token id in "
                              f"[0, vocab_size={self.vocab_size})")

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")

    @property
    def causal(self) -> bool:
        return self.arch == "decoder"

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer `layer` has a mixture of experts (else a dense MLP of width d_ff)."""
        return self.n_experts > 0 and (self.moe_layers is None or layer in self.moe_layers)

    # --- JSON round-trip
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> TransformerConfig:
        s = str(text_or_path)
        # JSON text is never stat'ed: a long one fails as a path name (ENAMETOOLONG) before it fails is_file()
        is_path = isinstance(text_or_path, Path) or (not s.lstrip().startswith("{") and len(s) < 4096
                                                     and Path(s).is_file())
        text = Path(s).read_text() if is_path else s
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> TransformerConfig:
        """A copy with changes; head_dim, n_kv_heads and n_decoder_layers that were derived are derived again."""
        if "head_dim" not in changes and self.head_dim == self.d_model // self.n_heads \
                and {"d_model", "n_heads"} & set(changes):
            changes["head_dim"] = None
        if "n_kv_heads" not in changes and self.n_kv_heads == self.n_heads and "n_heads" in changes:
            changes["n_kv_heads"] = None
        if "n_decoder_layers" not in changes and self.n_decoder_layers == self.n_layers and "n_layers" in changes:
            changes["n_decoder_layers"] = None
        return dataclasses.replace(self, **changes)

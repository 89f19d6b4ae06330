"""Position encodings: the sinusoidal table, rotary embeddings (RoPE) with its context-extension variants, and
T5's learned relative position bias.

RoPE frequencies match HF transformers 5.24 (`modeling_rope_utils.py`) bit for bit in float32, and
`apply_rope` uses HF's half-split pairing (x[i], x[i + D/2]), the layout HF Llama checkpoints assume.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from llmlab.model.config import RopeScaling


def sinusoidal_table(n_pos: int, dim: int) -> Tensor:
    """(n_pos, dim) float32 table, computed in float64 and rounded once."""
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even dim, got dim={dim}")
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]  # (P, 1)
    i2 = torch.arange(0, dim, 2, dtype=torch.float64)  # (dim/2,) the 2i of each pair
    angle = pos / 10000.0 ** (i2 / dim)  # (P, dim/2)
    # PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d))  (Vaswani et al. 2017, sec. 3.5)
    table = torch.stack((angle.sin(), angle.cos()), dim=-1)  # (P, dim/2, 2): sin, cos interleaved
    return table.reshape(n_pos, dim).float()


class SinusoidalEmbedding(nn.Module):
    """positions (...) -> rows (..., dim) of `sinusoidal_table(max_len, dim)`, kept as a float32 buffer.

    A lookup, not a table built up to max(positions) + 1 per call: that needed the max on the host, a device sync
    and a torch.compile graph break at every decode step. Positions must lie in [0, max_len).
    """

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len, self.dim = max_len, dim
        self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)  # (max_len, dim)

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) would round the table for good (a later .float() could not undo it): rebuild in fp32
        super()._apply(fn, recurse)
        if self.table.dtype != torch.float32:
            self.table = sinusoidal_table(self.max_len, self.dim).to(self.table.device)
        return self

    def forward(self, positions: Tensor) -> Tensor:
        return self.table[positions]


def _default_inv_freq(head_dim: int, theta: float) -> Tensor:
    # inv_freq_i = theta^(-2i/d), i = 0 .. d/2-1  (Su et al. 2021); float32 as HF, so they match bit for bit
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def rope_inv_freq(
    head_dim: int, theta: float, scaling: RopeScaling | None = None, seq_len: int | None = None
) -> tuple[Tensor, float]:
    """RoPE inverse frequencies (head_dim/2,) float32 and the factor cos/sin are multiplied by.

    seq_len is read only by kind="dynamic": the longest position + 1 the frequencies must cover.
    """
    if scaling is None:
        return _default_inv_freq(head_dim, theta), 1.0
    d, s = head_dim, scaling.factor

    if scaling.kind == "linear":
        # position interpolation: pos / s, i.e. inv_freq / s  (Chen et al. 2023)
        return _default_inv_freq(d, theta) / s, 1.0

    if scaling.kind == "ntk":
        # static NTK-aware: theta' = theta * s^(d/(d-2)); the slowest pair ends up exactly / s  (bloc97 2023)
        return _default_inv_freq(d, theta * s ** (d / (d - 2))), 1.0

    if scaling.kind == "dynamic":
        # dynamic NTK: theta' = theta * (s L / L0 - (s - 1))^(d/(d-2)) if L > L0, else theta  (emozilla 2023)
        l0 = scaling.original_max_seq_len
        if seq_len is None or seq_len <= l0:
            return _default_inv_freq(d, theta), 1.0
        return _default_inv_freq(d, theta * (s * seq_len / l0 - (s - 1)) ** (d / (d - 2))), 1.0

    if scaling.kind == "yarn":
        return _yarn_inv_freq(d, theta, scaling)

    if scaling.kind == "llama3":
        return _llama3_inv_freq(d, theta, scaling)

    raise ValueError(f"unknown rope scaling kind {scaling.kind!r}")


def _yarn_inv_freq(d: int, theta: float, scaling: RopeScaling) -> tuple[Tensor, float]:
    """YaRN: NTK-by-parts frequencies and an attention temperature (Peng et al. 2023)."""
    s, l0 = scaling.factor, scaling.original_max_seq_len
    # HF reads `beta or default`, so a 0 falls back to the paper's 32 / 1
    beta_fast, beta_slow = scaling.beta_fast or 32.0, scaling.beta_slow or 1.0

    def pair_index(rotations: float) -> float:
        # pair i turns r = L0 / (2 pi theta^(2i/d)) times in L0 tokens: i = d ln(L0 / (2 pi r)) / (2 ln theta)
        return d * math.log(l0 / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_index(beta_fast), pair_index(beta_slow)  # < low: > beta_fast turns; > high: < beta_slow
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)  # HF clamps to d - 1, not d/2 - 1; the ramp clamps anyway
    if low == high:
        high += 0.001  # avoid 0/0 in the ramp, as HF does

    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # (d/2,) 0 -> 1
    keep = 1 - ramp  # weight of the original frequency: 1 on fast pairs (extrapolate), 0 on slow ones
    base = theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,) theta^(2i/d)
    extrapolated, interpolated = 1.0 / base, 1.0 / (s * base)
    # NTK-by-parts: inv_freq = interp * (1 - keep) + extrap * keep, keep = 1 - ramp(i)  (Peng et al. 2023)
    inv_freq = interpolated * (1 - keep) + extrapolated * keep

    # attention temperature sqrt(1/t) = 0.1 ln(s) + 1, multiplied into cos and sin  (Peng et al. 2023)
    if scaling.attention_factor is not None:
        attention = scaling.attention_factor
    else:
        attention = 1.0 if s <= 1 else 0.1 * math.log(s) + 1.0
    return inv_freq, attention


def _llama3_inv_freq(d: int, theta: float, scaling: RopeScaling) -> tuple[Tensor, float]:
    """Llama 3.1 wavelength bands: keep short wavelengths, divide long ones by s, blend in between."""
    s, l0 = scaling.factor, scaling.original_max_seq_len
    lo, hi = scaling.low_freq_factor, scaling.high_freq_factor
    inv_freq = _default_inv_freq(d, theta)
    wavelen = 2 * math.pi / inv_freq  # (d/2,)
    # wavelen > L0/lo: inv_freq / s;  wavelen < L0/hi: unchanged;  between: (1 - g) inv_freq / s + g inv_freq,
    # g = (L0 / wavelen - lo) / (hi - lo)  (Llama 3.1 reference code, `apply_scaling`)
    scaled = torch.where(wavelen > l0 / lo, inv_freq / s, inv_freq)
    g = (l0 / wavelen - lo) / (hi - lo)
    blended = (1 - g) * scaled / s + g * scaled
    medium = (wavelen >= l0 / hi) & (wavelen <= l0 / lo)
    return torch.where(medium, blended, scaled), 1.0


def rotate_half(x: Tensor) -> Tensor:
    """(..., D): (x1, x2) -> (-x2, x1), halves x1 = x[..., :D/2], x2 = x[..., D/2:]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, D) by cos/sin (B or 1, T, D); pairs are (x[i], x[i + D/2]) as in HF Llama."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B or 1, 1, T, D), broadcast over heads
    # RoPE: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), angle = pos * inv_freq_i  (Su et al. 2021)
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """positions (B, T) -> cos, sin (B, T, head_dim) in float32, attention factor multiplied in (as HF does).

    kind="dynamic" follows HF 5.24's `dynamic_rope_update`: frequencies are recomputed when a call's
    max(positions) + 1 exceeds the longest length seen so far, and reset to the original ones when a call is
    shorter than original_max_seq_len again; lengths in between keep the last grown frequencies. A grown
    theta' is computed in float64 (HF's module: float32), so those cos/sin match HF to fp32 tolerance only.
    Positions past the training context are allowed: dynamic and yarn exist to go there.
    """

    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling | None = None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got head_dim={head_dim}")
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling
        inv_freq, self.attention_factor = rope_inv_freq(head_dim, theta, scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (head_dim/2,)
        self.dynamic = scaling is not None and scaling.kind == "dynamic"
        if self.dynamic:
            self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)
            self.cached_len = scaling.original_max_seq_len  # the length the current inv_freq was built for

    def _update_dynamic(self, seq_len: int) -> None:
        l0 = self.scaling.original_max_seq_len
        if seq_len > self.cached_len:  # grow
            inv_freq, _ = rope_inv_freq(self.head_dim, self.theta, self.scaling, seq_len)
            self.inv_freq = inv_freq.to(self.inv_freq.device)
            self.cached_len = seq_len
        if seq_len < l0 < self.cached_len:  # short again: back to the original frequencies
            self.inv_freq = self.original_inv_freq.clone()
            self.cached_len = l0

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) would round the frequencies and ruin far positions: rebuild them in fp32
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32:
            device = self.inv_freq.device
            cached = self.cached_len if self.dynamic else None
            self.inv_freq = rope_inv_freq(self.head_dim, self.theta, self.scaling, cached)[0].to(device)
            if self.dynamic:
                self.original_inv_freq = rope_inv_freq(self.head_dim, self.theta, self.scaling)[0].to(device)
        return self

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        if self.dynamic:
            self._update_dynamic(int(positions.max()) + 1)
        freqs = positions[..., None].float() * self.inv_freq.float()  # (B, T, D/2) angle = pos * inv_freq_i
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D): pair i and i + D/2 share an angle
        return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor


def t5_relative_bucket(relative_position: Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> Tensor:
    """Key position - query position (any shape, int) -> bucket in [0, num_buckets)  (Raffel et al. 2020, sec. 2.1).

    bidirectional (encoder): half the buckets for keys after the query, half for keys at or before it; otherwise
    (decoder) keys after the query share bucket 0, as a causal mask hides them anyway. Within a direction, the first
    half of the buckets are exact distances 0 .. max_exact - 1, the rest log-spaced up to max_distance, from which on
    every distance shares the last bucket (Mesh TensorFlow's `_relative_position_bucket`, as HF T5 computes it).
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets  # keys after the query: the upper half
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)  # how far back the key is; later keys -> 0
    max_exact = num_buckets // 2
    # distance d >= max_exact: max_exact + log(d / max_exact) / log(max_distance / max_exact) * (buckets - max_exact)
    log_bucket = max_exact + (torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
                              * (num_buckets - max_exact)).to(torch.long)
    log_bucket = log_bucket.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, log_bucket)


class RelativePositionBias(nn.Module):
    """T5's position encoding: a learned scalar per (offset bucket, head) added to the attention scores.

    One table per stack (encoder: bidirectional buckets; decoder: causal ones), computed once per forward and added
    in every layer of that stack. forward(q_len, k_len) -> (1, H, Tq, Tk); query i sits at position
    i + (Tk - Tq), as in `attention`, so a cached decode step gets the row of its own position.
    """

    def __init__(self, num_buckets: int, max_distance: int, n_heads: int, bidirectional: bool) -> None:
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.weight = nn.Parameter(torch.empty(num_buckets, n_heads))  # (buckets, H)

    def forward(self, q_len: int, k_len: int) -> Tensor:
        q_pos = torch.arange(k_len - q_len, k_len, device=self.weight.device)[:, None]  # (Tq, 1)
        k_pos = torch.arange(k_len, device=self.weight.device)[None, :]  # (1, Tk)
        buckets = t5_relative_bucket(k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance)
        return self.weight[buckets].permute(2, 0, 1)[None]  # (Tq, Tk, H) -> (1, H, Tq, Tk)

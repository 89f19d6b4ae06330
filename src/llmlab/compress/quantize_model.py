"""Quantize every nn.Linear of a model with one method; the model keeps fake-quantized (dequantized) fp32 weights,
so it evaluates, saves and loads like any llmlab model, and the result holds the packed tensors and their bytes.

Methods: int8 (absmax, per output channel), llm.int8 (the same weights, LLM.int8() activations at run time; the
layers become Int8Linear), rtn (group-wise round-to-nearest, any bits), gptq, awq (rtn's grid, calibrated), nf4
(QLoRA's 4-bit NormalFloat, blocks of 64, double-quantized constants).

GPTQ and AWQ see calibration text. As GPTQ does (sec. 5), layers are quantized in sequence, each calibrated on the
inputs the model produces with the layers before it already quantized: one forward pass per layer, cut short by the
hook at that layer. lm_head (and MoE routers) stay fp32 by default, as in the GPTQ and AWQ papers; a Linear whose
weight is tied to the embedding would change the embedding with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from llmlab.compress.awq import awq
from llmlab.compress.calibration import collect_stats
from llmlab.compress.gptq import gptq
from llmlab.compress.groupwise import Scheme, rtn
from llmlab.compress.int8 import Int8Linear, dequantize, quantize_absmax
from llmlab.compress.nf4 import NF4Linear
from llmlab.errors import LlmlabError

METHODS = ("int8", "llm.int8", "rtn", "gptq", "awq", "nf4")
CALIBRATED = ("gptq", "awq")
SKIP = ("lm_head", "router", "shared_expert_gate")


@dataclass
class LayerResult:
    name: str
    shape: tuple[int, int]  # (out, in)
    nbytes: int  # the packed tensors
    error: float | None = None  # relative output error on the calibration tokens (calibrated methods)
    alpha: float | None = None  # AWQ's chosen exponent
    note: str = ""

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.shape[0] * self.shape[1]


@dataclass
class QuantizedModel:
    """What quantize_model did: per layer, the packed tensors and sizes; the model itself is changed in place."""

    method: str
    bits: int
    group_size: int | None  # None: one scale per output channel
    layers: list[LayerResult] = field(default_factory=list)
    packed: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # layer name -> stored tensors
    calib_tokens: int = 0
    model_fp32_bytes: int = 0  # every parameter of the original model in fp32

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized layers' packed weights."""
        return sum(layer.nbytes for layer in self.layers)

    @property
    def fp32_bytes(self) -> int:
        """Bytes of the same layers' weights in fp32."""
        return sum(layer.fp32_bytes for layer in self.layers)

    @property
    def model_bytes(self) -> int:
        """The whole model with the quantized layers packed and everything else (embeddings, norms, biases,
        lm_head) in fp32."""
        return self.model_fp32_bytes - self.fp32_bytes + self.nbytes

    def to_json(self) -> dict:
        return {"method": self.method, "bits": self.bits, "group_size": self.group_size,
                "packed_bytes": self.nbytes, "fp32_bytes": self.fp32_bytes,
                "model_bytes": self.model_bytes, "model_fp32_bytes": self.model_fp32_bytes,
                "calibration_tokens": self.calib_tokens,
                "layers": [{"name": r.name, "shape": list(r.shape), "packed_bytes": r.nbytes, "error": r.error,
                            "alpha": r.alpha, "note": r.note or None} for r in self.layers]}


def target_linears(model: nn.Module, skip: tuple[str, ...] = SKIP) -> list[tuple[str, nn.Linear]]:
    """The nn.Linear layers to quantize, in registration order: every one whose name does not end in `skip`."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and not name.endswith(skip)]


def _nbytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


@torch.no_grad()
def quantize_model(model: nn.Module, method: str, scheme: Scheme | None = None, calib: Tensor | None = None, *,
                   act_order: bool = False, skip: tuple[str, ...] = SKIP,
                   progress: Callable[[int, int, str], None] | None = None) -> QuantizedModel:
    """Quantize model's Linear layers in place with `method` (see METHODS). scheme: rtn/gptq/awq's grid (default
    asymmetric int4, groups of 128); calib: token rows (B, T), needed by gptq and awq; given to another method (but
    llm.int8), it measures each layer's output error. progress(done, total, layer name)."""
    if method not in METHODS:
        raise LlmlabError(f"unknown quantization method {method!r}; choose from {', '.join(METHODS)}")
    if method in CALIBRATED and (calib is None or calib.numel() == 0):
        raise LlmlabError(f"{method} needs calibration tokens (calib)")
    scheme = scheme or Scheme()
    bits, group = {"int8": (8, None), "llm.int8": (8, None), "nf4": (4, 64)}.get(
        method, (scheme.bits, scheme.group_size))
    seen = {id(p): p for p in model.parameters()}  # a tied weight counts once
    result = QuantizedModel(method, bits, group, calib_tokens=calib.numel() if calib is not None else 0,
                            model_fp32_bytes=4 * sum(p.numel() for p in seen.values()))
    layers = target_linears(model, skip)
    for k, (name, linear) in enumerate(layers):
        w = linear.weight.detach().float()  # (out, in)
        layer = LayerResult(name, tuple(w.shape), 0)
        if method == "llm.int8":
            new = Int8Linear(linear)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, new)
            packed = {"codes": new.weight_q, "scale": new.weight_scale}
        else:
            stats = collect_stats(model, linear, calib) if calib is not None else None
            if stats is not None and stats.n == 0:  # e.g. an MoE expert no calibration token was routed to
                layer.note, stats = "no calibration token reached it" + (": rtn" if method in CALIBRATED else ""), None
            if method == "int8":
                codes, scale = quantize_absmax(w, dim=-1)  # (out, in) int8, (out, 1)
                w_hat, packed = dequantize(codes, scale), {"codes": codes, "scale": scale}
            elif method == "nf4":
                nf4 = NF4Linear(linear)
                w_hat = nf4.dequantize()
                packed = {key: b for key, b in nf4.named_buffers() if key != "bias"}
            elif method == "gptq" and stats is not None:
                q = gptq(w, stats.hessian(), scheme, act_order=act_order)
                w_hat, packed = q.dequantize(), q.packed()
            elif method == "awq" and stats is not None:
                res = awq(w, stats, scheme)
                w_hat, packed, layer.alpha = res.dequantize(), res.quantized.packed() | {"awq_scale": res.s}, res.alpha
            else:  # rtn, or a calibrated method with nothing to calibrate on
                q = rtn(w, scheme)
                w_hat, packed = q.dequantize(), q.packed()
            if stats is not None:
                layer.error = stats.output_error(w_hat - w) / max(stats.output_error(w), 1e-30)
            linear.weight.copy_(w_hat.to(linear.weight.dtype))
        layer.nbytes = _nbytes(packed)
        result.layers.append(layer)
        result.packed[name] = packed
        if progress is not None:
            progress(k + 1, len(layers), name)
    return result

"""LoRA, rsLoRA and DoRA adapters on nn.Linear (or NF4Linear: QLoRA), saved in PEFT's file format.

LoRA (Hu et al. 2021): y = W x + s B A x, A (r, in), B (out, r), s = alpha / r; rsLoRA (Kalajdzievski 2023):
s = alpha / sqrt(r). DoRA (Liu et al. 2024): W' = m * (W + s B A) / ||W + s B A||, the norm per output row
(PEFT: `torch.linalg.norm(W + s BA, dim=1)`) and detached, so no gradient flows through it (paper section 4.3).
QLoRA (Dettmers et al. 2023): the same adapter over a frozen `compress.nf4.NF4Linear`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from llmlab.compress.nf4 import NF4Linear
from llmlab.errors import LlmlabError
from llmlab.model.hf.llama import LAYER
from llmlab.model.io import atomic_write

CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the HF ...ForCausalLM


class LoRALinear(nn.Module):
    """base(x) + s * B(A(dropout(x))), or DoRA's magnitude-scaled form; `merge()` folds the update into W."""

    def __init__(self, base: nn.Linear | NF4Linear, r: int, alpha: float, dropout: float = 0.0,
                 use_dora: bool = False, use_rslora: bool = False) -> None:
        super().__init__()
        if r < 1:
            raise LlmlabError(f"LoRA rank r={r} must be >= 1")
        self.base, self.r, self.alpha, self.use_dora, self.use_rslora = base, r, alpha, use_dora, use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base.in_features, r, bias=False)  # weight (r, in)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)  # weight (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default init; B = 0: starts at W
        nn.init.zeros_(self.lora_B.weight)
        # DoRA magnitude m (out,), initialised to the row norms of W + s B A (= ||W|| while B = 0)
        self.lora_magnitude_vector = nn.Parameter(self.weight_norm()) if use_dora else None
        self.merged, self._merge_norm = False, None
        for p in base.parameters():
            p.requires_grad_(False)

    def delta_weight(self) -> Tensor:
        """s B A: (out, in)."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)

    def weight_norm(self) -> Tensor:
        """||W + s B A|| per output row, detached (DoRA treats it as a constant)."""
        w = self.base.weight.detach()
        return torch.linalg.norm(w + self.delta_weight().detach(), dim=1).detach()

    def forward(self, x: Tensor) -> Tensor:  # x (..., in) -> (..., out)
        result = self.base(x)
        if self.merged:
            return result
        xd = self.dropout(x)
        lora = self.lora_B(self.lora_A(xd)) * self.scaling
        if not self.use_dora:
            return result + lora
        # DoRA as PEFT computes it: W x + b + (m/n - 1) W x' + (m/n) s B A x', x' = dropout(x), n detached;
        # without dropout (or in eval) this is exactly (m/n)(W + sBA) x + b
        scale = self.lora_magnitude_vector / self.weight_norm()  # (out,)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            base_result = result if self.base.bias is None else result - self.base.bias
        else:
            base_result = F.linear(xd, self.base.weight)
        return result + (scale - 1) * base_result + scale * lora

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + s B A (DoRA: W <- m/n * (W + s B A)); forward is then the base layer alone."""
        if self.merged:
            return
        if not isinstance(self.base, nn.Linear):
            raise LlmlabError("merge() needs an nn.Linear base; merge_lora(model) dequantizes an NF4 base first")
        if self.use_dora:
            self._merge_norm = self.weight_norm()
            factor = (self.lora_magnitude_vector / self._merge_norm)[:, None]  # (out, 1)
            self.base.weight.copy_(factor * (self.base.weight + self.delta_weight()))
        else:
            self.base.weight.add_(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo merge(): W <- W - s B A (DoRA: W <- W * n/m - s B A, n the norm cached at merge)."""
        if not self.merged:
            return
        if self.use_dora:
            self.base.weight.div_((self.lora_magnitude_vector / self._merge_norm)[:, None])
        self.base.weight.sub_(self.delta_weight())
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, dora={self.use_dora}"


def apply_lora(model: nn.Module, target_modules: tuple[str, ...] | list[str] = ("q_proj", "v_proj"), r: int = 8,
               alpha: float = 16, dropout: float = 0.0, use_dora: bool = False, use_rslora: bool = False
               ) -> nn.Module:
    """Freeze every parameter, then wrap each nn.Linear / NF4Linear whose last name part is in target_modules
    (our names: attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, HF Llama's leaf names) in a LoRALinear. In place."""
    for p in model.parameters():
        p.requires_grad_(False)
    found = []
    for name, module in list(model.named_modules()):
        leaf = name.rpartition(".")[2]
        if leaf in target_modules and isinstance(module, nn.Linear | NF4Linear):
            parent = model.get_submodule(name.rpartition(".")[0])
            setattr(parent, leaf, LoRALinear(module, r, alpha, dropout, use_dora=use_dora, use_rslora=use_rslora))
            found.append(leaf)
    missing = set(target_modules) - set(found)
    if missing:
        raise LlmlabError(f"target_modules {sorted(missing)} match no linear layer; the model's layers are named "
                          "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace each LoRALinear by a plain nn.Linear holding its merged weight (an NF4 base is dequantized to fp32)."""
    for name, layer in lora_layers(model).items():
        base = layer.base
        if isinstance(base, NF4Linear):
            linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(base.dequantize())
                if base.bias is not None:
                    linear.bias.copy_(base.bias)
            layer.base = linear.to(base.codes.device)
        layer.merge()
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, layer.base)
    return model


# --- PEFT's file format: adapter_config.json + adapter_model.safetensors, keys of the HF-exported model

def _hf_name(ours: str) -> str:
    """blocks.3.attn.q_proj -> model.layers.3.self_attn.q_proj (the llama/mistral/qwen2 export names)."""
    _, i, rest = ours.split(".", 2)
    if rest not in LAYER:
        raise LlmlabError(f"{ours} has no HF Llama name: PEFT adapters are saved for llama/mistral/qwen2 exports")
    return f"model.layers.{i}.{LAYER[rest]}"


def _layer_config(layers: dict[str, LoRALinear]) -> dict:
    if not layers:
        raise LlmlabError("the model has no LoRA layers: call apply_lora (or load_adapter) first")
    settings = {(m.r, m.alpha, getattr(m.dropout, "p", 0.0), m.use_dora, m.use_rslora) for m in layers.values()}
    if len(settings) > 1:
        raise LlmlabError(f"LoRA layers differ in (r, alpha, dropout, dora, rslora): {sorted(settings)}; "
                          "PEFT's config holds one setting")
    r, alpha, dropout, use_dora, use_rslora = settings.pop()
    return dict(peft_type="LORA", task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                target_modules=sorted({n.rpartition(".")[2] for n in layers}), use_dora=use_dora,
                use_rslora=use_rslora, bias="none", fan_in_fan_out=False, init_lora_weights=True,
                inference_mode=True, base_model_name_or_path=None, modules_to_save=None)


def save_adapter(model: nn.Module, out_dir: str | Path) -> Path:
    """Write the adapter as `PeftModel.save_pretrained` does, so `PeftModel.from_pretrained(hf_model, dir)` opens
    it on the model `llmlab.model.hf.save_hf_model` exports: keys `base_model.model.model.layers.{i}.
    self_attn.q_proj.lora_A.weight`, `...lora_B.weight`, `...lora_magnitude_vector` (DoRA)."""
    layers = lora_layers(model)
    config = _layer_config(layers)
    if any(m.merged for m in layers.values()):
        raise LlmlabError("unmerge() the LoRA layers before saving the adapter")
    state = {}
    for name, m in layers.items():
        key = PEFT_PREFIX + _hf_name(name)
        state[f"{key}.lora_A.weight"] = m.lora_A.weight.detach().cpu().contiguous()
        state[f"{key}.lora_B.weight"] = m.lora_B.weight.detach().cpu().contiguous()
        if m.use_dora:
            state[f"{key}.lora_magnitude_vector"] = m.lora_magnitude_vector.detach().cpu().contiguous()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return out


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Read a PEFT LoRA/DoRA adapter (ours or `PeftModel.save_pretrained`'s) into model: apply_lora with its
    config unless the model already has LoRA layers, then copy the weights. Returns the model."""
    d = Path(adapter_dir)
    try:
        cfg = json.loads((d / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LlmlabError(f"cannot read {d / CONFIG_NAME}: {e}") from None
    if cfg.get("peft_type") != "LORA":
        raise LlmlabError(f"{d}: peft_type={cfg.get('peft_type')!r}; llmlab loads LORA adapters")
    targets = cfg.get("target_modules")
    for field, ok in (("target_modules", isinstance(targets, list)), ("bias", cfg.get("bias", "none") == "none"),
                      ("rank_pattern", not cfg.get("rank_pattern")), ("alpha_pattern", not cfg.get("alpha_pattern")),
                      ("fan_in_fan_out", not cfg.get("fan_in_fan_out")),
                      ("modules_to_save", not cfg.get("modules_to_save"))):
        if not ok:
            raise LlmlabError(f"{d}: {field}={cfg.get(field)!r} is not supported (llmlab reads a list of "
                              "target_modules, one r and alpha for all, bias='none', no modules_to_save)")
    if not lora_layers(model):
        apply_lora(model, tuple(targets), r=cfg["r"], alpha=cfg["lora_alpha"], dropout=cfg.get("lora_dropout", 0.0),
                   use_dora=cfg.get("use_dora", False), use_rslora=cfg.get("use_rslora", False))
    state = load_file(str(d / WEIGHTS_NAME))
    state = {k.replace(".default.", "."): v for k, v in state.items()}  # an adapter name, in some PEFT versions
    used = set()
    for name, m in lora_layers(model).items():
        key = PEFT_PREFIX + _hf_name(name)
        params = [(m.lora_A.weight, f"{key}.lora_A.weight"), (m.lora_B.weight, f"{key}.lora_B.weight")]
        if m.use_dora:
            params.append((m.lora_magnitude_vector, f"{key}.lora_magnitude_vector"))
        for p, k in params:
            if k not in state:
                raise LlmlabError(f"{d / WEIGHTS_NAME} lacks {k}")
            if state[k].shape != p.shape:
                raise LlmlabError(f"{k}: shape {tuple(state[k].shape)} in the file, {tuple(p.shape)} in the model")
            with torch.no_grad():
                p.copy_(state[k])
            used.add(k)
    extra = sorted(set(state) - used)
    if extra:
        raise LlmlabError(f"{d / WEIGHTS_NAME} has {len(extra)} tensor(s) the model has no place for, e.g. {extra[:3]}")
    return model

"""Hugging Face checkpoints <-> llmlab: read and write `config.json` + safetensors, without transformers.

One module per family, each four pure functions: `config_from_hf`, `config_to_hf`, `state_from_hf`,
`state_to_hf`. Import dispatches on `model_type`. Export writes a native family (gpt2, llama, mistral, qwen2,
mixtral, qwen2_moe, bert, t5) when one expresses the config (`family_for`), else model_type "llmlab" (`remote`):
our config embedded and our model code wrapped for transformers, loaded with `trust_remote_code=True`;
`hf_model_type` says which. The wrapper holds a `Transformer`, so an encoder-decoder exports as t5 or not at all.
Either way `AutoModelFor{CausalLM,MaskedLM,Seq2SeqLM}.from_pretrained(dir)` gives our logits, and `load_hf_model`
our state.
Weights load into a float32 model whatever dtype the checkpoint holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import save_file

from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.hf import bert, gpt2, llama, moe, remote, t5
from llmlab.model.io import atomic_write, build_model, load_state_file
from llmlab.model.seq2seq import EncoderDecoder
from llmlab.model.transformer import Transformer

FAMILIES: dict[str, ModuleType] = {"gpt2": gpt2, "llama": llama, "mistral": llama, "qwen2": llama, "mixtral": moe,
                                   "qwen2_moe": moe, "bert": bert, "t5": t5, remote.MODEL_TYPE: remote}
WEIGHTS_NAME, INDEX_NAME = "model.safetensors", "model.safetensors.index.json"


def family_for(cfg: TransformerConfig) -> str:
    """The native HF model_type that expresses cfg: t5 (encoder-decoder), bert (encoder), gpt2 (learned positions),
    llama/mistral/qwen2 (RoPE), mixtral/qwen2_moe (RoPE and n_experts > 0). Raises a one-line LlmlabError naming
    the first field that family cannot express."""
    if cfg.arch == "encoder-decoder":
        model_type = "t5"
    elif cfg.arch == "encoder":
        model_type = "bert"
    elif cfg.position == "learned":
        model_type = "gpt2"
    elif cfg.position == "rope":
        model_type = moe.model_type_for(cfg) if cfg.n_experts else llama.model_type_for(cfg)
    else:
        raise LlmlabError(f"cannot export position={cfg.position!r} natively: HF families here need 'learned' "
                          "(gpt2, bert) or 'rope' (llama, mistral, qwen2, mixtral, qwen2_moe)")
    FAMILIES[model_type].config_to_hf(cfg)  # the family's own checks: raises naming the field
    return model_type


def hf_model_type(cfg: TransformerConfig) -> str:
    """The model_type `save_hf_model` writes: the native family if one expresses cfg, else "llmlab" (remote code).
    An encoder-decoder t5 cannot express raises: the remote-code wrapper holds a decoder- or encoder-only model."""
    try:
        return family_for(cfg)
    except LlmlabError as e:
        if cfg.arch == "encoder-decoder":
            raise LlmlabError(f"{e}; an encoder-decoder exports as t5 only (no remote-code seq2seq wrapper)") from None
        return remote.MODEL_TYPE


def hf_config_to_llmlab(hf_config: dict[str, Any]) -> TransformerConfig:
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise LlmlabError(f"model_type={model_type!r} is not supported; llmlab imports {', '.join(FAMILIES)}")
    return FAMILIES[model_type].config_from_hf(hf_config)


def llmlab_to_hf_config(cfg: TransformerConfig) -> dict[str, Any]:
    return FAMILIES[hf_model_type(cfg)].config_to_hf(cfg)


def read_hf_state(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors`, or of every shard listed in `model.safetensors.index.json`."""
    p = Path(path)
    if (p / WEIGHTS_NAME).is_file():
        return load_state_file(p / WEIGHTS_NAME)
    if not (p / INDEX_NAME).is_file():
        raise LlmlabError(f"{p} has neither {WEIGHTS_NAME} nor {INDEX_NAME} (llmlab reads safetensors only)")
    try:
        weight_map = json.loads((p / INDEX_NAME).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
        raise LlmlabError(f"{p / INDEX_NAME} is not a safetensors index: {e}") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(load_state_file(p / shard))
    return state


def load_hf_model(path: str | Path) -> Transformer | EncoderDecoder:
    """An HF checkpoint dir (as `save_pretrained` writes it) -> Transformer or EncoderDecoder, eval mode, float32."""
    p = Path(path)
    try:
        hf_config = json.loads((p / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LlmlabError(f"cannot read {p / 'config.json'}: {e}") from None
    cfg = hf_config_to_llmlab(hf_config)
    hf_state = read_hf_state(p)
    if hf_config["model_type"] == "t5":  # HF 5.24 writes tie_word_embeddings=true for every T5: the weights decide
        cfg = t5.tie_from_state(cfg, hf_state)
    state = FAMILIES[hf_config["model_type"]].state_from_hf(hf_state, cfg)
    model = build_model(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # shapes that disagree with config.json
        raise LlmlabError(f"{p}: weights do not match config.json: {str(e).splitlines()[-1].strip()}") from None
    return model.eval()


def save_hf_model(model: Transformer | EncoderDecoder, out_dir: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` that `transformers.AutoModelFor*.from_pretrained` loads; for
    model_type "llmlab" (see `hf_model_type`) also the remote-code files, loaded with trust_remote_code=True."""
    cfg = model.cfg
    hf_config = llmlab_to_hf_config(cfg)
    state = FAMILIES[hf_config["model_type"]].state_to_hf(model.state_dict(), cfg)
    state = {k: v.detach().cpu() for k, v in state.items()}  # tied copies are already dropped: no shared storage
    dtype = next(iter(state.values())).dtype
    hf_config["dtype"] = str(dtype).removeprefix("torch.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    if hf_config["model_type"] == remote.MODEL_TYPE:
        for name in remote.CODE_FILES:
            atomic_write(out / name, lambda tmp, name=name: shutil.copyfile(remote.CODE_DIR / name, tmp))
    atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(hf_config, indent=2) + "\n"))
    return out


__all__ = ["family_for", "hf_config_to_llmlab", "hf_model_type", "llmlab_to_hf_config", "load_hf_model",
           "read_hf_state", "save_hf_model"]

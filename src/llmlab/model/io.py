"""Saving and loading models: an llmlab run directory or a Hugging Face checkpoint directory (or a GGUF file),
one entry point.

llmlab run dir: `model_config.json` (a TransformerConfig) + `model.safetensors` (our parameter names).
HF dir: `config.json` with a `model_type` + `model.safetensors` (or sharded, with an index), as
`save_pretrained` writes it; converted on load by `llmlab.model.hf`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.seq2seq import EncoderDecoder
from llmlab.model.transformer import Transformer

CONFIG_NAME = "model_config.json"
WEIGHTS_NAME = "model.safetensors"


def build_model(cfg: TransformerConfig) -> Transformer | EncoderDecoder:
    """The model a config describes: an EncoderDecoder for arch='encoder-decoder' (T5), else a Transformer."""
    return EncoderDecoder(cfg) if cfg.arch == "encoder-decoder" else Transformer(cfg)


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file()


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def save_model(model: Transformer | EncoderDecoder, out_dir: str | Path) -> Path:
    """Write config and weights into out_dir; each file is written to a temp name and renamed (atomic)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight")  # the same tensor as tok_emb.weight
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(model.cfg.to_json() + "\n"))
    return out


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename over path, so a kill mid-write never leaves a half file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # the bytes reach the disk before the rename makes them visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LlmlabError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LlmlabError(f"cannot read weights {path}: {e}") from None


def load_run_dir(path: Path) -> Transformer | EncoderDecoder:
    try:
        cfg = TransformerConfig.from_dict(json.loads((path / CONFIG_NAME).read_text()))
    except json.JSONDecodeError as e:
        raise LlmlabError(f"{path / CONFIG_NAME} is not valid JSON: {e}") from None
    model = build_model(cfg)
    state = load_state_file(path / WEIGHTS_NAME)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if cfg.tie_embeddings and "lm_head.weight" in missing:
        missing.remove("lm_head.weight")
    if missing or unexpected:
        raise LlmlabError(f"{path / WEIGHTS_NAME} does not match its config: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    return model.eval()


def load_model(path: str | Path) -> Transformer | EncoderDecoder:
    """Load an llmlab run directory, an HF checkpoint directory or a GGUF file; returns a model in eval mode."""
    p = Path(path)
    if not p.exists():
        raise LlmlabError(f"model path {p} does not exist")
    if p.is_file() and p.suffix == ".gguf":  # a llama.cpp file (llmlab export --format gguf)
        from llmlab.model.gguf import load_gguf_model

        return load_gguf_model(p)
    if not p.is_dir():
        raise LlmlabError(f"model path {p} is not a directory (expected an llmlab run dir or an HF checkpoint dir) "
                          "or a .gguf file")
    if is_run_dir(p):
        return load_run_dir(p)
    if is_hf_dir(p):
        from llmlab.model.hf import load_hf_model

        return load_hf_model(p)
    raise LlmlabError(f"{p} holds neither {CONFIG_NAME} (llmlab run) nor config.json (HF checkpoint)")

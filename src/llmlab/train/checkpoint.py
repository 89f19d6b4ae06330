"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is one file, `checkpoints/ckpt_0000100.pt` (100 = completed optimizer steps), written by torch.save to a
temp name, fsynced and renamed over the final name, so a kill mid-write leaves the earlier checkpoints intact. It holds
    format, step         step is also the LR schedule's whole state: lr_at is a pure function of it (schedules.py)
    model, optimizer     state dicts (AdamW's moments and per-parameter step counts)
    data                 ShardDataset.state_dict(): the batch sampler's RNG and position
    rng                  torch CPU (and every CUDA device), numpy's global RNG, Python's `random`
    train_config         the TrainConfig as a dict
    world_size           processes that trained it; tensors are always full (unsharded), even under FSDP
`checkpoints/latest` (JSON: step, file) names the newest and is written after it, also atomically; the `keep` newest
checkpoints are kept. torch.save writes a zip archive whose members carry CRC-32s that torch.load never checks;
`load_checkpoint` checks them (zipfile.testzip) first, so a truncated or corrupted file is an error that names it.
"""

from __future__ import annotations

import json
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from llmlab.errors import LlmlabError
from llmlab.model.io import atomic_write

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
FORMAT = "llmlab-checkpoint-1"
KEYS = ("step", "model", "optimizer", "data", "rng", "train_config")


def checkpoint_name(step: int) -> str:
    return f"ckpt_{step:07d}.pt"


def rng_state() -> dict:
    """Every global RNG a training step may draw from (dropout, sampling, user code)."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),  # plain lists: torch.load(weights_only)
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise LlmlabError(f"checkpoint has RNG states for {len(state['cuda'])} CUDA devices, this machine has "
                              f"{torch.cuda.device_count()}")
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(directory: Path | str, state: dict, keep: int) -> Path:
    """Write state (a dict with KEYS) as ckpt_<step>.pt, point `latest` at it, delete all but the `keep` newest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise LlmlabError(f"checkpoint state lacks {', '.join(missing)}")
    path = directory / checkpoint_name(state["step"])
    state = {"format": FORMAT, **state}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    pointer = json.dumps({"step": state["step"], "file": path.name}) + "\n"
    atomic_write(directory / LATEST, lambda tmp: Path(tmp).write_text(pointer))
    _fsync(directory)  # make both renames durable, not only the file contents
    for old in sorted(directory.glob("ckpt_*.pt"))[:-keep]:
        old.unlink()
    for stale in directory.glob(".*.tmp"):  # left by a kill during atomic_write
        stale.unlink()
    return path


def latest_checkpoint(directory: Path | str) -> Path | None:
    """The checkpoint `latest` names, or None when there is no `latest` (no checkpoint written yet)."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    try:
        entry = json.loads(pointer.read_text())
        path = Path(directory) / entry["file"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise LlmlabError(f"{pointer}: not a checkpoint pointer (expected JSON with 'step' and 'file'); point it at "
                          f"a checkpoint, e.g. {{\"step\": 100, \"file\": \"{checkpoint_name(100)}\"}}") from None
    if not path.is_file():
        raise LlmlabError(f"{pointer} names {path.name}, which does not exist")
    return path


def load_checkpoint(path: Path | str) -> dict:
    """The state saved by save_checkpoint, after checking the file's integrity; tensors are loaded on CPU."""
    path = Path(path)
    if not path.is_file():
        raise LlmlabError(f"{path}: no such checkpoint")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and compares its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise LlmlabError(f"{path}: truncated or not a checkpoint ({e}); resume from an older one or start over") \
            from None
    if bad is not None:
        raise LlmlabError(f"{path}: corrupt (CRC-32 mismatch in {bad}); resume from an older one or start over")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, ... for files torch.save did not write
        raise LlmlabError(f"{path}: cannot be read by torch.load ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise LlmlabError(f"{path}: not an llmlab checkpoint (format {FORMAT!r} expected)")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise LlmlabError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state


def _fsync(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""GGUF, llama.cpp's model file, from scratch: `export_gguf` writes an llmlab run dir (or HF dir) as one file that
llama.cpp runs, tokenizer and chat template included; `load_gguf_model` / `load_model(file.gguf)` read one back.

format.py: the container (GGUF v3: header, typed metadata, tensor infos, aligned data); quants.py: F32, F16, BF16 and
Q8_0; arch.py: llmlab configs <-> llama.cpp's llama, qwen2 and gpt2 keys and tensors (Q/K permuted for llama's
RoPE); vocab.py: the BPE tokenizer <-> tokenizer.ggml.* keys. Verified against gguf-py (`gguf` on PyPI): its reader
reads our files, its writer writes the same bytes, our reader reads its files, Q8_0 bytes equal its quantizer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.gguf.arch import arch_for, config_from_metadata, config_metadata, state_from_gguf, state_to_gguf
from llmlab.model.gguf.format import (
    ALIGNMENT_KEY,
    DEFAULT_ALIGNMENT,
    GGUFFile,
    Tensor,
    TensorType,
    Value,
    ValueType,
    read_gguf,
    write_gguf,
)
from llmlab.model.gguf.quants import decode, encode
from llmlab.model.gguf.vocab import tokenizer_from_metadata, tokenizer_metadata
from llmlab.model.transformer import Transformer

DTYPES = {"f32": TensorType.F32, "f16": TensorType.F16, "bf16": TensorType.BF16, "q8_0": TensorType.Q8_0}
# gguf-py LlamaFileType: general.file_type, the "mostly" type of the big matrices
FILE_TYPES = {TensorType.F32: 0, TensorType.F16: 1, TensorType.Q8_0: 7, TensorType.BF16: 32}
QUANTIZATION_VERSION = 2  # ggml.h GGML_QNT_VERSION, written by every convert_hf_to_gguf.py file


@dataclass
class GGUFExport:
    path: Path
    arch: str  # llama.cpp's general.architecture
    n_tensors: int
    n_bytes: int  # the file's size


def tensor_type(name: str, t, dtype: TensorType) -> TensorType:
    """convert_hf_to_gguf.py's choice: 1-D tensors (norms, biases) and position_embd stay F32; a matrix takes dtype,
    and Q8_0 falls back to F16 when its rows (ne[0]) are not a multiple of 32."""
    if t.dim() <= 1 or name == "position_embd.weight":
        return TensorType.F32
    if dtype == TensorType.Q8_0 and t.shape[-1] % 32:
        return TensorType.F16
    return dtype


def model_to_gguf(model: Transformer, tokenizer=None, dtype: str = "f16", name: str = "llmlab",
                  chat_template: str | None = None, bos_id: int | None = None
                  ) -> tuple[dict[str, Value], list[Tensor]]:
    """The metadata and encoded tensors of `model` as a llama.cpp file of architecture `arch_for(model.cfg)`."""
    if dtype not in DTYPES:
        raise LlmlabError(f"--dtype {dtype!r} is not supported for GGUF; choose one of {', '.join(DTYPES)}")
    cfg, type_ = model.cfg, DTYPES[dtype]
    arch = arch_for(cfg)
    md = {"general.architecture": Value.string(arch), "general.type": Value.string("model"),
          "general.name": Value.string(name), ALIGNMENT_KEY: Value.u32(DEFAULT_ALIGNMENT)}
    md.update(config_metadata(cfg, arch))
    md["general.file_type"] = Value.u32(FILE_TYPES[type_])
    if tokenizer is not None:
        md.update(tokenizer_metadata(tokenizer, cfg.vocab_size, chat_template, bos_id))
    md["general.quantization_version"] = Value.u32(QUANTIZATION_VERSION)
    tensors = []
    for gguf_name, t in state_to_gguf(model.state_dict(), cfg, arch).items():
        tt = tensor_type(gguf_name, t, type_)
        tensors.append(Tensor(gguf_name, tuple(t.shape), tt, encode(t, tt)))
    return md, tensors


def export_gguf(model_dir: str | Path, out: str | Path, dtype: str = "f16") -> GGUFExport:
    """MODEL (llmlab run dir or HF dir) -> one GGUF file: weights, hyperparameters, tokenizer and chat template.

    The chat template is MODEL's own (chat_template.jinja or tokenizer_config.json), else ChatML when the tokenizer
    has <|im_start|> and <|im_end|>, as `export_hf` writes it."""
    from llmlab.infer.chat_template import IM_END, IM_START, load_chat_template
    from llmlab.model.hf.checkpoint import CHATML_JINJA
    from llmlab.model.io import load_model
    from llmlab.tokenizer import find_tokenizer, sequence_start_id

    src, out = Path(model_dir), Path(out)
    if dtype not in DTYPES:
        raise LlmlabError(f"--dtype {dtype!r} is not supported for GGUF; choose one of {', '.join(DTYPES)}")
    if out.is_dir():
        raise LlmlabError(f"--out {out} is a directory; GGUF is one file: give a path such as {out / 'model.gguf'}")
    model = load_model(src)
    arch_for(model.cfg)  # an unsupported config fails before the tokenizer is looked for
    tokenizer = find_tokenizer(src, model.cfg.vocab_size)
    template = load_chat_template(src).source
    if template is None and {IM_START, IM_END} <= set(tokenizer.special_tokens):
        template = CHATML_JINJA
    md, tensors = model_to_gguf(model, tokenizer, dtype, src.resolve().name, template,
                                sequence_start_id(src, tokenizer))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(out, md, tensors)
    return GGUFExport(out, md["general.architecture"].value, len(tensors), out.stat().st_size)


def gguf_config(gguf: GGUFFile, source: str = "GGUF file") -> TransformerConfig:
    """The TransformerConfig a GGUF file's metadata and tensor shapes describe."""
    return config_from_metadata(gguf.metadata, {n: t.shape for n, t in gguf.tensors.items()}, source)


def load_gguf_model(path: str | Path) -> Transformer:
    """A GGUF file of architecture llama, qwen2 or gpt2 (ours or llama.cpp's) -> Transformer in eval mode, float32."""
    gguf = read_gguf(path)
    cfg = gguf_config(gguf, str(path))
    model = Transformer(cfg)
    unreadable = [t for t in gguf.tensors.values() if t.data is None]  # a ggml type llmlab has no decoder for
    if unreadable:
        raise LlmlabError(f"{path}: tensor {unreadable[0].name!r} has ggml type {unreadable[0].type}; llmlab reads "
                          "F32, F16, BF16 and Q8_0 (and integer types)")
    tensors = {name: decode(t.data, t.type, t.shape) for name, t in gguf.tensors.items()}
    arch = gguf.metadata["general.architecture"].value
    state = state_from_gguf(tensors, cfg, arch, set(model.state_dict()), str(path))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise LlmlabError(f"{path}: weights do not match the metadata: {str(e).splitlines()[-1].strip()}") from None
    return model.eval()


def load_gguf_tokenizer(path: str | Path):
    """The tokenizer stored in a GGUF file, as an llmlab Tokenizer."""
    return tokenizer_from_metadata(read_gguf(path).metadata, str(path))


__all__ = ["DTYPES", "GGUFExport", "GGUFFile", "Tensor", "TensorType", "Value", "ValueType", "export_gguf",
           "gguf_config", "load_gguf_model", "load_gguf_tokenizer", "model_to_gguf", "read_gguf", "write_gguf"]

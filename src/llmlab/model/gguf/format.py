"""GGUF v3, the file format of llama.cpp and ggml, read and written from scratch.

Spec: ggml's docs/gguf.md (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md). All little-endian:

    header       "GGUF" (uint32 0x46554747), uint32 version = 3, uint64 tensor_count, uint64 metadata_kv_count
    metadata     metadata_kv_count x (string key, uint32 value_type, value)
    tensor infos tensor_count x (string name, uint32 n_dims, uint64 dims[n_dims], uint32 ggml_type, uint64 offset)
    padding      zeros up to a multiple of `general.alignment` (32 when the key is absent)
    tensor data  each tensor at its offset from the start of this section, a multiple of the alignment

A string is a uint64 byte length and UTF-8 bytes without a NUL; an array is a uint32 item type, a uint64 count and
the items (strings and nested arrays included). Dims are ggml's ne[]: the fastest-varying first, so the PyTorch
(out, in) weight is stored as [in, out]; `Tensor.shape` here is in PyTorch order and is reversed on disk.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from llmlab.errors import LlmlabError

MAGIC = b"GGUF"  # the uint32 0x46554747 written little-endian
VERSION = 3
DEFAULT_ALIGNMENT = 32  # gguf.md: GGUF_DEFAULT_ALIGNMENT, used when general.alignment is absent
ALIGNMENT_KEY = "general.alignment"


class ValueType(IntEnum):
    """gguf.md `gguf_metadata_value_type`."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7  # one byte, 0 or 1
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# struct codes of the fixed-size value types (little-endian is prefixed where they are packed)
SCALAR_FORMATS = {ValueType.UINT8: "B", ValueType.INT8: "b", ValueType.UINT16: "H", ValueType.INT16: "h",
                  ValueType.UINT32: "I", ValueType.INT32: "i", ValueType.FLOAT32: "f", ValueType.BOOL: "?",
                  ValueType.UINT64: "Q", ValueType.INT64: "q", ValueType.FLOAT64: "d"}


class TensorType(IntEnum):
    """ggml.h `ggml_type`: the tensor encodings llmlab reads and writes (a file may hold others; see `TYPE_SIZES`)."""

    F32 = 0
    F16 = 1
    Q8_0 = 8
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    BF16 = 30


# ggml.c type_traits: (elements per block, bytes per block); Q8_0 is 32 int8 and one fp16 scale
TYPE_SIZES = {TensorType.F32: (1, 4), TensorType.F16: (1, 2), TensorType.Q8_0: (32, 34), TensorType.I8: (1, 1),
              TensorType.I16: (1, 2), TensorType.I32: (1, 4), TensorType.I64: (1, 8), TensorType.F64: (1, 8),
              TensorType.BF16: (1, 2)}


@dataclass(frozen=True)
class Value:
    """A typed metadata value: GGUF stores the type, and e.g. 32 as UINT32 and as INT32 are different files.
    For ARRAY, `value` is a list and `item_type` the type of its items (ARRAY again for nested arrays, whose items
    are then `Value`s)."""

    type: ValueType
    value: Any
    item_type: ValueType | None = None

    @classmethod
    def string(cls, s: str) -> Value:
        return cls(ValueType.STRING, s)

    @classmethod
    def u32(cls, n: int) -> Value:
        return cls(ValueType.UINT32, int(n))

    @classmethod
    def f32(cls, x: float) -> Value:
        return cls(ValueType.FLOAT32, float(x))

    @classmethod
    def boolean(cls, b: bool) -> Value:
        return cls(ValueType.BOOL, bool(b))

    @classmethod
    def array(cls, item_type: ValueType, items: Iterable[Any]) -> Value:
        return cls(ValueType.ARRAY, list(items), item_type)


@dataclass
class Tensor:
    """One tensor: `data` is its encoded bytes (uint8) in ggml's layout; `offset` is from the data section start."""

    name: str
    shape: tuple[int, ...]  # PyTorch order: outermost first
    type: int  # a TensorType, or another ggml_type read from a file
    data: np.ndarray | None = None  # uint8; None for a read tensor of a type llmlab does not know
    offset: int = 0


@dataclass
class GGUFFile:
    version: int
    metadata: dict[str, Value]
    tensors: dict[str, Tensor] = field(default_factory=dict)  # in file order
    alignment: int = DEFAULT_ALIGNMENT


def tensor_nbytes(type_: int, shape: tuple[int, ...], name: str = "") -> int:
    if type_ not in TYPE_SIZES:
        raise LlmlabError(f"tensor {name!r} has ggml type {type_}; llmlab reads "
                          f"{', '.join(t.name for t in TYPE_SIZES)}")
    block, size = TYPE_SIZES[TensorType(type_)]
    n = int(np.prod(shape, dtype=np.int64))
    if shape and shape[-1] % block:  # blocks run along the fastest dimension, ne[0]
        raise LlmlabError(f"tensor {name!r}: {TensorType(type_).name} needs a last dimension divisible by {block}, "
                          f"got shape {shape}")
    return n // block * size


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment  # ggml's GGML_PAD


# ------------------------------------------------------------------------------------------------------------ write
def _pack_string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _pack_value(v: Value) -> bytes:
    """The value's bytes after its type tag: a scalar, a string, or item type + count + items."""
    if v.type in SCALAR_FORMATS:
        return struct.pack("<" + SCALAR_FORMATS[v.type], v.value)
    if v.type == ValueType.STRING:
        return _pack_string(v.value)
    if v.type == ValueType.ARRAY:
        if v.item_type is None:
            raise LlmlabError("a GGUF array needs an item_type")
        head = struct.pack("<IQ", v.item_type, len(v.value))
        if v.item_type in SCALAR_FORMATS:  # one struct call for the whole array
            return head + struct.pack(f"<{len(v.value)}{SCALAR_FORMATS[v.item_type]}", *v.value)
        if v.item_type == ValueType.STRING:
            return head + b"".join(_pack_string(s) for s in v.value)
        # nested arrays: each item is a Value of type ARRAY, written without its own type tag (gguf.md)
        return head + b"".join(_pack_value(item) for item in v.value)
    raise LlmlabError(f"unknown GGUF value type {v.type}")


def header_bytes(metadata: Mapping[str, Value], tensors: Iterable[Tensor], alignment: int) -> tuple[bytes, list[int]]:
    """Everything before the tensor data, padded to the alignment, and each tensor's data offset."""
    tensors = list(tensors)
    out = bytearray(MAGIC + struct.pack("<IQQ", VERSION, len(tensors), len(metadata)))
    for key, v in metadata.items():
        out += _pack_string(key) + struct.pack("<I", v.type) + _pack_value(v)
    offsets, offset = [], 0
    for t in tensors:
        n = tensor_nbytes(t.type, t.shape, t.name)
        if t.data is None or t.data.nbytes != n:
            raise LlmlabError(f"tensor {t.name!r}: {0 if t.data is None else t.data.nbytes} bytes of data, its "
                              f"shape {t.shape} as {TensorType(t.type).name} needs {n}")
        dims = tuple(reversed(t.shape))  # ggml order: ne[0] is the innermost dimension
        out += _pack_string(t.name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, t.type, offset)
        offsets.append(offset)
        offset += _pad(n, alignment)  # the next tensor starts aligned (gguf.md: offsets are multiples of ALIGNMENT)
    out += bytes(_pad(len(out), alignment) - len(out))
    return bytes(out), offsets


def write_gguf(path: str | Path, metadata: Mapping[str, Value], tensors: Iterable[Tensor]) -> Path:
    """Write a GGUF v3 file; the alignment is metadata's general.alignment (UINT32) when present, else 32.

    Every tensor is followed by zeros to the alignment, the last one too, as gguf-py's GGUFWriter does."""
    from llmlab.model.io import atomic_write

    if sys.byteorder != "little":
        raise LlmlabError("writing GGUF needs a little-endian machine")
    alignment = metadata[ALIGNMENT_KEY].value if ALIGNMENT_KEY in metadata else DEFAULT_ALIGNMENT
    tensors = list(tensors)
    if len({t.name for t in tensors}) != len(tensors):
        raise LlmlabError("GGUF tensor names must be unique")
    head, _ = header_bytes(metadata, tensors, alignment)
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(head)
            for t in tensors:
                f.write(t.data.tobytes())
                f.write(bytes(_pad(t.data.nbytes, alignment) - t.data.nbytes))

    atomic_write(path, write)
    return path


# ------------------------------------------------------------------------------------------------------------- read
class _Cursor:
    """Reads little-endian fields from a buffer, front to back."""

    def __init__(self, buf: np.ndarray, source: str) -> None:
        self.buf, self.pos, self.source = buf, 0, source

    def unpack(self, fmt: str) -> tuple:
        try:
            values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        except struct.error:
            raise LlmlabError(f"{self.source}: truncated GGUF file (at byte {self.pos})") from None
        self.pos += struct.calcsize("<" + fmt)
        return values

    def string(self) -> str:
        (n,) = self.unpack("Q")
        if self.pos + n > len(self.buf):
            raise LlmlabError(f"{self.source}: truncated GGUF file (a string of {n} bytes at byte {self.pos})")
        raw = self.buf[self.pos:self.pos + n].tobytes()
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise LlmlabError(f"{self.source}: a GGUF string at byte {self.pos - n} is not UTF-8") from None

    def value(self, vtype: int) -> Any:
        if vtype in SCALAR_FORMATS:
            return self.unpack(SCALAR_FORMATS[ValueType(vtype)])[0]
        if vtype == ValueType.STRING:
            return self.string()
        if vtype == ValueType.ARRAY:
            item_type, n = self.unpack("IQ")
            return Value(ValueType.ARRAY, self.items(item_type, n), self.value_type(item_type))
        raise LlmlabError(f"{self.source}: unknown GGUF value type {vtype} at byte {self.pos - 4}")

    def items(self, item_type: int, n: int) -> list:
        if item_type in SCALAR_FORMATS and item_type != ValueType.BOOL:  # numbers: one numpy read
            dtype = np.dtype("<" + SCALAR_FORMATS[ValueType(item_type)])
            if self.pos + n * dtype.itemsize > len(self.buf):
                raise LlmlabError(f"{self.source}: truncated GGUF file (an array of {n} at byte {self.pos})")
            items = np.frombuffer(self.buf, dtype, n, self.pos).tolist()
            self.pos += n * dtype.itemsize
            return items
        if item_type == ValueType.ARRAY:
            return [self.value(ValueType.ARRAY) for _ in range(n)]
        return [self.value(item_type) for _ in range(n)]

    def value_type(self, vtype: int) -> ValueType:
        try:
            return ValueType(vtype)
        except ValueError:
            raise LlmlabError(f"{self.source}: unknown GGUF value type {vtype}") from None


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file (v2 or v3, little-endian). Tensor data are views into a read-only memory map: nothing is
    loaded until used."""
    path = Path(path)
    if not path.is_file():
        raise LlmlabError(f"{path}: no such GGUF file")
    buf = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
    cur = _Cursor(buf, str(path))
    if buf[:4].tobytes() != MAGIC:
        raise LlmlabError(f"{path}: not a GGUF file (the first bytes are not 'GGUF')")
    cur.pos = 4
    (version,) = cur.unpack("I")
    if version not in (2, 3):  # v1 had 32-bit counts; a big-endian file reads as 0x03000000 here
        raise LlmlabError(f"{path}: GGUF version {version} is not supported (llmlab reads little-endian v2 and v3)")
    n_tensors, n_kv = cur.unpack("QQ")
    metadata: dict[str, Value] = {}
    for _ in range(n_kv):
        key = cur.string()
        (vtype,) = cur.unpack("I")
        v = cur.value(vtype)
        metadata[key] = v if isinstance(v, Value) else Value(ValueType(vtype), v)
    alignment = metadata[ALIGNMENT_KEY].value if ALIGNMENT_KEY in metadata else DEFAULT_ALIGNMENT
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        (n_dims,) = cur.unpack("I")
        dims = cur.unpack(f"{n_dims}Q")
        type_, offset = cur.unpack("IQ")
        infos.append(Tensor(name, tuple(reversed(dims)), type_, None, offset))
    data_start = _pad(cur.pos, alignment)
    tensors = {}
    for t in infos:
        if t.type in TYPE_SIZES:
            n = tensor_nbytes(t.type, t.shape, t.name)
            start = data_start + t.offset
            if start + n > len(buf):
                raise LlmlabError(f"{path}: tensor {t.name!r} runs past the end of the file")
            t.type = TensorType(t.type)
            t.data = buf[start:start + n]
        tensors[t.name] = t
    return GGUFFile(version, metadata, tensors, alignment)

"""Read documents from the user's data: plain text files, JSONL, or a Hugging Face `datasets` dataset.

One input string becomes a stream of `Document`s:
- a `.jsonl` / `.json` file: one JSON object per line, the text under `text_field` (default "text");
  a string "source" field, when present, names the document's source (the fetched corpus uses it);
- any other file: one document per file (UTF-8); a play, a speech or a book stays whole, and the
  cleaning rules judge it as a whole, as Gopher judges a web page;
- a directory written by `datasets.Dataset.save_to_disk`: loaded with `datasets.load_from_disk`;
- any other directory: its `*.txt`, `*.jsonl` and `*.json` files, recursively, in sorted order;
- `hf:NAME` or `hf:NAME:CONFIG`: `datasets.load_dataset(NAME, CONFIG, split=split)` (the hub, or the
  local HF cache when offline).
Every mistake is one `LlmlabError` line naming the file (and line).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmlab.errors import LlmlabError

JSONL_SUFFIXES = (".jsonl", ".json")
TEXT_SUFFIXES = (".txt",)
HF_DISK_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


@dataclass(frozen=True)
class Document:
    text: str
    source: str


def load_documents(inputs: list[str | Path], text_field: str = "text", split: str = "train") -> Iterator[Document]:
    """Documents from each input in turn (see the module docstring for what an input may be)."""
    for spec in inputs:
        spec = str(spec)
        if spec.startswith("hf:"):
            yield from read_hf_hub(spec[3:], text_field, split)
            continue
        path = Path(spec).expanduser()
        if path.is_dir():
            if any((path / m).is_file() for m in HF_DISK_MARKERS):
                yield from read_hf_disk(path, text_field, split)
            else:
                yield from read_directory(path, text_field)
        elif path.is_file():
            yield from read_file(path, text_field, source=path.stem)
        else:
            raise LlmlabError(f"{path}: no such file or directory (for a Hugging Face dataset write hf:NAME)")


def read_file(path: Path, text_field: str = "text", source: str | None = None) -> Iterator[Document]:
    source = source or path.stem
    if path.suffix.lower() in JSONL_SUFFIXES:
        yield from read_jsonl(path, text_field, source)
    else:
        yield Document(read_text(path), source)


def read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise LlmlabError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None
    except OSError as e:
        raise LlmlabError(f"{path}: cannot read ({e.strerror})") from None


def read_jsonl(path: Path, text_field: str = "text", source: str | None = None) -> Iterator[Document]:
    """One JSON object per line; blank lines are skipped; the error names file:line."""
    source = source or path.stem
    try:
        f = path.open(encoding="utf-8")
    except OSError as e:
        raise LlmlabError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                yield _jsonl_document(path, lineno, line, text_field, source)
        except UnicodeDecodeError:
            raise LlmlabError(f"{path}:{lineno + 1}: not UTF-8 text") from None


def _jsonl_document(path: Path, lineno: int, line: str, text_field: str, source: str) -> Document:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise LlmlabError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise LlmlabError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    if text_field not in record:
        keys = ", ".join(sorted(record)) or "none"
        raise LlmlabError(f"{path}:{lineno}: no {text_field!r} field (fields: {keys}); choose one with --text-field")
    text = record[text_field]
    if not isinstance(text, str):
        raise LlmlabError(f"{path}:{lineno}: field {text_field!r} is {type(text).__name__}, expected a string")
    doc_source = record.get("source")
    return Document(text, doc_source if isinstance(doc_source, str) else source)


def read_directory(path: Path, text_field: str = "text") -> Iterator[Document]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES)
    if not files:
        raise LlmlabError(f"{path}: no .txt, .jsonl or .json files in this directory")
    for file in files:
        yield from read_file(file, text_field, source=path.name)


def read_hf_disk(path: Path, text_field: str = "text", split: str = "train") -> Iterator[Document]:
    """A dataset written by `save_to_disk`; for a DatasetDict, the `split` member."""
    datasets = _import_datasets()
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise LlmlabError(f"{path}: no split {split!r} (splits: {', '.join(data)})")
        data = data[split]
    yield from _hf_documents(data, str(path), text_field, source=path.name)


def read_hf_hub(spec: str, text_field: str = "text", split: str = "train") -> Iterator[Document]:
    """`NAME` or `NAME:CONFIG` through `datasets.load_dataset` (needs the network or a warm HF cache)."""
    datasets = _import_datasets()
    name, _, config = spec.partition(":")
    try:
        data = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # the hub, the cache and the builders raise many types; the user needs one line
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LlmlabError(f"hf:{spec}: load_dataset failed: {first_line}") from None
    yield from _hf_documents(data, f"hf:{spec}", text_field, source=name.rsplit("/", 1)[-1])


def _hf_documents(data, where: str, text_field: str, source: str) -> Iterator[Document]:
    if text_field not in data.column_names:
        raise LlmlabError(f"{where}: no column {text_field!r} (columns: {', '.join(data.column_names)})")
    for i, text in enumerate(data[text_field]):
        if not isinstance(text, str):
            raise LlmlabError(f"{where}: row {i}: column {text_field!r} is {type(text).__name__}, expected a string")
        yield Document(text, source)


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise LlmlabError("reading a Hugging Face dataset needs the `datasets` package: pip install datasets") from None
    return datasets


def write_jsonl(docs: list[Document] | Iterator[Document], path: Path) -> tuple[int, int]:
    """Write documents as JSONL `{"text", "source"}` atomically (temp file + rename); returns (docs, chars)."""
    tmp = path.with_name(path.name + ".tmp")
    n_docs = n_chars = 0
    with tmp.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc.text, "source": doc.source}, ensure_ascii=False) + "\n")
            n_docs += 1
            n_chars += len(doc.text)
    tmp.replace(path)
    return n_docs, n_chars

"""`llmlab data prepare / fetch` (the typer app in cli/data_cmds.py): options reach the library, the report is
printed, and a tokenizer directory is read through llmlab.tokenizer.load_tokenizer (decoded shards equal the
input: the byte tokenizer saved as a BPE without merges)."""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import llmlab.tokenizer
from llmlab.cli.data_cmds import app
from llmlab.data.load import read_jsonl
from llmlab.data.shards import open_shards
from llmlab.errors import LlmlabError
from llmlab.tokenizer.bytes import ByteTokenizer

SAMPLE = Path(__file__).parent / "sample"


def test_prepare_prints_the_report(tmp_path):
    """prepare --input FILE --out DIR: exit 0, the stage table and the shard table are printed."""
    result = CliRunner().invoke(app, ["prepare", "--input", str(SAMPLE / "zh.jsonl"), "--out", str(tmp_path),
                                      "--workers", "1", "--val-fraction", "0.2"])
    assert result.exit_code == 0, result.output
    assert "near duplicates" in result.output and "tang" in result.output
    assert (tmp_path / "manifest.json").is_file()


def test_prepare_with_a_tokenizer_directory(tmp_path):
    """--tokenizer DIR loads with llmlab.tokenizer.load_tokenizer; shards decode back to the documents."""
    if not hasattr(llmlab.tokenizer, "load_tokenizer") or not hasattr(ByteTokenizer, "save"):
        pytest.skip("llmlab.tokenizer.load_tokenizer / ByteTokenizer.save not available")
    ByteTokenizer().save(tmp_path / "tok")
    tok = llmlab.tokenizer.load_tokenizer(tmp_path / "tok")
    result = CliRunner().invoke(app, ["prepare", "--input", str(SAMPLE / "zh.jsonl"), "--out", str(tmp_path / "o"),
                                      "--tokenizer", str(tmp_path / "tok"), "--val-fraction", "0", "--workers", "1"])
    assert result.exit_code == 0, result.output
    _, arrays = open_shards(tmp_path / "o", "train")
    ids = np.concatenate([np.asarray(a) for a in arrays]).tolist()
    docs, start = [], 0
    for i, t in enumerate(ids):
        if t == tok.eos_id:
            docs.append(tok.decode(ids[start:i]))
            start = i + 1
    assert docs == [d.text for d in read_jsonl(SAMPLE / "zh.jsonl")]


def test_tokenizer_without_load_tokenizer_is_a_clear_error(tmp_path, monkeypatch):
    """If llmlab.tokenizer has no load_tokenizer, --tokenizer says so (and how to do without)."""
    monkeypatch.delattr(llmlab.tokenizer, "load_tokenizer", raising=False)
    result = CliRunner().invoke(app, ["prepare", "--input", str(SAMPLE / "zh.jsonl"), "--out", str(tmp_path),
                                      "--tokenizer", str(tmp_path)])
    assert isinstance(result.exception, LlmlabError) and "load_tokenizer" in str(result.exception)


def test_fetch_unknown_source_is_an_llmlab_error(tmp_path):
    """fetch --sources with a misspelt name raises LlmlabError (main() prints it as one line, exit 2)."""
    result = CliRunner().invoke(app, ["fetch", "--cache", str(tmp_path), "--sources", "sotu,bible"])
    assert isinstance(result.exception, LlmlabError) and "unknown source bible" in str(result.exception)

"""Loading user data: plain text (one document per file), JSONL with a configurable text field, a directory,
and a Hugging Face dataset saved with `save_to_disk` (through `datasets.load_from_disk`). Criterion for
mistakes: one LlmlabError line that names the file and, for JSONL, the line."""

import json
from pathlib import Path

import pytest

from llmlab.data.load import Document, load_documents, read_jsonl, write_jsonl
from llmlab.errors import LlmlabError

SAMPLE = Path(__file__).parent / "sample"
SONNET = "From fairest creatures we desire increase,\nThat thereby beauty's rose might never die,\n"


def one_line_error(inputs, **kw) -> str:
    with pytest.raises(LlmlabError) as e:
        list(load_documents(inputs, **kw))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_text_file_is_one_document(tmp_path):
    """A text file is one document, byte-exact (blank lines inside are kept); its source is the file stem."""
    (tmp_path / "sonnet.txt").write_text(SONNET + "\n\n" + SONNET, encoding="utf-8")
    assert list(load_documents([tmp_path / "sonnet.txt"])) == [Document(SONNET + "\n\n" + SONNET, "sonnet")]


def test_directory_reads_txt_and_jsonl_recursively_in_order(tmp_path):
    """A directory: its .txt/.jsonl files, recursively, sorted by path; the directory name is the source unless
    a JSONL record has its own "source"."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("zed", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ay", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text('{"text": "see"}\n{"text": "sea", "source": "ocean"}\n', encoding="utf-8")
    (tmp_path / "skip.csv").write_text("x,y", encoding="utf-8")
    docs = list(load_documents([tmp_path]))
    assert docs == [Document("ay", tmp_path.name), Document("zed", tmp_path.name), Document("see", tmp_path.name),
                    Document("sea", "ocean")]


def test_jsonl_text_field_is_configurable_and_blank_lines_skipped(tmp_path):
    """JSONL: the text is read from --text-field; blank lines are allowed; write_jsonl round-trips."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"content": "first", "id": 1}\n\n{"content": "二つ目"}\n', encoding="utf-8")
    docs = list(load_documents([path], text_field="content"))
    assert docs == [Document("first", "d"), Document("二つ目", "d")]
    assert write_jsonl(docs, tmp_path / "out.jsonl") == (2, 8)
    assert list(read_jsonl(tmp_path / "out.jsonl")) == docs


def test_the_sample_corpus_loads():
    """The committed sample: 23 English and 5 Chinese documents with their sources."""
    docs = list(load_documents([SAMPLE / "en.jsonl", SAMPLE / "zh.jsonl"]))
    assert len(docs) == 28
    assert {d.source for d in docs} == {"sotu", "shakespeare", "kjv", "brown", "tang"}


def test_missing_input_names_the_path(tmp_path):
    """A path that does not exist: the error names it and hints at hf:NAME."""
    msg = one_line_error([tmp_path / "nope.jsonl"])
    assert "nope.jsonl" in msg and "no such file" in msg and "hf:" in msg


def test_invalid_json_line_names_file_and_line(tmp_path):
    """Line 3 is not JSON -> 'file:3: invalid JSON ...'."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"\n', encoding="utf-8")
    assert one_line_error([path]).startswith(f"{path}:3: invalid JSON")


def test_missing_field_names_file_line_and_fields(tmp_path):
    """A record without the text field -> 'file:2: no 'text' field (fields: ...)'."""
    path = tmp_path / "nofield.jsonl"
    path.write_text('{"text": "a"}\n{"body": "b", "id": 2}\n', encoding="utf-8")
    msg = one_line_error([path])
    assert msg.startswith(f"{path}:2: no 'text' field") and "body, id" in msg


@pytest.mark.parametrize("line, expected", [('["a list"]', "expected a JSON object"),
                                            ('{"text": 42}', "is int, expected a string")])
def test_wrong_record_types(tmp_path, line, expected):
    """A record that is not an object, or a text that is not a string, is named with its line."""
    path = tmp_path / "types.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    msg = one_line_error([path])
    assert msg.startswith(f"{path}:1:") and expected in msg


def test_non_utf8_text_file(tmp_path):
    """Latin-1 bytes in a .txt file: the error names the file and the byte offset."""
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    assert one_line_error([path]) == f"{path}: not UTF-8 text (invalid byte at offset 3)"


def test_empty_directory(tmp_path):
    assert "no .txt, .jsonl or .json files" in one_line_error([tmp_path])


@pytest.fixture(scope="module")
def datasets():
    return pytest.importorskip("datasets", reason="the `datasets` package is not installed (optional extra)")


def test_hf_dataset_saved_to_disk(tmp_path, datasets):
    """datasets.Dataset.save_to_disk -> load_from_disk: the same texts; a DatasetDict gives the chosen split;
    a missing column or split is one line."""
    texts = [json.loads(line)["text"] for line in (SAMPLE / "zh.jsonl").read_text(encoding="utf-8").splitlines()]
    datasets.Dataset.from_dict({"content": texts, "n": list(range(len(texts)))}).save_to_disk(tmp_path / "ds")
    assert [d.text for d in load_documents([tmp_path / "ds"], text_field="content")] == texts
    assert "no column 'text' (columns: content, n)" in one_line_error([tmp_path / "ds"])

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts[:2]}),
                               "validation": datasets.Dataset.from_dict({"text": texts[2:]})})
    dd.save_to_disk(tmp_path / "dd")
    assert [d.text for d in load_documents([tmp_path / "dd"], split="validation")] == texts[2:]
    assert "no split 'test'" in one_line_error([tmp_path / "dd"], split="test")


def test_hf_hub_name_offline_is_one_line(datasets, monkeypatch):
    """hf:NAME goes through datasets.load_dataset; offline (HF_DATASETS_OFFLINE=1, as in every test) the hub is
    unreachable and the failure is one LlmlabError line naming the dataset."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    msg = one_line_error(["hf:llmlab-test/does-not-exist"])
    assert msg.startswith("hf:llmlab-test/does-not-exist: load_dataset failed")

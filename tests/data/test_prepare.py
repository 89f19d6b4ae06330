"""prepare end to end on the committed sample plus a planted exact copy and a planted near copy. Criterion: the
report counts exactly the documents each stage should remove (known from the sample: Psalm 117, Numbers 7,
Brown cj20; one exact, one near duplicate), the shards hold exactly the kept documents' tokens, and the
manifest records the report."""

import io
import json
import random
from pathlib import Path

import pytest
from rich.console import Console

from llmlab.data.load import read_jsonl
from llmlab.data.prepare import prepare
from llmlab.data.shards import ShardDataset
from llmlab.errors import LlmlabError

SAMPLE = Path(__file__).parent / "sample"


def planted_inputs(tmp_path: Path) -> list[Path]:
    """The sample, plus extra/: an exact copy of Genesis 1 with other line breaks, a copy of John 1 with 1% of
    its words changed."""
    docs = {d.text.split("\n")[0]: d.text for d in read_jsonl(SAMPLE / "en.jsonl")}
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "genesis_copy.txt").write_text(docs["Genesis 1"].replace("\n", " \n\n"), encoding="utf-8")
    words = docs["John 1"].split(" ")
    for i in random.Random(0).sample(range(len(words)), len(words) // 100):
        words[i] = "changed"
    (extra / "john_near.txt").write_text(" ".join(words), encoding="utf-8")
    return [SAMPLE / "en.jsonl", SAMPLE / "zh.jsonl", extra]


def test_prepare_end_to_end_on_the_sample(tmp_path):
    """30 documents in: 3 removed by rules, 1 exact and 1 near duplicate; 25 written, tokens = UTF-8 bytes + eos."""
    out = tmp_path / "shards"
    report = prepare(planted_inputs(tmp_path), out, val_fraction=0.1, workers=2, progress=False)
    assert report.docs_in == 30
    assert {k: v for k, v in report.removed.items() if v} == {"word_count": 1, "repeated_lines": 1, "curly_brace": 1}
    assert (report.exact_duplicates, report.near_duplicates, report.docs_out) == (1, 1, 25)

    removed = {"Psalms 117", "Numbers 7"}
    kept = [d for d in read_jsonl(SAMPLE / "en.jsonl") if d.text.split("\n")[0] not in removed
            and "f{t}" not in d.text] + list(read_jsonl(SAMPLE / "zh.jsonl"))
    assert len(kept) == 25
    splits = report.splits
    assert splits["train"]["docs"] + splits["val"]["docs"] == 25
    assert splits["train"]["tokens"] + splits["val"]["tokens"] == sum(len(d.text.encode()) + 1 for d in kept)
    assert set(splits["val"]["sources"]) == {"sotu", "shakespeare", "kjv", "brown", "tang"}

    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["prepare"]["near_duplicates"] == 1 and len(manifest["prepare"]["inputs"]) == 3
    assert ShardDataset(out, "val", block_size=64, batch_size=2).random_batch().shape == (2, 65)

    console = Console(file=io.StringIO(), width=120)
    for table in report.tables():
        console.print(table)
    text = console.file.getvalue()
    assert "near duplicates" in text and "curly_brace" in text and "tang" in text


def test_skip_rule_keeps_what_the_rule_would_remove(tmp_path):
    """--skip-rule curly_brace keeps Brown cj20; an unknown rule name is an error listing the rules."""
    report = prepare([SAMPLE / "en.jsonl"], tmp_path / "a", skip_rules=("curly_brace",), workers=1, progress=False)
    assert "curly_brace" not in report.removed and report.docs_out == 21
    with pytest.raises(LlmlabError, match="rules: word_count"):
        prepare([SAMPLE / "en.jsonl"], tmp_path / "b", skip_rules=("curly",), progress=False)


def test_default_input_needs_a_fetch_first(tmp_path):
    """No --input and nothing fetched: the error says which command to run."""
    with pytest.raises(LlmlabError, match="llmlab data fetch"):
        prepare(None, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)


def test_everything_removed_is_an_error(tmp_path):
    """A corpus the rules reject entirely is an error, not empty shards."""
    (tmp_path / "tiny.txt").write_text("Too short.", encoding="utf-8")
    with pytest.raises(LlmlabError, match="every document was removed"):
        prepare([tmp_path / "tiny.txt"], tmp_path / "out", progress=False)

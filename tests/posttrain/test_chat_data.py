"""Generated chat / preference sets (deterministic, checkable), graders, loaders and their validation errors."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from llmlab.cli.posttrain_cmds import chat_data_app
from llmlab.errors import ConfigError, LlmlabError
from llmlab.posttrain.chat_data import (
    GRADED,
    chitchat_pairs,
    corrupt,
    grade,
    load_chat_data,
    load_jsonl,
    make_pref_set,
    make_sft_set,
    split,
    write_set,
)


def test_sft_set_is_deterministic_distinct_and_covers_the_tasks():
    a, b = make_sft_set(60, seed=3), make_sft_set(60, seed=3)
    assert a == b
    assert a != make_sft_set(60, seed=4)
    assert len({json.dumps(ex["messages"]) for ex in a}) == 60
    assert {ex["meta"]["task"] for ex in a} >= set(GRADED)
    for ex in a:
        assert ex["messages"][-1]["role"] == "assistant" and ex["messages"][-1]["content"] == ex["meta"]["answer"]
    with pytest.raises(ConfigError, match="unknown task"):
        make_sft_set(3, tasks=["nope"])


@pytest.mark.parametrize("task", GRADED)
def test_grader_accepts_the_answer_and_rejects_the_corruption(task):
    import random

    for ex in make_sft_set(8, seed=1, tasks=[task]):
        answer = ex["meta"]["answer"]
        assert grade(ex, answer) and grade(ex, f"  {answer}\n")
        wrong = corrupt(ex, random.Random(0))
        assert wrong != answer and not grade(ex, wrong), (task, answer, wrong)
        assert not grade(ex, "")


def test_grader_normalisation():
    add = {"meta": {"task": "add", "answer": "42"}}
    assert grade(add, "42.") and grade(add, '"42"') and not grade(add, "4 2") and not grade(add, "420")
    up = {"meta": {"task": "upper", "answer": "FROM FAIREST"}}
    assert grade(up, "FROM  FAIREST") and not grade(up, "from fairest")
    js = {"meta": {"task": "json_fields", "answer": '{"name": "Ann", "age": 3}'}}
    assert grade(js, '{"age": 3,"name":"Ann"}') and not grade(js, '{"name": "Ann"}') and not grade(js, "{")
    line = {"meta": {"task": "next_line", "answer": "That thereby beauty's rose might never die,"}}
    assert grade(line, "that thereby beauty's rose might never die,") and not grade(line, "That thereby")


def test_pref_set_pairs_right_with_plausible_wrong():
    pairs = make_pref_set(40, seed=2)
    assert pairs == make_pref_set(40, seed=2)
    for p in pairs:
        assert p["chosen"] != p["rejected"] and p["prompt"][-1]["role"] == "user"
        assert grade(p, p["chosen"][0]["content"]) and not grade(p, p["rejected"][0]["content"])


def test_split_is_disjoint_and_seeded():
    examples = make_sft_set(50, seed=0)
    train, val = split(examples, 0.1, seed=0)
    assert (len(train), len(val)) == (45, 5) and split(examples, 0.1, seed=0) == (train, val)
    keys = {json.dumps(e["messages"]) for e in train}
    assert not any(json.dumps(e["messages"]) in keys for e in val)


def test_write_set_is_reproducible_and_loads(tmp_path):
    m1 = write_set(tmp_path / "a", "sft", 30, seed=5, tasks=["add", "upper"])
    m2 = write_set(tmp_path / "b", "sft", 30, seed=5, tasks=["add", "upper"])
    assert m1["files"] == m2["files"] and m1["files"]["val"]["examples"] == 3
    loaded = load_chat_data(tmp_path / "a")  # a set directory: its train.jsonl
    assert len(loaded.examples) == 27 and loaded.skipped == []
    prefs = write_set(tmp_path / "p", "prefs", 20, seed=5)
    assert len(load_chat_data(tmp_path / "p" / "val.jsonl", kind="prefs").examples) == prefs["files"]["val"]["examples"]


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
BAD_SFT = [
    ({"text": "hi"}, "missing 'messages'"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
     "empty assistant completion in messages[1]"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    ({"messages": []}, "non-empty list"),
]


@pytest.mark.parametrize("record, reason", BAD_SFT)
def test_bad_sft_record_names_file_and_line(tmp_path, record, reason):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (GOOD, GOOD, record, GOOD)) + "\n")
    with pytest.raises(LlmlabError) as e:
        load_jsonl(path)
    assert f"{path}:3: " in str(e.value) and reason in str(e.value)


def test_skip_mode_counts_and_names_what_it_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(GOOD), "{not json", json.dumps(BAD_SFT[1][0]), "", json.dumps(GOOD)]
    path.write_text("\n".join(lines) + "\n")
    loaded = load_jsonl(path, on_error="skip")
    assert len(loaded.examples) == 2 and len(loaded.skipped) == 2
    assert loaded.skipped[0].startswith(f"{path}:2: not valid JSON") and loaded.skipped[1].startswith(f"{path}:3: ")
    with pytest.raises(ConfigError):
        load_jsonl(path, on_error="ignore")


def test_bad_preference_pairs(tmp_path):
    ok = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    same = {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": [{"role": "assistant",
                                                                                          "content": "4"}]}
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (ok, same, {"prompt": "x", "chosen": "y"})) + "\n")
    with pytest.raises(LlmlabError, match=r"p\.jsonl:2: chosen and rejected are identical"):
        load_jsonl(path, kind="prefs")
    loaded = load_jsonl(path, kind="prefs", on_error="skip")
    assert len(loaded.examples) == 1 and "missing 'rejected'" in loaded.skipped[1]
    assert loaded.examples[0]["chosen"] == [{"role": "assistant", "content": "4"}]  # text -> one message


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([GOOD, {"messages": [{"role": "user", "content": "x"}]}]).save_to_disk(tmp_path / "ds")
    with pytest.raises(LlmlabError, match=r"\[train\]\[1\]: 'messages' has no assistant"):
        load_chat_data(tmp_path / "ds")
    assert len(load_chat_data(tmp_path / "ds", on_error="skip").examples) == 1


@pytest.mark.skipif(not chitchat_pairs(), reason="chatterbot-corpus not installed")
def test_chitchat_from_chatterbot_corpus():
    assert len(chitchat_pairs()) > 1000
    ex = make_sft_set(10, seed=0)[9]  # the tenth task in turn
    assert ex["meta"]["task"] == "chitchat" and [m["role"] for m in ex["messages"]][:2] == ["user", "assistant"]


def test_cli_writes_both_sets(tmp_path):
    app = typer.Typer()
    app.add_typer(chat_data_app, name="data")
    runner = CliRunner()
    r = runner.invoke(app, ["data", "sft", "--out", str(tmp_path / "s"), "--n", "20", "--tasks", "add,mul"])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "s" / "train.jsonl").read_text().splitlines()) == 18
    r = runner.invoke(app, ["data", "prefs", "--out", str(tmp_path / "p"), "--n", "10", "--val-fraction", "0.2"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["files"]["val"]["examples"] == 2

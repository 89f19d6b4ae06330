"""Chat and preference data: deterministic generated sets with checkable answers, loaders that validate each record.

No real instruction data ships offline, so the default SFT set is generated from a seed: arithmetic (add, sub,
mul), counting (letters, words), formatting (upper-case, reverse a word list, JSON of given fields) and "the
next line" of a Shakespeare sonnet (`llmlab.data.samples`), plus real chit-chat from `chatterbot-corpus` (BSD)
when it is installed. Every example is an OpenAI `messages` record with a `meta` {"task", "answer"} that
`grade` checks a completion against. Preference pairs (TRL's conversational format: "prompt", "chosen",
"rejected" message lists) pair the right answer with a plausible corruption, never identical to it.

Loaders read `messages` JSONL (SFT) or prompt/chosen/rejected JSONL (preferences), or an HF `datasets` dataset,
and check each record: missing `messages`, a role we do not know, an empty assistant completion, identical
chosen and rejected. on_error="raise" stops at the first bad record with `file:line: reason`; on_error="skip"
drops it and counts it (`Loaded.skipped`), so nothing trains on garbage silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from llmlab.errors import ConfigError, LlmlabError

ROLES = ("system", "user", "assistant", "tool")
TASKS = ("add", "sub", "mul", "count_letter", "count_words", "upper", "reverse_words", "json_fields", "next_line",
         "chitchat")
GRADED = tuple(t for t in TASKS if t != "chitchat")  # chit-chat has no single right answer: never graded
NAMES = ("Ann", "Bob", "Chen", "Dara", "Eve", "Femi", "Gus", "Hana", "Ivo", "Juno", "Kai", "Lena", "Mo", "Nia")
CITIES = ("Paris", "Lagos", "Lima", "Oslo", "Pune", "Quito", "Rome", "Seoul", "Tokyo", "Vienna")


# --------------------------------------------------------------------------------------------------- shipped text
@cache
def sonnet_lines() -> tuple[tuple[str, ...], ...]:
    """The sonnets as tuples of their lines (stripped), in order; the title and Roman numerals dropped."""
    from llmlab.data.samples import sample_text

    sonnets, lines = [], []
    for raw in sample_text("sonnets").splitlines():
        line = raw.strip()
        if re.fullmatch(r"[IVXLC]+", line) or not line:
            if len(lines) >= 2:
                sonnets.append(tuple(lines))
            lines = []
        elif not line.isupper():  # "THE SONNETS" header
            lines.append(line)
    if len(lines) >= 2:
        sonnets.append(tuple(lines))
    return tuple(s for s in sonnets if not s[0].startswith("by "))


@cache
def sonnet_words() -> tuple[str, ...]:
    """Distinct lower-case words of 3+ letters in the sonnets, sorted (for the counting tasks)."""
    words = {w.lower() for s in sonnet_lines() for line in s for w in re.findall(r"[A-Za-z]{3,}", line)}
    return tuple(sorted(words))


@cache
def chitchat_pairs(language: str = "english") -> tuple[tuple[str, ...], ...]:
    """chatterbot-corpus conversations (alternating user/assistant turns) of one language; () when not installed."""
    try:
        import chatterbot_corpus
        import yaml
    except ImportError:
        return ()
    folder = Path(chatterbot_corpus.__file__).parent / "data" / language
    conversations = []
    for path in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            turns = tuple(str(t).strip() for t in conv if t is not None and str(t).strip())
            if len(turns) >= 2:
                conversations.append(turns[: len(turns) // 2 * 2])  # end on the assistant's turn
    return tuple(conversations)


# ------------------------------------------------------------------------------------------------------ generators
def _example(task: str, prompt: str, answer: str, **extra: Any) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "meta": {"task": task, "answer": answer, **extra}}


def _arith(op: str, rng: random.Random) -> dict:
    if op == "add":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return _example("add", f"What is {a} + {b}?", str(a + b))
    if op == "sub":
        a, b = sorted((rng.randint(0, 99), rng.randint(0, 99)), reverse=True)
        return _example("sub", f"What is {a} - {b}?", str(a - b))
    a, b = rng.randint(2, 30), rng.randint(2, 12)
    return _example("mul", f"What is {a} * {b}?", str(a * b))


def _count_letter(rng: random.Random) -> dict:
    word = rng.choice(sonnet_words())
    letter = rng.choice(word)
    return _example("count_letter", f'How many times does the letter "{letter}" appear in "{word}"?',
                    str(word.count(letter)))


def _count_words(rng: random.Random) -> dict:
    line = rng.choice(rng.choice(sonnet_lines()))
    return _example("count_words", f'How many words are in this line: "{line}"', str(len(line.split())))


def _upper(rng: random.Random) -> dict:
    line = rng.choice(rng.choice(sonnet_lines()))
    words = line.split()[:4]
    text = " ".join(words).lower()
    return _example("upper", f"Write in capital letters: {text}", text.upper())


def _reverse_words(rng: random.Random) -> dict:
    words = rng.sample(sonnet_words(), rng.randint(3, 5))
    return _example("reverse_words", f"Reverse the order of these words: {' '.join(words)}",
                    " ".join(reversed(words)))


def _json_fields(rng: random.Random) -> dict:
    name, age, city = rng.choice(NAMES), rng.randint(18, 90), rng.choice(CITIES)
    answer = json.dumps({"name": name, "age": age, "city": city})
    return _example("json_fields", f'Write a JSON object with name "{name}", age {age} and city "{city}".', answer)


def _next_line(rng: random.Random) -> dict:
    sonnet = rng.choice(sonnet_lines())
    i = rng.randrange(len(sonnet) - 1)
    return _example("next_line", f'Which line follows this one in Shakespeare\'s sonnets? "{sonnet[i]}"',
                    sonnet[i + 1])


def _chitchat(rng: random.Random) -> dict:
    pairs = chitchat_pairs()
    if not pairs:
        raise LlmlabError("the chitchat task needs chatterbot-corpus: pip install chatterbot-corpus (BSD)")
    turns = rng.choice(pairs)
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return {"messages": messages, "meta": {"task": "chitchat", "answer": turns[-1]}}


GENERATORS: dict[str, Callable[[random.Random], dict]] = {
    "add": lambda rng: _arith("add", rng), "sub": lambda rng: _arith("sub", rng),
    "mul": lambda rng: _arith("mul", rng), "count_letter": _count_letter, "count_words": _count_words,
    "upper": _upper, "reverse_words": _reverse_words, "json_fields": _json_fields, "next_line": _next_line,
    "chitchat": _chitchat,
}


def default_tasks() -> tuple[str, ...]:
    """Every task; chitchat only when chatterbot-corpus is installed."""
    return TASKS if chitchat_pairs() else GRADED


def _check_tasks(tasks: Iterable[str] | None) -> tuple[str, ...]:
    tasks = tuple(tasks) if tasks else default_tasks()
    unknown = [t for t in tasks if t not in GENERATORS]
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    return tasks


def make_sft_set(n: int, seed: int = 0, tasks: Iterable[str] | None = None) -> list[dict]:
    """n distinct `messages` examples, the tasks taken in turn; the same (n, seed, tasks) give the same list."""
    tasks = _check_tasks(tasks)
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        for _ in range(100):  # draw again on a duplicate, so a held-out split never repeats a training prompt
            ex = GENERATORS[task](rng)
            key = json.dumps(ex["messages"])
            if key not in seen:
                break
        else:
            raise ConfigError(f"task {task!r} ran out of distinct examples at n={n}; ask for fewer or add tasks")
        seen.add(key)
        out.append(ex)
    return out


def corrupt(example: dict, rng: random.Random) -> str:
    """A plausible wrong answer for `example` (never equal to the right one): an off-by-a-little number, another
    line of the same sonnet, the words shuffled, a field changed, another conversation's reply."""
    task, answer = example["meta"]["task"], example["meta"]["answer"]
    if task in ("add", "sub", "mul", "count_letter", "count_words"):
        return str(int(answer) + rng.choice((-2, -1, 1, 2, 10) if int(answer) >= 2 else (1, 2, 10)))
    if task == "upper":
        words = answer.split()
        i = rng.randrange(len(words))
        wrong = " ".join(w.lower() if j == i else w for j, w in enumerate(words))
        return wrong if wrong != answer else answer.lower() + "!"
    if task == "reverse_words":
        words = answer.split()
        wrong = list(reversed(words))  # the original order: the instruction ignored
        return " ".join(wrong)
    if task == "json_fields":
        fields = json.loads(answer)
        fields["age"] += rng.choice((-1, 1))
        return json.dumps(fields)
    if task == "next_line":
        prompt_line = example["messages"][0]["content"].split('"')[1]
        sonnet = next(s for s in sonnet_lines() if prompt_line in s and answer in s)
        others = [line for line in sonnet if line not in (answer, prompt_line)]
        return rng.choice(others)
    others = [t[-1] for t in chitchat_pairs() if t[-1] != answer]
    return rng.choice(others)


def make_pref_set(n: int, seed: int = 0, tasks: Iterable[str] | None = None) -> list[dict]:
    """n preference pairs {"prompt", "chosen", "rejected", "meta"}: chosen = the right answer, rejected = `corrupt`."""
    rng = random.Random(seed + 1_000_003)  # a stream apart from the prompts'
    pairs = []
    for ex in make_sft_set(n, seed, tasks):
        *prompt, last = ex["messages"]
        rejected = corrupt(ex, rng)
        pairs.append({"prompt": prompt, "chosen": [last], "rejected": [{"role": "assistant", "content": rejected}],
                      "meta": {**ex["meta"], "rejected": rejected}})
    return pairs


def split(examples: list[dict], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, val): a seeded shuffle, the last ceil(val_fraction * n) examples held out (at least one when n > 1)."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1)")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(max(len(examples) - 1, 0), math.ceil(val_fraction * len(examples)))
    train, val = order[: len(order) - n_val], order[len(order) - n_val:]
    return [examples[i] for i in train], [examples[i] for i in val]


def write_jsonl(records: Iterable[Mapping], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def write_set(out_dir: str | Path, kind: Literal["sft", "prefs"], n: int, seed: int = 0,
              tasks: Iterable[str] | None = None, val_fraction: float = 0.1) -> dict:
    """Write OUT/train.jsonl, OUT/val.jsonl and OUT/manifest.json (counts per task and each file's sha256)."""
    if kind not in ("sft", "prefs"):
        raise ConfigError(f"kind={kind!r} must be sft or prefs")
    tasks = _check_tasks(tasks)
    records = make_sft_set(n, seed, tasks) if kind == "sft" else make_pref_set(n, seed, tasks)
    train, val = split(records, val_fraction, seed)
    out = Path(out_dir)
    manifest: dict[str, Any] = {"kind": kind, "n": n, "seed": seed, "tasks": list(tasks),
                                "val_fraction": val_fraction, "files": {}}
    for name, part in (("train", train), ("val", val)):
        path = write_jsonl(part, out / f"{name}.jsonl")
        manifest["files"][name] = {"path": path.name, "examples": len(part),
                                   "per_task": dict(sorted(Counter(r["meta"]["task"] for r in part).items())),
                                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# --------------------------------------------------------------------------------------------------------- grading
def normalize(text: str, keep_case: bool = False) -> str:
    """Whitespace collapsed, surrounding quotes and a final period dropped, lower-cased unless keep_case."""
    text = " ".join(text.split()).strip().strip('"').strip()
    text = text[:-1] if text.endswith(".") else text
    return text if keep_case else text.lower()


def grade(example: Mapping, completion: str) -> bool:
    """Is `completion` the right answer to `example` (a generated record with meta)? Exact match after
    `normalize`; JSON answers compare as parsed objects; upper-case answers keep their case."""
    task, answer = example["meta"]["task"], example["meta"]["answer"]
    if task == "json_fields":
        try:
            return json.loads(completion.strip()) == json.loads(answer)
        except json.JSONDecodeError:
            return False
    return normalize(completion, keep_case=task == "upper") == normalize(answer, keep_case=task == "upper")


# --------------------------------------------------------------------------------------------------------- loading
@dataclass
class Loaded:
    """Records that passed validation, and one "where: why" line per record skipped (on_error="skip")."""

    examples: list[dict]
    skipped: list[str] = field(default_factory=list)


def _check_messages(messages: Any, name: str, need_assistant: bool) -> str | None:
    """Why `messages` is unusable, or None."""
    if not isinstance(messages, list) or not messages:
        return f"'{name}' must be a non-empty list of messages"
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            return f"{name}[{i}] is not an object"
        if m.get("role") not in ROLES:
            return f"{name}[{i}] has unknown role {m.get('role')!r} (known: {', '.join(ROLES)})"
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            return f"{name}[{i}].content must be a string or a list of parts"
        if m["role"] == "assistant" and not _text(content).strip() and not m.get("tool_calls"):
            return f"empty assistant completion in {name}[{i}]"
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        return f"'{name}' has no assistant message to train on"
    return None


def _text(content: Any) -> str:
    from llmlab.infer.chat_template import message_text

    return message_text(content) if isinstance(content, str | list) or content is None else ""


def _as_messages(value: Any) -> Any:
    """A preference side given as text becomes one assistant message (TRL's standard format)."""
    return [{"role": "assistant", "content": value}] if isinstance(value, str) else value


def check_record(record: Any, kind: Literal["sft", "prefs"]) -> tuple[dict | None, str | None]:
    """(the record, normalised) or (None, why it is unusable)."""
    if not isinstance(record, Mapping):
        return None, f"expected a JSON object, got {type(record).__name__}"
    if kind == "sft":
        if "messages" not in record:
            return None, f"missing 'messages' (keys: {', '.join(map(str, record)) or 'none'})"
        why = _check_messages(record["messages"], "messages", need_assistant=True)
        return (None, why) if why else (dict(record), None)
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in record]
    if missing:
        return None, f"missing {', '.join(repr(k) for k in missing)} (a preference pair needs prompt, chosen, rejected)"
    prompt = [{"role": "user", "content": record["prompt"]}] if isinstance(record["prompt"], str) else record["prompt"]
    chosen, rejected = _as_messages(record["chosen"]), _as_messages(record["rejected"])
    for name, value, need in (("prompt", prompt, False), ("chosen", chosen, True), ("rejected", rejected, True)):
        why = _check_messages(value, name, need_assistant=need)
        if why:
            return None, why
    if chosen == rejected:
        return None, "chosen and rejected are identical"
    return {**record, "prompt": prompt, "chosen": chosen, "rejected": rejected}, None


def _collect(rows: Iterable[tuple[str, Any]], kind: str, on_error: str) -> Loaded:
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error={on_error!r} must be raise or skip")
    loaded = Loaded([])
    for where, record in rows:
        ok, why = check_record(record, kind) if not isinstance(record, _BadJSON) else (None, record.why)
        if ok is not None:
            loaded.examples.append(ok)
        elif on_error == "raise":
            raise LlmlabError(f"{where}: {why} (pass on_error='skip' / --skip-bad to skip such records)")
        else:
            loaded.skipped.append(f"{where}: {why}")
    return loaded


@dataclass
class _BadJSON:
    why: str


def _jsonl_rows(path: Path) -> Iterable[tuple[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{lineno}", _BadJSON(f"not valid JSON ({e.msg} at column {e.colno})")


def load_jsonl(path: str | Path, kind: Literal["sft", "prefs"] = "sft",
               on_error: Literal["raise", "skip"] = "raise") -> Loaded:
    """Read a `messages` JSONL (kind="sft") or prompt/chosen/rejected JSONL (kind="prefs"), validating each line."""
    path = Path(path)
    if not path.is_file():
        raise LlmlabError(f"data file {path} does not exist")
    return _collect(_jsonl_rows(path), kind, on_error)


def load_chat_data(source: str | Path, kind: Literal["sft", "prefs"] = "sft", split_name: str = "train",
                   on_error: Literal["raise", "skip"] = "raise") -> Loaded:
    """A .jsonl file, a set directory (`llmlab data sft` output: its {split_name}.jsonl), a dataset saved with
    `datasets`' save_to_disk, or an HF dataset name (`datasets.load_dataset`, from the local cache when offline)."""
    path = Path(source)
    if path.is_file():
        return load_jsonl(path, kind, on_error)
    if (path / f"{split_name}.jsonl").is_file():
        return load_jsonl(path / f"{split_name}.jsonl", kind, on_error)
    try:
        import datasets
    except ImportError:
        raise LlmlabError(f"{source} is not a file or set directory, and reading HF datasets needs `datasets`") \
            from None
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            ds = ds[split_name] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(str(source), split=split_name)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise LlmlabError(f"cannot load dataset {source!r} (split {split_name!r}): {e}") from None
    return _collect(((f"{source}[{split_name}][{i}]", row) for i, row in enumerate(ds)), kind, on_error)


def records(data: str | Path | Sequence[Mapping], kind: str, split_name: str = "train", on_error: str = "raise"
            ) -> Loaded:
    """`kind` ("sft" or "prefs") records from a JSONL file / set directory / HF dataset, or a list taken as-is."""
    if isinstance(data, str | Path):
        return load_chat_data(data, kind, split_name, on_error)
    return Loaded([dict(d) for d in data])


def train_and_val(data, val_data, kind: str, on_error: str = "raise") -> tuple[Loaded, Loaded]:
    """Training records and held-out ones: `val_data`, else DATA/val.jsonl when DATA is a set directory."""
    if val_data is None and isinstance(data, str | Path) and (Path(data) / "val.jsonl").is_file():
        val_data = Path(data) / "val.jsonl"
    val = records(val_data, kind, "val", on_error) if val_data is not None else Loaded([])
    return records(data, kind, "train", on_error), val

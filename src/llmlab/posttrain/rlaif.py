"""RLAIF labelling: an AI judge behind any OpenAI-compatible chat endpoint picks the better of two responses, and
the verdicts become DPO pairs {prompt, chosen, rejected} (Bai et al. 2022, "Constitutional AI"; Lee et al. 2023,
"RLAIF").

The judge sees JUDGE_SYSTEM and JUDGE_PROMPT (below) and answers A, B or TIE, at temperature 0. A verdict is read
from the first non-blank answer token's top log-probs when A and B hold at least `min_mass` of its probability
(then P(A) / (P(A) + P(B)) says how sure it is), else from the text: one standalone A or B, or a tie word. Anything
else is unparseable: counted and skipped, never guessed.

Position bias (judges favour one slot; Zheng et al. 2023, "Judging LLM-as-a-judge"): each pair is asked twice, as
(A=a, B=b) and (A=b, B=a); a pair is labelled only when both orders pick the same response. Otherwise it is counted
as inconsistent, tie or unparseable and left out. With log-probs, the label's confidence is the mean of the two
orders' probabilities (Lee et al. 2023 average over both orders).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError, LlmlabError
from llmlab.model.io import atomic_write

JUDGE_SYSTEM = "You are an impartial judge of AI assistant responses."
JUDGE_PROMPT = """Which response answers the user's prompt better? Judge correctness first, then helpfulness and \
clarity. Ignore the order in which the responses appear and their length.

[Prompt]
{prompt}

[Response A]
{a}

[Response B]
{b}

Answer with one word: A if Response A is better, B if Response B is better, TIE if neither is better."""

LETTERS = ("A", "B")
_LETTER = re.compile(r"(?<![A-Za-z0-9_])([AB])(?![A-Za-z0-9_])")  # a standalone capital A or B
_TIE = re.compile(r"\b(tie|equal|equally|same|neither|both)\b", re.IGNORECASE)
_MARKUP = " \t\r\n[](){}*\"'`.:,;!"


@dataclass(frozen=True)
class Verdict:
    """One answer of the judge: choice "A", "B", "tie" or None (unparseable); p_a = P(A) / (P(A) + P(B)) when the
    choice came from log-probs; the answer's text."""

    choice: str | None
    p_a: float | None
    text: str


def judge_messages(prompt: str, a: str, b: str) -> list[dict[str, str]]:
    """The chat request for one order: system + user message holding the prompt and the two responses."""
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_PROMPT.format(prompt=prompt, a=a, b=b)}]


def parse_verdict(text: str, top_logprobs: Mapping[str, float] | None = None, min_mass: float = 0.5) -> Verdict:
    """Read a verdict: from top_logprobs {token: logprob} of the first non-blank answer token when tokens spelling
    A or B (markup and spaces stripped) hold >= min_mass probability, else from the text."""
    if top_logprobs:
        mass = dict.fromkeys(LETTERS, 0.0)
        for token, logprob in top_logprobs.items():
            letter = token.strip(_MARKUP)
            if letter in mass:
                mass[letter] += math.exp(logprob)
        total = mass["A"] + mass["B"]
        if total >= min_mass:
            p_a = mass["A"] / total
            choice = "tie" if mass["A"] == mass["B"] else "A" if p_a > 0.5 else "B"
            return Verdict(choice, p_a, text)
    letters = set(_LETTER.findall(text))
    if len(letters) == 1:
        return Verdict(letters.pop(), None, text)
    if not letters and _TIE.search(text):
        return Verdict("tie", None, text)
    return Verdict(None, None, text)  # no answer, or both letters: ambiguous


def combine(first: Verdict, second: Verdict) -> str:
    """first: the order (A=a, B=b); second: (A=b, B=a). Returns "a" or "b" (the better response, picked in both
    orders), "inconsistent" (each order picked its slot A, or each its slot B), "tie" or "unparseable"."""
    if first.choice is None or second.choice is None:
        return "unparseable"
    if "tie" in (first.choice, second.choice):
        return "tie"
    winner_first = "a" if first.choice == "A" else "b"
    winner_second = "a" if second.choice == "B" else "b"
    return winner_first if winner_first == winner_second else "inconsistent"


def p_a_both_orders(first: Verdict, second: Verdict) -> float | None:
    """P(a is better) averaged over the two orders, when both verdicts came from log-probs."""
    if first.p_a is None or second.p_a is None:
        return None
    return (first.p_a + (1.0 - second.p_a)) / 2


# ------------------------------------------------------------------------------------------------------- records
def _text(value: Any, what: str) -> str:
    """A prompt or response as plain text: a string, or messages (one user turn -> its content; several ->
    "role: content" lines; a response's assistant messages -> their contents)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, Mapping) for m in value):
        from llmlab.infer.chat_template import message_text

        if what != "prompt":
            return "\n".join(message_text(m.get("content")) for m in value)
        if len(value) == 1 and value[0].get("role") == "user":
            return message_text(value[0].get("content"))
        return "\n".join(f"{m.get('role')}: {message_text(m.get('content'))}" for m in value)
    raise LlmlabError(f"'{what}' must be a string or a list of messages, got {type(value).__name__}")


def read_pairs(path: str | Path) -> list[dict]:
    """Records {prompt, a, b} from JSONL; prompt/chosen/rejected records (a preference set to re-judge) are read as
    a = chosen, b = rejected, and keep `given` = "a" so the summary can report agreement with the given labels."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise LlmlabError(f"cannot read {path}: {e}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise LlmlabError(f"{path}:{i}: invalid JSON ({e.msg})") from None
        if isinstance(rec, dict) and "a" not in rec and {"chosen", "rejected"} <= rec.keys():
            rec = {**{k: v for k, v in rec.items() if k not in ("chosen", "rejected")}, "a": rec["chosen"],
                   "b": rec["rejected"], "given": "a"}
        if not isinstance(rec, dict) or not {"prompt", "a", "b"} <= rec.keys():
            raise LlmlabError(f"{path}:{i}: a record needs 'prompt', 'a' and 'b' (or 'prompt', 'chosen', 'rejected')")
        for key in ("prompt", "a", "b"):
            try:
                empty = not _text(rec[key], key).strip()
            except LlmlabError as e:
                raise LlmlabError(f"{path}:{i}: {e}") from None
            if empty:
                raise LlmlabError(f"{path}:{i}: '{key}' is empty")
        records.append(rec)
    return records


# ---------------------------------------------------------------------------------------------------------- judge
@dataclass
class Judge:
    """An OpenAI-compatible chat endpoint used as a judge. client: an `openai.OpenAI` (built from base_url and
    api_key when None); logprobs=False for endpoints that reject the logprobs option."""

    model: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never in logs or tracebacks
    client: Any = field(default=None, repr=False)
    logprobs: bool = True
    max_tokens: int = 8
    min_mass: float = 0.5
    timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.client is None:
            if not self.base_url:
                raise ConfigError("the judge needs base_url (e.g. http://127.0.0.1:8000/v1) or a client")
            import openai

            # "EMPTY": servers without keys (ours, vLLM) ignore it; the client refuses to start without one
            self.client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "EMPTY",
                                        timeout=self.timeout)

    def ask(self, prompt: str, a: str, b: str) -> Verdict:
        """One request: the judge's verdict on (A=a, B=b)."""
        import openai

        extra = dict(logprobs=True, top_logprobs=5) if self.logprobs else {}
        try:
            resp = self.client.chat.completions.create(model=self.model, messages=judge_messages(prompt, a, b),
                                                       temperature=0.0, max_tokens=self.max_tokens, **extra)
        except openai.APIError as e:
            where = self.base_url or getattr(self.client, "base_url", "the endpoint")
            raise LlmlabError(f"judge request to {where} failed: {e}") from None
        choice = resp.choices[0]
        text = choice.message.content or ""
        top = None
        content = choice.logprobs.content if choice.logprobs is not None else None
        first = next((t for t in content or [] if t.token.strip()), None)  # skip leading blank tokens
        if first is not None:
            top = {first.token: first.logprob, **{t.token: t.logprob for t in first.top_logprobs or []}}
        return parse_verdict(text, top, self.min_mass)

    def judge_pair(self, prompt: str, a: str, b: str) -> tuple[str, Verdict, Verdict]:
        """(outcome, verdict on (a, b), verdict on (b, a)); outcome as `combine`."""
        first, second = self.ask(prompt, a, b), self.ask(prompt, b, a)
        return combine(first, second), first, second


def label_pairs(records: Sequence[Mapping], judge: Judge, workers: int = 4) -> tuple[list[dict], dict]:
    """Judge every record in both orders ({prompt, a, b}; `workers` requests at a time). Returns (DPO pairs
    {prompt, chosen, rejected, meta}, summary {pairs, labelled, inconsistent, ties, unparseable, requests, ...})."""
    if workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1")
    start = time.perf_counter()

    def one(rec: Mapping) -> tuple[str, Verdict, Verdict]:
        return judge.judge_pair(_text(rec["prompt"], "prompt"), _text(rec["a"], "a"), _text(rec["b"], "b"))

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, records))
    pairs, counts, unparsed = [], Counter(), []
    agree = 0
    for rec, (outcome, first, second) in zip(records, results, strict=True):
        counts[outcome] += 1
        if outcome == "unparseable":
            unparsed += [v.text for v in (first, second) if v.choice is None]
        if outcome not in ("a", "b"):
            continue
        agree += rec.get("given") == outcome
        loser = "b" if outcome == "a" else "a"
        p_a = p_a_both_orders(first, second)
        meta = {**rec.get("meta", {}), "judge": judge.model,
                "p_chosen": None if p_a is None else round(p_a if outcome == "a" else 1 - p_a, 4)}
        pairs.append({"prompt": rec["prompt"], "chosen": rec[outcome], "rejected": rec[loser], "meta": meta})
    given = sum(1 for r in records if r.get("given"))
    summary = {"pairs": len(records), "labelled": len(pairs), "inconsistent": counts["inconsistent"],
               "ties": counts["tie"], "unparseable": counts["unparseable"], "requests": 2 * len(records),
               "judge": judge.model,
               # re-judged preference sets: share of the labelled pairs whose chosen is the given one
               "agreement_with_given": agree / len(pairs) if given and pairs else None,
               "unparseable_answers": unparsed[:5], "seconds": round(time.perf_counter() - start, 3)}
    return pairs, summary


def summary_path(out: str | Path) -> Path:
    """Where `judge_file` writes the summary: OUT with the suffix .summary.json (pairs.jsonl -> pairs.summary.json)."""
    return Path(out).with_suffix(".summary.json")


def judge_file(pairs_path: str | Path, out: str | Path, judge: Judge, workers: int = 4) -> dict:
    """read_pairs -> label_pairs -> OUT (DPO pairs JSONL, what `llmlab` DPO training reads) and its summary."""
    records = read_pairs(pairs_path)
    if not records:
        raise LlmlabError(f"{pairs_path} holds no records")
    pairs, summary = label_pairs(records, judge, workers)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    summary_path(out).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary

"""RLAIF judge: the pure parsing and position-debiasing rules, then the whole path over HTTP against our own server
(llmlab.serve on a tiny model, through the `openai` client).

A random tiny model is no judge, so the live test retrains its output layer to give fixed answers to the judging
prompts of five pairs (both orders each): a wins in both orders, b wins in both, A twice (position bias:
inconsistent), TIE twice, and a non-answer once (unparseable). The counts, the DPO pairs and the confidence read
from the served log-probs are then checked exactly.
"""

from __future__ import annotations

import functools
import json
import math

import httpx
import pytest
import torch

from llmlab.cli.judge_cmds import judge
from llmlab.errors import LlmlabError
from llmlab.infer.chat_template import render
from llmlab.posttrain.rlaif import (
    Judge,
    Verdict,
    combine,
    judge_messages,
    label_pairs,
    p_a_both_orders,
    parse_verdict,
    read_pairs,
    summary_path,
)
from llmlab.serve.engine import Engine
from tests.serve.live_server import MODEL_NAME, serving, tiny_model, tiny_tokenizer

openai = pytest.importorskip("openai")


# ------------------------------------------------------------------------------------------------ parsing, pure
@pytest.mark.parametrize(("text", "choice"), [
    ("A", "A"), (" B.", "B"), ("[[A]]", "A"), ("**B**", "B"), ("Response B is better.", "B"), ("A\n", "A"),
    ("TIE", "tie"), ("They are equally good.", "tie"), ("Response A is better than response B", None),
    ("", None), ("Hmm", None), ("a", None), ("AB", None), ("Both A and B", None),
])
def test_parse_text(text, choice):
    """One standalone capital A or B decides; a tie word without a letter is a tie; anything else is unparseable."""
    v = parse_verdict(text)
    assert v.choice == choice and v.p_a is None and v.text == text


def test_parse_logprobs():
    """The first token's log-probs decide when A and B hold >= min_mass; P(A) normalised over the two letters;
    spellings of one letter (" A", "A") add up; below min_mass the text decides."""
    v = parse_verdict("B", {"A": math.log(0.6), " A": math.log(0.1), "B": math.log(0.2), "x": math.log(0.1)})
    assert v.choice == "A" and v.p_a == pytest.approx(0.7 / 0.9)
    assert parse_verdict("", {"A": math.log(0.3), "B": math.log(0.3)}).choice == "tie"
    low = parse_verdict("B", {"A": math.log(0.2), "B": math.log(0.1), "Hmm": math.log(0.7)})
    assert low.choice == "B" and low.p_a is None
    assert parse_verdict("Hmm", {"A": math.log(0.2), "Hmm": math.log(0.8)}).choice is None
    assert parse_verdict("A", {"A": math.log(0.2), "B": math.log(0.1)}, min_mass=0.3).p_a == pytest.approx(2 / 3)


def V(choice, p_a=None):
    return Verdict(choice, p_a, "")


@pytest.mark.parametrize(("first", "second", "outcome"), [
    ("A", "B", "a"), ("B", "A", "b"), ("A", "A", "inconsistent"), ("B", "B", "inconsistent"),
    ("tie", "A", "tie"), ("A", "tie", "tie"), ("tie", "tie", "tie"), (None, "B", "unparseable"),
    ("tie", None, "unparseable"), (None, None, "unparseable"),
])
def test_combine_both_orders(first, second, outcome):
    """first judged (A=a, B=b), second (A=b, B=a): a label only when both orders pick the same response."""
    assert combine(V(first), V(second)) == outcome


def test_confidence_averages_both_orders():
    assert p_a_both_orders(V("A", 0.9), V("B", 0.3)) == pytest.approx(0.8)
    assert p_a_both_orders(V("A", 0.9), V("B")) is None


def test_read_pairs(tmp_path):
    good = tmp_path / "pairs.jsonl"
    good.write_text(json.dumps({"prompt": "2+2?", "a": "4", "b": "5"}) + "\n\n" + json.dumps(
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": "go away"}) + "\n")
    recs = read_pairs(good)
    assert recs[0] == {"prompt": "2+2?", "a": "4", "b": "5"}
    assert recs[1]["a"] == [{"role": "assistant", "content": "hello"}] and recs[1]["given"] == "a"
    bad = tmp_path / "bad.jsonl"
    for line, message in (('{"prompt": "x", "a": "y"}', "bad.jsonl:1: a record needs"),
                          ('{"prompt": "x", "a": "", "b": "z"}', "'a' is empty"), ("{", "invalid JSON")):
        bad.write_text(line + "\n")
        with pytest.raises(LlmlabError, match=message):
            read_pairs(bad)


# ------------------------------------------------------------------------------------------- live, over HTTP
PAIRS = [  # (record, the trained answers to the orders (A=a, B=b) and (A=b, B=a), the outcome)
    ({"prompt": "What is 2 + 2?", "a": "4", "b": "5", "meta": {"task": "add"}}, ("A", "B"), "a"),
    ({"prompt": "Capital of France?", "a": "Rome", "b": "Paris"}, ("B", "A"), "b"),
    ({"prompt": "Say hi.", "a": "hi", "b": "hello"}, ("A", "A"), "inconsistent"),
    ({"prompt": "Pick a colour.", "a": "red", "b": "blue"}, ("TIE", "TIE"), "tie"),
    ({"prompt": "Spell cat.", "a": "c-a-t", "b": "k-a-t"}, ("A", "Hmm"), "unparseable"),
]


@functools.cache
def judge_model(max_steps: int = 500):
    """The tiny random server model with its output layer retrained (Adam, cross-entropy) until each of the ten
    judging prompts gets its answer + <|im_end|> with probability > 0.9 per token. Only lm_head changes, so the
    hidden states it reads are computed once: a second or two, where training the whole model takes minutes."""
    tok = tiny_tokenizer()
    rows = []
    for rec, answers, _ in PAIRS:
        for (a, b), answer in zip(((rec["a"], rec["b"]), (rec["b"], rec["a"])), answers, strict=True):
            prompt = tok.encode(render(judge_messages(rec["prompt"], a, b)), allowed_special="all")
            rows.append((prompt, tok.encode(answer + "<|im_end|>", allowed_special="all")))
    # init_std 0.2 (not 0.02): sharper attention, so the last hidden state depends on the pair, not only on the
    # template's shared end; the ten prompts' states are then far apart
    model = tiny_model(max_seq_len=max(len(p) + len(a) for p, a in rows) + 16, init_std=0.2)
    assert model.lm_head.weight is not model.tok_emb.weight  # untied: the inputs stay as they are
    feats, targets = [], []
    grab = model.lm_head.register_forward_hook(lambda m, args, out: feats.append(args[0][0]))
    with torch.no_grad():
        for prompt, answer in rows:  # hidden state (d,) at each position that predicts an answer token
            model(torch.tensor([prompt + answer]))
            feats[-1] = feats[-1][len(prompt) - 1:len(prompt) + len(answer) - 1]
            targets.append(torch.tensor(answer))
    grab.remove()
    h, y = torch.cat(feats), torch.cat(targets)  # (N, d), (N,)
    opt = torch.optim.Adam(model.lm_head.parameters(), lr=0.05)
    for _ in range(max_steps):
        logits = model.lm_head(h)
        if bool((logits.softmax(-1).gather(1, y[:, None]) > 0.9).all()):
            return model
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    raise RuntimeError(f"the tiny judge did not learn its answers in {max_steps} steps")


def test_label_pairs_over_http(tmp_path, capsys):
    """Our server behind an API key: 10 requests reach it (counted by the HTTP client), the verdicts are parsed from
    the served answers and log-probs, and the summary counts 2 labelled, 1 inconsistent, 1 tie, 1 unparseable; the
    written pairs load as a preference set; `judge_file` (what `llmlab data judge` runs) gives the same."""
    from llmlab.posttrain.chat_data import load_jsonl

    engine = Engine(judge_model(), tiny_tokenizer(), max_batch_size=8, device="cpu")
    sent = []
    with serving(engine, api_key="judge-key") as base:
        http = httpx.Client(event_hooks={"request": [lambda r: sent.append(r.url.path)]})
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="judge-key", http_client=http, max_retries=0)
        pairs, summary = label_pairs([rec for rec, _, _ in PAIRS], Judge(MODEL_NAME, client=client), workers=3)
        path = tmp_path / "in.jsonl"
        path.write_text("".join(json.dumps(rec) + "\n" for rec, _, _ in PAIRS))
        judge(path, tmp_path / "out.jsonl", base_url=f"{base}/v1", model=MODEL_NAME, api_key="judge-key",
              workers=2, no_logprobs=False)
        with pytest.raises(LlmlabError, match="judge request to .* failed.*401"):
            Judge(MODEL_NAME, base_url=f"{base}/v1", api_key="wrong").ask("p", "a", "b")
    assert sent == ["/v1/chat/completions"] * 10
    expected = {"pairs": 5, "labelled": 2, "inconsistent": 1, "ties": 1, "unparseable": 1, "requests": 10}
    assert {k: summary[k] for k in expected} == expected
    assert summary["unparseable_answers"] == ["Hmm"]
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("What is 2 + 2?", "4", "5"), ("Capital of France?", "Paris", "Rome")]
    assert pairs[0]["meta"]["task"] == "add" and pairs[0]["meta"]["judge"] == MODEL_NAME
    assert all(0.5 < p["meta"]["p_chosen"] <= 1 for p in pairs)  # from the served log-probs, both orders
    again = json.loads(summary_path(tmp_path / "out.jsonl").read_text())
    assert {k: again[k] for k in expected} == expected
    assert "unparseable answer: 'Hmm'" in capsys.readouterr().out
    loaded = load_jsonl(tmp_path / "out.jsonl", "prefs")
    assert [ex["chosen"] for ex in loaded.examples] == [[{"role": "assistant", "content": c}] for c in ("4", "Paris")]

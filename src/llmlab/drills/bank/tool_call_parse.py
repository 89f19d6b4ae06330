"""Reading a model's function calls back: Hermes/Qwen2.5 `<tool_call>{...}</tool_call>` blocks."""

from __future__ import annotations

import json

import torch

from llmlab.drills.grader import Case, Drill
from llmlab.serve.schemas import FunctionDef, Tool
from llmlab.serve.tools import _loads_or_str, _read_call, parse_tool_calls

STARTER = '''"""Drill: tool_call_parse. Check with `llmlab drill check tool_call_parse`."""
import json
import re


def parse_tool_calls(text: str, tool_names: list[str]) -> tuple[str, list[tuple[str, dict]]]:
    """Read a model answer for `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (Hermes /
    Qwen2.5 format). The last block may be cut off without its closing tag. "arguments" may also be a JSON string
    holding the object (OpenAI style): decode it.

    Returns (content, calls): content = the text before the first `<tool_call>`; calls = [(name, arguments dict)]
    in order. If any block is not valid (not JSON, no "name"/"arguments", a name not in tool_names, arguments not
    a JSON object) there are no calls: return (text, []) with the whole text as content. No block: (text, []).
    """
    raise NotImplementedError
'''


def parse_calls(text: str, tool_names: list[str]) -> tuple[str, list[tuple[str, dict]]]:
    tools = [Tool(type="function", function=FunctionDef(name=n)) for n in tool_names]  # parameters: any object
    parsed = parse_tool_calls(text, tools)
    return parsed.content, [(c.function.name, json.loads(c.function.arguments)) for c in parsed.tool_calls]


NAMES = ["get_weather", "search", "add"]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'


def examples() -> list[Case]:
    return [Case(dict(text="Let me check.\n" + CALL, tool_names=NAMES), ("basic",), True),
            Case(dict(text="It is sunny in Paris.", tool_names=NAMES), ("no-call",), True)]


def _call(name: str, args: object, close: bool = True) -> str:
    return f'<tool_call>\n{{"name": {json.dumps(name)}, "arguments": {json.dumps(args)}}}\n' \
           + ("</tool_call>" if close else "")


def hidden(g: torch.Generator) -> list[Case]:
    a, b = int(torch.randint(0, 100, (), generator=g)), int(torch.randint(0, 100, (), generator=g))
    q = ["llm", "beam search", "rope θ", "a <b> c"][int(torch.randint(0, 4, (), generator=g))]
    cases = [
        (_call("add", {"a": a, "b": b}) + "\n" + _call("search", {"query": q}), ("parallel",)),
        ("Sure. " + _call("add", {"a": a, "b": b}, close=False), ("unclosed",)),
        (_call("search", json.dumps({"query": q})), ("string-arguments",)),
        (_call("add", {"a": a}) + "\n" + '<tool_call>\n{"name": "add", "arguments": {"a": 1,}}\n</tool_call>',
         ("bad-json",)),
        (_call("delete_all", {"x": 1}), ("unknown-name",)),
        ('<tool_call>\n{"name": "search", "args": {"query": "x"}}\n</tool_call>', ("missing-arguments",)),
        (_call("search", [q]), ("not-an-object",)),
        (_call("get_weather", {"city": q, "days": [a, b], "extra": {"nested": True, "v": None}}),
         ("nested",)),
    ]
    return [Case(dict(text=t, tool_names=NAMES), tags) for t, tags in cases]


DRILL = Drill(
    name="tool_call_parse", area="serve", difficulty=2, minutes=15, func="parse_tool_calls",
    statement="Parse a model's `<tool_call>{\"name\", \"arguments\"}</tool_call>` blocks into (name, arguments) "
              "pairs, all-or-nothing, as llmlab's server does.",
    starter=STARTER, reference=parse_calls, sources=(parse_tool_calls, _read_call, _loads_or_str),
    examples=examples, hidden=hidden, tags=("parallel", "unclosed", "string-arguments", "bad-json"),
    hints=("Find every block with re.findall(r\"<tool_call>(.*?)(?:</tool_call>|$)\", text, re.DOTALL) and "
           "json.loads each; content is text[:text.find('<tool_call>')].",
           "Validate each call: a dict with a str \"name\" in tool_names and an \"arguments\" key; if arguments is "
           "a str, json.loads it (keep it as a str if that fails); it must end up a dict.",
           "All or nothing: one invalid block means no calls and the whole text as content."),
    tag_hints={"unclosed": "the last block may lack </tool_call>: let the regex end at the end of the text too.",
               "string-arguments": "\"arguments\" may be a JSON string: json.loads it before checking it.",
               "bad-json": "one block that is not JSON voids every call: return (text, []).",
               "unknown-name": "a call naming a tool not in tool_names is not a call.",
               "not-an-object": "arguments must be a JSON object (a dict), not a list."},
    banned=("parse_tool_calls", "_read_call"),
)

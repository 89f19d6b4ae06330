"""Function calling: are a tool call's arguments valid under the tool's JSON-schema `parameters`?"""

from __future__ import annotations

from typing import Any

import torch

from llmlab.drills.bank._gen import randint
from llmlab.drills.grader import Case, Drill
from llmlab.serve.schemas import FunctionDef, Tool
from llmlab.serve.tools import EMPTY_PARAMETERS, argument_error, check_tools

STARTER = '''"""Drill: tool_args_validate. Check with `llmlab drill check tool_args_validate`."""
from typing import Any


def arguments_valid(arguments: Any, schema: dict) -> bool:
    """Is `arguments` (a tool call's decoded JSON arguments) valid under `schema` (the tool's "parameters", a JSON
    Schema, draft 2020-12 semantics)? Only these keywords occur, at any depth:

    "type": one name or a list of names: "object" (dict), "array" (list), "string", "boolean", "null",
        "number" (int or float, not bool), "integer" (a number with no fractional part: 3 and 3.0, not 3.5, not True);
    "properties": {name: schema} for the keys an object has (missing keys are fine unless "required");
    "required": [names] an object must have;
    "additionalProperties": false (no keys beyond "properties") or a schema every other key's value must meet;
    "items": a schema every element of an array must meet;
    "enum": [values] the instance must equal one of (JSON equality: 1 == 1.0, but true != 1);
    "minimum", "maximum": inclusive bounds, checked only when the instance is a number;
    "minLength", "maxLength": bounds on a string's length, checked only when the instance is a string.
    A keyword that does not apply to the instance's type is ignored (as JSON Schema does).
    Returns True or False.
    """
    raise NotImplementedError
'''


def arguments_valid(arguments: Any, schema: dict) -> bool:
    tool = Tool(type="function", function=FunctionDef(name="f", parameters=schema))
    return argument_error(arguments, tool) is None


WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "minLength": 1},
                          "unit": {"type": "string", "enum": ["c", "f"]},
                          "days": {"type": "integer", "minimum": 1, "maximum": 14}},
           "required": ["city"], "additionalProperties": False}
SEARCH = {"type": "object",
          "properties": {"query": {"type": "string", "maxLength": 20},
                         "filters": {"type": "array", "items": {"type": "object",
                                                                 "properties": {"field": {"type": "string"},
                                                                                "value": {"type": ["string", "null"]}},
                                                                 "required": ["field"]}},
                         "top_k": {"type": "number", "minimum": 0}},
          "required": ["query"]}
TAGS = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
        "additionalProperties": {"type": "integer"}}


def examples() -> list[Case]:
    return [Case(dict(arguments={"city": "Paris", "unit": "c"}, schema=WEATHER), ("basic",), True),
            Case(dict(arguments={"unit": "c"}, schema=WEATHER), ("required",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    days = randint(g, 1, 15)
    q = ["llm", "beam search", "rope θ"][randint(g, 0, 3)]
    cases = [
        ({"city": "Oslo", "days": days}, WEATHER, ("integer",)),
        ({"city": "Oslo", "days": float(days)}, WEATHER, ("integer", "integer-float")),  # 3.0 is an integer
        ({"city": "Oslo", "days": days + 0.5}, WEATHER, ("integer",)),
        ({"city": "Oslo", "days": True}, WEATHER, ("bool-not-integer",)),
        ({"city": "Oslo", "days": 15}, WEATHER, ("bounds",)),
        ({"city": "Oslo", "days": 14}, WEATHER, ("bounds",)),
        ({"city": ""}, WEATHER, ("bounds",)),
        ({"city": "Oslo", "unit": "k"}, WEATHER, ("enum",)),
        ({"city": "Oslo", "country": "NO"}, WEATHER, ("additional-properties",)),
        ({"query": q, "filters": [{"field": "year", "value": None}, {"field": "lang", "value": "en"}]}, SEARCH,
         ("nested", "null")),
        ({"query": q, "filters": [{"field": "year"}, {"value": "x"}]}, SEARCH, ("nested", "required")),
        ({"query": q, "filters": [{"field": "year", "value": 2024}]}, SEARCH, ("nested", "type-list")),
        ({"query": q, "top_k": 3}, SEARCH, ("number",)),
        ({"query": q, "top_k": False}, SEARCH, ("bool-not-integer", "number")),
        ({"query": "x" * 21}, SEARCH, ("bounds",)),
        ({"query": q, "extra": [1, 2]}, SEARCH, ("additional-properties",)),  # allowed: no additionalProperties
        ({"tags": ["a", "b"], "n": 2}, TAGS, ("additional-properties",)),
        ({"tags": ["a", 1]}, TAGS, ("items",)),
        ({"tags": [], "n": "2"}, TAGS, ("additional-properties",)),
        ([q], WEATHER, ("not-an-object",)),
        ({}, EMPTY_PARAMETERS, ("empty",)),
        ({"anything": {"deep": [1, None]}}, {"type": "object"}, ("empty",)),
        ({"x": 1}, {"type": "object", "properties": {"x": {"enum": [1.0, "a"]}}}, ("enum",)),
        ({"x": True}, {"type": "object", "properties": {"x": {"enum": [1, "a"]}}}, ("enum", "bool-not-integer")),
        ({"x": "abc"}, {"type": "object", "properties": {"x": {"minimum": 5, "maxLength": 2}}}, ("bounds",)),
        ({"x": 7}, {"type": "object", "properties": {"x": {"minimum": 5, "maxLength": 2}}}, ("bounds",)),
    ]
    return [Case(dict(arguments=a, schema=s), tags) for a, s, tags in cases]


DRILL = Drill(
    name="tool_args_validate", area="serve", difficulty=2, minutes=20, func="arguments_valid",
    statement="Validate a function call's arguments against the tool's JSON-schema parameters (type, properties, "
              "required, additionalProperties, items, enum, bounds), as llmlab's OpenAI-compatible server does.",
    starter=STARTER, reference=arguments_valid, sources=(argument_error, check_tools), examples=examples,
    hidden=hidden, tags=("required", "integer", "bool-not-integer", "additional-properties", "nested", "enum"),
    hints=("Write one recursive function valid(x, schema) that checks each keyword present in schema in turn and "
           "returns False at the first that fails; recurse for properties, additionalProperties and items.",
           "Types: bool is a subclass of int in Python, so test isinstance(x, bool) first: true is a boolean, not "
           "an integer or a number. An integer may be a float with x.is_integer().",
           "properties only constrains keys that are present; required lists the ones that must be; "
           "additionalProperties applies to keys not in properties. Bounds and lengths apply only to numbers and "
           "strings respectively."),
    tag_hints={"bool-not-integer": "isinstance(True, int) is True in Python, but JSON true is not a number: "
                                   "check bool first.",
               "integer-float": "JSON Schema: 3.0 is an integer (a number with zero fractional part).",
               "integer": "an integer is an int, or a float with no fractional part; 3.5 is not.",
               "required": "every name in required must be a key of the object (at every depth).",
               "additional-properties": "false forbids keys not in properties; a schema checks their values; absent "
                                        "means anything goes.",
               "enum": "compare with JSON equality: 1 == 1.0, but true is not 1.",
               "bounds": "minimum/maximum are inclusive and apply to numbers only; minLength/maxLength to strings "
                         "only.",
               "nested": "recurse: items applies to every array element, properties to every object.",
               "type-list": "\"type\" may be a list: the instance must match one of them.",
               "not-an-object": "a top-level array is not an object: invalid under \"type\": \"object\".",
               "empty": "a schema with no properties accepts any object."},
    banned=("validate", "iter_errors", "is_valid", "argument_error", "parse_tool_calls", "best_match",
            "validator_for", "check_schema"),
)

"""serve/tools.py on crafted text: the tool prompt (Qwen2.5's Hermes format), reading <tool_call> blocks back into
OpenAI tool calls, and the JSON-schema checks of tool definitions and of the model's arguments (`jsonschema`).
The full path, a real model's output through the HTTP API, is in test_api.py (test_tool_call*)."""

from __future__ import annotations

import json

import pytest

from llmlab.infer.chat_template import render
from llmlab.serve import tools
from llmlab.serve.schemas import ChatMessage, NamedToolChoice, Tool
from llmlab.serve.tools import ToolError, check_tools, parse_tool_calls

WEATHER = Tool.model_validate({"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"], "additionalProperties": False}}})
CLOCK = Tool.model_validate({"type": "function", "function": {"name": "get_time"}})  # no parameters: {}
TOOLS = [WEATHER, CLOCK]


def tool(parameters) -> Tool:
    return Tool.model_validate({"type": "function", "function": {"name": "f", "parameters": parameters}})


# ------------------------------------------------------------------------------------------------------------ prompt
def test_tools_prompt_lists_each_tool_as_json():
    text = tools.tools_prompt(TOOLS)
    lines = text.splitlines()
    assert text.startswith("# Tools\n") and "<tools>" in lines and "</tools>" in lines
    listed = [json.loads(line) for line in lines[lines.index("<tools>") + 1:lines.index("</tools>")]]
    assert listed == [t.model_dump(exclude_none=True) for t in TOOLS]
    assert text.endswith('<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def test_plain_messages():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    messages = [ChatMessage(role="developer", content="Be brief."),
                ChatMessage(role="user", content=[{"type": "text", "text": "Weather "}, {"type": "text", "text": "?"}]),
                ChatMessage(role="assistant", content=None, tool_calls=[call]),
                ChatMessage(role="tool", tool_call_id="call_1", content="12 C")]
    out = tools.plain_messages(messages, TOOLS)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"] == "Be brief.\n\n" + tools.tools_prompt(TOOLS)
    assert out[1]["content"] == "Weather ?"
    assert out[2]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert out[3]["content"] == "<tool_response>\n12 C\n</tool_response>"
    no_system = tools.plain_messages(messages[1:2], TOOLS)
    assert no_system[0] == {"role": "system", "content": tools.tools_prompt(TOOLS)}
    assert tools.plain_messages(messages[1:2], None) == [{"role": "user", "content": "Weather ?"}]


def test_rendered_chatml_prompt():
    text = render(tools.plain_messages([ChatMessage(role="user", content="hi")], [CLOCK]))
    assert text.startswith("<|im_start|>system\n# Tools\n") and text.endswith(
        "</tool_call><|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_answer_prefix():
    assert tools.answer_prefix(None) == tools.answer_prefix("auto") == tools.answer_prefix("none") == ""
    assert tools.answer_prefix("required") == "<tool_call>\n"
    named = NamedToolChoice.model_validate({"type": "function", "function": {"name": "get_time"}})
    prefix = tools.answer_prefix(named)
    assert prefix == '<tool_call>\n{"name": "get_time", "arguments": '
    parsed = parse_tool_calls(prefix + "{}}\n</tool_call>", TOOLS)  # the model writes only the arguments
    assert [c.function.name for c in parsed.tool_calls] == ["get_time"]


# ----------------------------------------------------------------------------------------------------------- parsing
def test_text_without_calls_is_content():
    parsed = parse_tool_calls("Sunny, I think.", TOOLS)
    assert parsed.content == "Sunny, I think." and parsed.tool_calls == [] and parsed.error is None


def test_format_call_round_trips():
    text = "Let me check.\n" + tools.format_call("get_weather", {"city": "Oslo", "unit": "celsius"})
    parsed = parse_tool_calls(text, TOOLS)
    assert parsed.content == "Let me check.\n" and parsed.error is None
    (call,) = parsed.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo", "unit": "celsius"}


def test_parallel_calls_and_parallel_false():
    text = (tools.format_call("get_weather", {"city": "Oslo"}) + "\n" + tools.format_call("get_time", {}))
    both = parse_tool_calls(text, TOOLS)
    assert [c.function.name for c in both.tool_calls] == ["get_weather", "get_time"]
    assert len({c.id for c in both.tool_calls}) == 2
    first = parse_tool_calls(text, TOOLS, parallel=False)
    assert [c.function.name for c in first.tool_calls] == ["get_weather"]


@pytest.mark.parametrize("text", [
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}',  # cut off before the closing tag
    '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}\n</tool_call>',  # args as string
    '<tool_call>  {"arguments": {"city": "Rome"}, "name": "get_weather"}  </tool_call>',
])
def test_lenient_forms(text):
    (call,) = parse_tool_calls(text, TOOLS).tool_calls
    assert json.loads(call.function.arguments) == {"city": "Rome"}


@pytest.mark.parametrize("text,why", [
    ('<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>', "not JSON"),
    ('<tool_call>["get_weather"]</tool_call>', 'must be {"name"'),
    ('<tool_call>{"name": "get_weather"}</tool_call>', 'must be {"name"'),
    ('<tool_call>{"name": "launch", "arguments": {}}</tool_call>', "not one of the tools"),
    ('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>', "'city' is a required property"),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": 3}}</tool_call>', "at city: 3 is not of type 'string'"),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Rome", "unit": "kelvin"}}</tool_call>',
     "at unit: 'kelvin' is not one of"),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Rome", "x": 1}}</tool_call>',
     "Additional properties are not allowed"),
    ('<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>', "is not of type 'object'"),
])
def test_invalid_calls_stay_content(text, why):
    """A call that is not valid JSON, names no tool, or breaks the schema is no call: the text is the content."""
    text = "Checking. " + text + tools.format_call("get_time", {})
    parsed = parse_tool_calls(text, TOOLS)
    assert parsed.tool_calls == [] and parsed.content == text and why in parsed.error


# ------------------------------------------------------------------------------------------------------------ checks
def test_valid_tools_pass():
    check_tools(TOOLS, "auto")
    check_tools(TOOLS, NamedToolChoice.model_validate({"type": "function", "function": {"name": "get_time"}}))
    check_tools([], None)
    check_tools([], "none")


@pytest.mark.parametrize("tools_,choice,param,why", [
    ([tool({"type": "object", "properties": {"n": {"type": "integer", "minimum": "zero"}}})], None,
     "tools[0].function.parameters", "'zero' is not of type 'number'"),
    ([tool({"type": "object", "properties": {"n": {"type": "int"}}})], None, "tools[0].function.parameters",
     "Invalid schema for function 'f'"),
    ([tool({"type": "object", "required": "n"})], None, "tools[0].function.parameters", "is not of type 'array'"),
    ([tool({"type": "string"})], None, "tools[0].function.parameters", "must be a JSON Schema of 'type: \"object\"'"),
    ([tool({"properties": {}})], None, "tools[0].function.parameters", "got 'type: null'"),
    ([CLOCK, CLOCK], None, "tools[1].function.name", "two tools are named 'get_time'"),
    ([], "required", "tool_choice", "only allowed when tools are specified"),
    (TOOLS, {"type": "function", "function": {"name": "launch"}}, "tool_choice", "names 'launch'"),
])
def test_invalid_tools_raise(tools_, choice, param, why):
    if isinstance(choice, dict):
        choice = NamedToolChoice.model_validate(choice)
    with pytest.raises(ToolError) as e:
        check_tools(tools_, choice)
    assert e.value.param == param and why in str(e.value)

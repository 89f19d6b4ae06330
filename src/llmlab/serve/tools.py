"""Function calling: how tools are shown to the model, how its calls are read back, and how both are checked.

The prompt format is Qwen2.5's (its tokenizer_config.json chat template), itself the Hermes format of
NousResearch's Hermes-Function-Calling; vLLM's `hermes` tool parser reads the same tags. The system message
ends with the tools, one JSON object per line:

    # Tools

    You may call one or more functions to assist with the user query.

    You are provided with function signatures within <tools></tools> XML tags:
    <tools>
    {"type": "function", "function": {"name": "get_weather", "description": ..., "parameters": {...}}}
    </tools>

    For each function call, return a json object with function name and arguments within <tool_call></tool_call>
    XML tags:
    <tool_call>
    {"name": <function-name>, "arguments": <args-json-object>}
    </tool_call>

The model answers with text, then zero or more `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks.
Earlier calls in the conversation are written back the same way, and each tool result becomes a user message
`<tool_response>\n...\n</tool_response>` (as Qwen2.5 does). tool_choice="required" starts the answer with
"<tool_call>\n", and a named tool_choice with the call's name as well, so the model only writes the arguments.

Checks: each tool's `parameters` must be a valid JSON schema of "type": "object" (OpenAI's rule), else a 400;
the model's calls must name a known tool and have arguments valid under its schema (the `jsonschema` package),
else they are not calls: the text stays the answer's content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from llmlab.errors import LlmlabError
from llmlab.serve.schemas import ChatMessage, FunctionCall, NamedToolChoice, Tool, ToolCall, ToolChoice, new_id

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
EMPTY_PARAMETERS = {"type": "object", "properties": {}}
TOOLS_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("</tools>\n\nFor each function call, return a json object with function name and arguments within "
                "<tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)  # the last block may be cut off unclosed


class ToolError(LlmlabError):
    """A request's tools or tool_choice are invalid; `param` names the field (OpenAI's error `param`)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


# ------------------------------------------------------------------------------------------------------------ checks
def check_tools(tools: Sequence[Tool], tool_choice: ToolChoice | None) -> None:
    """Raise ToolError for an invalid schema, a duplicate name, or a tool_choice that cannot be met."""
    names = set()
    for i, tool in enumerate(tools):
        fn = tool.function
        where = f"tools[{i}].function"
        if fn.name in names:
            raise ToolError(f"{where}.name: two tools are named {fn.name!r}", f"{where}.name")
        names.add(fn.name)
        schema = fn.parameters if fn.parameters is not None else EMPTY_PARAMETERS
        if schema.get("type") != "object":
            raise ToolError(f"Invalid schema for function {fn.name!r}: schema must be a JSON Schema of "
                            f"'type: \"object\"', got 'type: {json.dumps(schema.get('type'))}'",
                            f"{where}.parameters")
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as e:
            raise ToolError(f"Invalid schema for function {fn.name!r}: {e.message} (at "
                            f"{'/'.join(map(str, e.path)) or 'the root'})", f"{where}.parameters") from None
    if tool_choice is not None and not tools and tool_choice != "none":
        raise ToolError("tool_choice is only allowed when tools are specified", "tool_choice")
    if isinstance(tool_choice, NamedToolChoice) and tool_choice.function.name not in names:
        raise ToolError(f"tool_choice names {tool_choice.function.name!r}, which is not in tools "
                        f"({', '.join(sorted(names))})", "tool_choice")


def argument_error(arguments: Any, tool: Tool) -> str | None:
    """Why `arguments` do not fit the tool's parameters schema, or None when they do."""
    schema = tool.function.parameters if tool.function.parameters is not None else EMPTY_PARAMETERS
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(arguments))
    if error is None:
        return None
    at = "/".join(map(str, error.absolute_path))
    return f"{tool.function.name} arguments{' at ' + at if at else ''}: {error.message}"


# ------------------------------------------------------------------------------------------------------------ prompt
def tools_prompt(tools: Sequence[Tool]) -> str:
    """The system-message text that lists the tools and asks for <tool_call> blocks."""
    lines = [json.dumps(t.model_dump(exclude_none=True), ensure_ascii=False) for t in tools]
    return "\n".join([TOOLS_HEADER, *lines, TOOLS_FOOTER])


def format_call(name: str, arguments: Any) -> str:
    return f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(name)}, "arguments": {json.dumps(arguments)}}}\n{TOOL_CALL_CLOSE}'


def plain_messages(messages: Sequence[ChatMessage], tools: Sequence[Tool] | None) -> list[dict[str, str]]:
    """OpenAI messages -> {"role", "content"} strings for the chat template: the tools prompt appended to the system
    message (or a new one first), earlier tool calls as <tool_call> blocks, tool results as <tool_response> turns."""
    out = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role  # OpenAI's newer name for the system role
        text = m.text()
        if m.role == "assistant" and m.tool_calls:
            calls = [format_call(c.function.name, _loads_or_str(c.function.arguments)) for c in m.tool_calls]
            text = "\n".join(([text] if text else []) + calls)
        if m.role == "tool":
            role, text = "user", f"<tool_response>\n{text}\n</tool_response>"
        out.append({"role": role, "content": text})
    if tools:
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + tools_prompt(tools)}
        else:
            out.insert(0, {"role": "system", "content": tools_prompt(tools)})
    return out


def _loads_or_str(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def answer_prefix(tool_choice: ToolChoice | None) -> str:
    """Text that starts the assistant's answer: forces a call for "required", that call for a named choice."""
    if tool_choice == "required":
        return TOOL_CALL_OPEN + "\n"
    if isinstance(tool_choice, NamedToolChoice):
        return f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(tool_choice.function.name)}, "arguments": '
    return ""


# ----------------------------------------------------------------------------------------------------------- parsing
@dataclass
class ParsedAnswer:
    """A generated answer read for tool calls: the content before the first call, and the calls if all are valid."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None  # why the <tool_call> blocks are not valid calls (they then stay in `content`)


def parse_tool_calls(text: str, tools: Sequence[Tool], *, parallel: bool = True) -> ParsedAnswer:
    """Read `text` (the whole answer, prefix included) for <tool_call> blocks; keep only the first if not parallel.

    All blocks must be valid calls (JSON {"name", "arguments"}, a known name, arguments valid under its schema),
    else there are no calls and the whole text is the content, with `error` saying what was wrong.
    """
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return ParsedAnswer(text)
    by_name = {t.function.name: t for t in tools}
    calls = []
    for block in BLOCK.findall(text, start):
        call, error = _read_call(block, by_name)
        if error:
            return ParsedAnswer(text, error=error)
        calls.append(call)
    return ParsedAnswer(text[:start], calls if parallel else calls[:1])


def _read_call(block: str, by_name: dict[str, Tool]) -> tuple[ToolCall | None, str | None]:
    try:
        obj = json.loads(block)
    except json.JSONDecodeError as e:
        return None, f"tool call is not JSON ({e.msg} at character {e.pos}): {block.strip()[:200]!r}"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or "arguments" not in obj:
        return None, f'tool call must be {{"name": ..., "arguments": {{...}}}}, got {block.strip()[:200]!r}'
    name, arguments = obj["name"], obj["arguments"]
    if isinstance(arguments, str):  # some models write the arguments as a JSON string, as OpenAI's API does
        arguments = _loads_or_str(arguments)
    if name not in by_name:
        return None, f"tool call names {name!r}, which is not one of the tools ({', '.join(sorted(by_name))})"
    error = argument_error(arguments, by_name[name])
    if error:
        return None, error
    return ToolCall(id=new_id("call_"), function=FunctionCall(name=name, arguments=json.dumps(arguments))), None

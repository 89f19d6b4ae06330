import json
import re


def parse_tool_calls(text, tool_names):
    start = text.find("<tool_call>")
    if start < 0:
        return text, []
    calls = []
    for block in re.findall(r"<tool_call>(.*?)</tool_call>", text, re.DOTALL):  # misses an unclosed last block
        try:
            obj = json.loads(block)
        except json.JSONDecodeError:
            return text, []
        if not isinstance(obj, dict) or obj.get("name") not in tool_names or "arguments" not in obj:
            return text, []
        args = obj["arguments"]
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        if not isinstance(args, dict):
            return text, []
        calls.append((obj["name"], args))
    return text[:start], calls

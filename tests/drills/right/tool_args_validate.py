def _is_type(x, t):
    if t == "object":
        return isinstance(x, dict)
    if t == "array":
        return isinstance(x, list)
    if t == "string":
        return isinstance(x, str)
    if t == "boolean":
        return isinstance(x, bool)
    if t == "null":
        return x is None
    if isinstance(x, bool):
        return False
    if t == "number":
        return isinstance(x, (int, float))
    if t == "integer":
        return isinstance(x, int) or (isinstance(x, float) and x.is_integer())
    raise ValueError(t)


def _eq(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def arguments_valid(arguments, schema):
    x = arguments
    t = schema.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_is_type(x, ty) for ty in types):
            return False
    if "enum" in schema and not any(_eq(x, e) for e in schema["enum"]):
        return False
    if _is_type(x, "number"):
        if "minimum" in schema and x < schema["minimum"]:
            return False
        if "maximum" in schema and x > schema["maximum"]:
            return False
    if isinstance(x, str):
        if "minLength" in schema and len(x) < schema["minLength"]:
            return False
        if "maxLength" in schema and len(x) > schema["maxLength"]:
            return False
    if isinstance(x, dict):
        props = schema.get("properties", {})
        if any(k not in x for k in schema.get("required", [])):
            return False
        for k, v in x.items():
            if k in props:
                if not arguments_valid(v, props[k]):
                    return False
            elif "additionalProperties" in schema:
                extra = schema["additionalProperties"]
                if extra is False or (isinstance(extra, dict) and not arguments_valid(v, extra)):
                    return False
    if isinstance(x, list) and "items" in schema:
        return all(arguments_valid(v, schema["items"]) for v in x)
    return True

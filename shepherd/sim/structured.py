"""Structured output for the simulator: `response_format` json_object / json_schema answers with a JSON
document (matching the schema where one is given), as a real engine's guided decoding would.

json_object names no schema; clients in JSON mode (instructor, langchain's json_mode) put it in the
prompt, so the simulator looks there for a JSON Schema, as a model would read it. A client with no
response_format at all whose last user message asks for a ```json code block (instructor's MD_JSON
mode) and whose prompt holds a schema gets the document in such a block."""

from __future__ import annotations

import random
from typing import Any

import orjson

_MAX_DEPTH = 8  # a recursive schema ($ref to itself) ends in an empty value


def structured_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema to answer with: {} for "any JSON object", None when the request wants plain text."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return _schema_in_prompt(body.get("messages")) if wants_fenced_json(body) else None
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else {}
    if fmt.get("type") == "json_object":
        return _schema_in_prompt(body.get("messages")) or {}
    return None


def structured_text(schema: dict[str, Any], seed: int, fenced: bool = False) -> str:
    rng = random.Random(seed)
    value = _value(schema, schema, rng, 0)
    if not isinstance(value, dict):  # json_object mode promises an object
        value = {"answer": value} if schema == {} else value
    text = orjson.dumps(value).decode()
    return f"```json\n{text}\n```" if fenced else text


def wants_fenced_json(body: dict[str, Any]) -> bool:
    """No response_format, and the last user message asks for a ```json code block."""
    if body.get("response_format") is not None:
        return False
    messages = body.get("messages")
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return isinstance(content, str) and "```json" in content
    return False


def split_text(text: str, pieces: int) -> list[str]:
    """`text` in `pieces` consecutive parts (the token count stays what the engine model decided)."""
    if pieces <= 1:
        return [text] if pieces == 1 else []
    size = -(-len(text) // pieces)
    parts = [text[i * size:(i + 1) * size] for i in range(pieces)]
    return parts


def _schema_in_prompt(messages: Any) -> dict[str, Any] | None:
    if not isinstance(messages, list):
        return None
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            continue
        start = content.find("{")
        while start != -1:
            found = _json_object_at(content, start)
            if isinstance(found, dict) and ("properties" in found or "$defs" in found):
                return found
            start = content.find("{", start + 1)
    return None


def _json_object_at(text: str, start: int) -> Any:
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            escaped = not escaped and char == "\\"
            if char == '"' and not escaped:
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                try:
                    return orjson.loads(text[start:index + 1])
                except orjson.JSONDecodeError:
                    return None
    return None


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _value(schema: Any, root: dict[str, Any], rng: random.Random, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if "$ref" in schema:
        return _value(_resolve(str(schema["$ref"]), root), root, rng, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            usable = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")] or options
            return _value(usable[0], root, rng, depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            part = _resolve(part["$ref"], root) if isinstance(part, dict) and "$ref" in part else part
            if isinstance(part, dict):
                merged = {**merged, **part, "properties": {**merged.get("properties", {}),
                                                           **part.get("properties", {})}}
        return _value(merged, root, rng, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties: dict[str, Any] = schema.get("properties") or {}
        if not isinstance(properties, dict):
            properties = {}
        return {name: _value(sub, root, rng, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1) or 0), 1)
        count = min(count, int(schema.get("maxItems", count) or count))
        return [_value(schema.get("items", {}), root, rng, depth + 1) for _ in range(count)]
    if kind == "integer":
        low = int(schema.get("minimum", 0))
        return rng.randint(low, max(low, int(schema.get("maximum", low + 100))))
    if kind == "number":
        floor = float(schema.get("minimum", 0))
        return round(rng.uniform(floor, max(floor, float(schema.get("maximum", floor + 100)))), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    words = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
    text = " ".join(rng.choice(words) for _ in range(2))
    min_length = int(schema.get("minLength", 0) or 0)
    return (text * (min_length // len(text) + 1))[:max(min_length, len(text))]

"""`POST /parse/function_call` and `POST /parse/reasoning`: the gateway's parsers, offered to HTTP users.

A client that talks to an engine directly (or gets raw text some other way) can have the gateway
split it exactly as the gRPC chat path would. The parser is the one the body names, else the
gateway's `--tool-call-parser` / `--reasoning-parser`, else the one the body's `model` implies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from shepherd.api.body import parse_json_object, read_body
from shepherd.api.keys import CONTEXT
from shepherd.errors import GatewayError
from shepherd.parsers.reasoning import create_reasoning_parser, resolve_reasoning_parser
from shepherd.parsers.tool import PASSTHROUGH, UnknownParserError, create_tool_parser, resolve_tool_parser

# Parsing is pure CPU; long texts go to a thread so the event loop keeps serving meanwhile.
_INLINE_LIMIT = 32 * 1024

T = TypeVar("T")


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _optional_str(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise GatewayError(400, "invalid_type", f"'{field}' must be a string", param=field)
    return value or None


def _text(body: dict[str, Any]) -> str:
    if "text" not in body:
        raise GatewayError(400, "missing_field", "'text' is required", param="text")
    text = body["text"]
    if not isinstance(text, str):
        raise GatewayError(400, "invalid_type", "'text' must be a string", param="text")
    return text


async def _run(function: Callable[[str], T], text: str) -> T:
    if len(text) <= _INLINE_LIMIT:
        return function(text)
    return await asyncio.get_running_loop().run_in_executor(None, function, text)


def _no_parser(field: str, model: str | None) -> GatewayError:
    if model:
        message = f"No {field.replace('_', ' ')} is known for model {model!r}; name one with '{field}'"
    else:
        message = f"'{field}' is required (or a 'model' whose parser can be detected)"
    return GatewayError(400, "missing_field", message, param=field)


async def parse_function_call(request: web.Request) -> web.Response:
    config = request.app[CONTEXT].config
    body = parse_json_object(await read_body(request, config.max_payload_size))
    text = _text(body)
    name = _optional_str(body, "tool_call_parser") or config.tool_call_parser
    model = _optional_str(body, "model")
    detect_by = request.app[CONTEXT].parser_profiles.detection_name(model)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise GatewayError(400, "invalid_type", "'tools' must be a list", param="tools")
    try:
        resolved = resolve_tool_parser(name, detect_by)
    except UnknownParserError as exc:
        raise GatewayError(400, "unknown_parser", str(exc), param="tool_call_parser") from None
    if resolved is None and name != PASSTHROUGH:
        raise _no_parser("tool_call_parser", model)
    try:
        parser = create_tool_parser(resolved or PASSTHROUGH, tools=tools)
    except ValueError as exc:
        raise GatewayError(400, "invalid_tools", str(exc), param="tools") from None
    if parser is None:
        return _json({"normal_text": text, "calls": [], "tool_calls": [], "success": True})
    result = await _run(parser.parse, text)
    return _json({
        "normal_text": result.normal_text,
        "calls": [{"tool_index": call.index, "name": call.name, "parameters": call.arguments} for call in result.calls],
        "tool_calls": [call.to_openai() for call in result.calls],
        "success": True,
    })


async def parse_reasoning(request: web.Request) -> web.Response:
    config = request.app[CONTEXT].config
    body = parse_json_object(await read_body(request, config.max_payload_size))
    text = _text(body)
    name = _optional_str(body, "reasoning_parser") or config.reasoning_parser
    model = _optional_str(body, "model")
    detect_by = request.app[CONTEXT].parser_profiles.detection_name(model)
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise GatewayError(400, "invalid_type", "'chat_template_kwargs' must be an object",
                           param="chat_template_kwargs")
    try:
        resolved = resolve_reasoning_parser(name, detect_by)
    except UnknownParserError as exc:
        raise GatewayError(400, "unknown_parser", str(exc), param="reasoning_parser") from None
    if resolved is None and name != PASSTHROUGH:
        raise _no_parser("reasoning_parser", model)
    parser = create_reasoning_parser(resolved, chat_template_kwargs=kwargs) if resolved else None
    if parser is None:  # passthrough, or thinking switched off: the whole text is the answer
        return _json({"normal_text": text, "reasoning_text": "", "success": True})
    result = await _run(parser.parse, text)
    return _json({"normal_text": result.normal_text, "reasoning_text": result.reasoning_text, "success": True})


def add_parse_routes(app: web.Application) -> None:
    app.router.add_post("/parse/function_call", parse_function_call)
    app.router.add_post("/parse/reasoning", parse_reasoning)

"""A Responses request, checked once: its input as items, and the Chat Completions body it becomes.

Input items become chat messages: messages keep their role (developer -> system) and their text or
image parts, consecutive function_call items become one assistant message's tool_calls, each
function_call_output a tool message; reasoning items are not replayed (as OpenAI does). The
request's own `instructions` lead as a system message; a chain's earlier instructions are not
inherited.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shepherd.errors import GatewayError
from shepherd.mcp.request_tools import McpToolRefused, McpToolSpec, parse_mcp_tools
from shepherd.storage.base import new_item_id

# OpenAI's `include` values. Logprobs are asked of the model; input image URLs are kept in the stored
# input anyway; reasoning items carry their text in `content`, so there is nothing to encrypt; the
# rest name outputs of hosted tools, which are refused in `tools`, so they can never apply.
INCLUDABLE = frozenset({"message.output_text.logprobs", "reasoning.encrypted_content",
                        "message.input_image.image_url", "file_search_call.results", "web_search_call.results",
                        "web_search_call.action.sources", "computer_call_output.output.image_url",
                        "code_interpreter_call.outputs"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_PASSED = ("temperature", "top_p", "user", "parallel_tool_calls", "seed", "stop", "top_logprobs")


def new_response_id() -> str:
    return "resp_" + os.urandom(24).hex()


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> GatewayError:
    return GatewayError(400, code, message, param=param)


@dataclass
class ResponseRequest:
    body: dict[str, Any]
    model: str
    input_items: list[dict[str, Any]]  # this request's input, each item with an id (what is stored)
    stream: bool
    store: bool
    background: bool
    previous_response_id: str | None
    conversation_id: str | None
    include: list[str]
    mcp_tools: list[McpToolSpec] = field(default_factory=list)  # the `{"type": "mcp"}` tools
    # What this response continues: its conversation, or the oldest response of its chain that
    # history loaded (set by load_history); None for a first response.
    lineage: str | None = None

    @property
    def approvals(self) -> list[dict[str, Any]]:
        """The input's answers to earlier approval requests."""
        return [item for item in self.input_items if item.get("type") == "mcp_approval_response"]

    @classmethod
    def parse(cls, body: dict[str, Any]) -> ResponseRequest:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _bad("'model' is required", "model", "missing_required_parameter")
        previous = body.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise _bad("'previous_response_id' must be a string", "previous_response_id")
        conversation = body.get("conversation")
        if isinstance(conversation, dict):
            conversation = conversation.get("id")
        if conversation is not None and not isinstance(conversation, str):
            raise _bad("'conversation' must be a conversation id or {\"id\": ...}", "conversation")
        if previous and conversation:
            raise _bad("'previous_response_id' and 'conversation' cannot be used together", "conversation")
        include = body.get("include") or []
        if not isinstance(include, list) or not all(isinstance(x, str) for x in include):
            raise _bad("'include' must be a list of strings", "include")
        unknown = [x for x in include if x not in INCLUDABLE]
        if unknown:
            raise _bad(f"'include' has unsupported values: {', '.join(unknown)}", "include")
        for flag in ("stream", "store", "background"):
            if body.get(flag) is not None and not isinstance(body[flag], bool):
                raise _bad(f"'{flag}' must be a boolean", flag)
        store = body.get("store") is not False
        background = bool(body.get("background"))
        if background and not store:
            raise _bad("Background responses need 'store': true", "background")
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise _bad("'instructions' must be a string", "instructions")
        chat_tools(body.get("tools"))  # checked now: a bad request costs no history lookup
        try:
            mcp_tools = parse_mcp_tools(body.get("tools"))
        except McpToolRefused as exc:
            raise _bad(str(exc), "tools") from None
        max_calls = body.get("max_tool_calls")
        if max_calls is not None and (isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1):
            raise _bad("'max_tool_calls' must be a positive integer", "max_tool_calls")
        chat_tool_choice(body.get("tool_choice"))
        chat_response_format(body.get("text"))
        return cls(body=body, model=model, input_items=normalize_input(body.get("input")),
                   stream=bool(body.get("stream")), store=store, background=background,
                   previous_response_id=previous or None, conversation_id=conversation or None, include=include,
                   mcp_tools=mcp_tools)

    def chat_body(self, history: list[dict[str, Any]], stream: bool, after: list[dict[str, Any]] | None = None,
                  mcp_name: McpName | None = None) -> dict[str, Any]:
        """The Chat Completions body for this request after `history` (the chain's or the conversation's
        items); `after`: items of this response already produced (a resumed approval's call)."""
        body = self.body
        messages: list[dict[str, Any]] = []
        instructions = body.get("instructions")
        if instructions:
            messages.append({"role": "system", "content": instructions})
        messages += items_to_messages(history + self.input_items + (after or []), mcp_name)
        chat: dict[str, Any] = {"model": self.model, "messages": messages}
        for name in _PASSED:
            if body.get(name) is not None:
                chat[name] = body[name]
        if body.get("max_output_tokens") is not None:
            chat["max_tokens"] = body["max_output_tokens"]
        tools = chat_tools(body.get("tools"))
        if tools:
            chat["tools"] = tools
            choice = chat_tool_choice(body.get("tool_choice"))
            if choice is not None:
                chat["tool_choice"] = choice
        response_format = chat_response_format(body.get("text"))
        if response_format is not None:
            chat["response_format"] = response_format
        if "message.output_text.logprobs" in self.include:
            chat["logprobs"] = True
        if stream:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
        return chat


def normalize_input(raw: Any) -> list[dict[str, Any]]:
    """The request's `input` as items, each with an id (plain text is one user message)."""
    if raw is None:
        raise _bad("'input' is required", "input", "missing_required_parameter")
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise _bad("'input' must be a string or a list of items", "input")
    items: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad(f"input[{index}] must be an object", f"input[{index}]")
        kind = item.get("type") or ("message" if "role" in item else None)
        item = {**item, "type": kind}
        if kind == "message":
            if item.get("role") not in _ROLES:
                raise _bad(f"input[{index}]: a message needs a role of {', '.join(sorted(_ROLES))}", f"input[{index}]")
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if item["role"] == "assistant" else "input_text"
                item["content"] = [{"type": part, "text": content}]
            elif not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
                raise _bad(f"input[{index}]: 'content' must be a string or a list of parts", f"input[{index}]")
        elif kind == "function_call":
            if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
                raise _bad(f"input[{index}]: a function_call needs string call_id, name and arguments",
                           f"input[{index}]")
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str) or "output" not in item:
                raise _bad(f"input[{index}]: a function_call_output needs a call_id and an output", f"input[{index}]")
        elif kind in _MCP_FIELDS:
            if not all(isinstance(item.get(k), t) for k, t in _MCP_FIELDS[kind].items()):
                fields = ", ".join(f"{k} ({t.__name__})" for k, t in _MCP_FIELDS[kind].items())
                raise _bad(f"input[{index}]: an {kind} item needs {fields}", f"input[{index}]")
        elif kind not in ("reasoning", "item_reference"):
            raise _bad(f"input[{index}]: item type {kind!r} is not supported", f"input[{index}]")
        if not isinstance(item.get("id"), str):
            item["id"] = new_item_id(str(kind))
        if kind != "item_reference":
            item.setdefault("status", "completed")
        items.append(item)
    return items


_MCP_FIELDS: dict[str, dict[str, type]] = {
    "mcp_approval_response": {"approval_request_id": str, "approve": bool},
    "mcp_approval_request": {"id": str, "server_label": str, "name": str, "arguments": str},
    "mcp_call": {"server_label": str, "name": str, "arguments": str},
    "mcp_list_tools": {"server_label": str, "tools": list},
}
McpName = Callable[[str, str], str]  # (server label, tool) -> the function name the model knows it by
DENIED = "Error: the user denied this tool call"


def _part(part: dict[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text", "refusal"):
        return {"type": "text", "text": str(part.get("text") or part.get("refusal") or "")}
    if kind == "input_image":
        url = part.get("image_url")
        if isinstance(url, str):
            return {"type": "image_url", "image_url": {"url": url, "detail": part.get("detail") or "auto"}}
        raise _bad("input_image parts need an 'image_url' (file ids are not supported)", "input")
    raise _bad(f"content part type {kind!r} is not supported", "input")


def _message_content(content: Any) -> Any:
    if isinstance(content, str):
        return content
    parts = [p for p in (_part(part) for part in content if isinstance(part, dict)) if p is not None]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)  # plain text: what every engine and template accepts
    return parts


def items_to_messages(items: list[dict[str, Any]], mcp_name: McpName | None = None) -> list[dict[str, Any]]:
    """Items as chat messages. An mcp_call is the model's call and its result (consecutive ones one
    assistant turn); an approval request is shown once it is answered: approved, by the mcp_call
    that ran it, denied, as a call whose result says so."""
    messages: list[dict[str, Any]] = []
    requests: dict[str, dict[str, Any]] = {}
    mcp_turn: dict[str, Any] | None = None  # the assistant message of the mcp calls just rendered

    def mcp_result(item: dict[str, Any], call_id: str, result: str) -> None:
        nonlocal mcp_turn
        name = mcp_name(item["server_label"], item["name"]) if mcp_name else item["name"]
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": item.get("arguments")
                                                                or "{}"}}
        if mcp_turn is None:
            mcp_turn = {"role": "assistant", "content": None, "tool_calls": []}
            messages.append(mcp_turn)
        mcp_turn["tool_calls"].append(call)
        messages.append({"role": "tool", "tool_call_id": call_id, "content": result})

    for item in items:
        kind = item.get("type")
        if kind == "mcp_call":
            mcp_result(item, str(item.get("id") or new_item_id("mcp_call")), _mcp_call_text(item))
            continue
        if kind == "mcp_approval_request":
            requests[item["id"]] = item
            continue
        if kind == "mcp_approval_response":
            request = requests.get(item["approval_request_id"])
            if request is not None and not item.get("approve"):
                reason = item.get("reason")
                mcp_result(request, request["id"], DENIED + (f": {reason}" if isinstance(reason, str) and reason
                                                             else ""))
            continue
        if kind in ("message", "function_call", "function_call_output"):
            mcp_turn = None
        if kind == "message":
            role = item.get("role")
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _message_content(item.get("content"))})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):  # output parts: their text
                output = "".join(str(p.get("text", "")) for p in output if isinstance(p, dict))
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": output if isinstance(output, str) else str(output)})
    return messages


def _mcp_call_text(item: dict[str, Any]) -> str:
    """What the model read as an mcp_call's result."""
    error = item.get("error")
    if error is None:
        return str(item.get("output") or "")
    if isinstance(error, dict):  # OpenAI's error objects: a protocol error's message, a tool's content text
        content = error.get("content")
        text = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict)) \
            if isinstance(content, list) else error.get("message") or content
        error = text
    return f"Error: {error}"


def chat_tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad("'tools' must be a list", "tools")
    tools = []
    for index, tool in enumerate(raw):
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            continue  # run by the gateway (shepherd/responses/mcp.py), offered as the session's functions
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _bad(f"tools[{index}]: only function tools are supported here (got {kind!r})", f"tools[{index}]",
                       "unsupported_tool")
        function: dict[str, Any] = {"name": tool["name"]}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        tools.append({"type": "function", "function": function})
    return tools


def chat_tool_choice(raw: Any) -> Any:
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("name"), str):
        return {"type": "function", "function": {"name": raw["name"]}}
    raise _bad("'tool_choice' must be auto, none, required or {\"type\": \"function\", \"name\": ...}", "tool_choice")


def chat_response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
        schema: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        if fmt.get("description"):
            schema["description"] = fmt["description"]
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("'text.format' must be text, json_object or json_schema (with a 'schema')", "text.format")

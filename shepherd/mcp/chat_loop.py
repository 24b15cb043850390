"""The tool loop on Chat Completions, over any model call.

The loop needs only `ModelCall`: given a chat body, the completion dict (or, with `stream: true`, an
async iterable of chunk dicts). So it runs the same on HTTP engines, gRPC engines (whose tool
parsers produce `tool_calls`) and providers.

The model is offered the client's own tools and the session's MCP tools. Calls to MCP tools are
run by the gateway (a turn's calls in parallel) and their results fed back; calls to the client's
tools end the turn and go back to the client, as do the MCP calls run in that same turn (reported,
not repeated). At most `max_tool_calls` MCP calls run per request; past that the model gets one last
turn with `tool_choice: "none"`. What ran is reported in an `mcp_calls` list (on the completion, or
in a chunk with no choices): each `{id, type: "mcp_call", server_label, name, arguments, output,
error, status}`, `status` completed | failed | incomplete.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Mapping
from typing import Any

from shepherd.mcp.session import McpCallRecord, ToolSession

ModelCall = Callable[[dict[str, Any]], Awaitable[Mapping[str, Any] | AsyncIterable[dict[str, Any]]]]

_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def prepare(body: Mapping[str, Any], session: ToolSession) -> dict[str, Any]:
    """The body the model gets: the client's tools plus the session's."""
    request = dict(body)
    request["tools"] = [*(body.get("tools") or []), *session.chat_tools()]
    request["messages"] = list(body.get("messages") or [])
    return request


async def _run_calls(session: ToolSession, calls: list[dict[str, Any]], budget: int) -> list[McpCallRecord]:
    """Run up to `budget` calls at once; the rest are recorded as not run."""
    run = calls[:budget]
    records = list(await asyncio.gather(*(
        session.execute(c["id"], c["function"]["name"], c["function"].get("arguments") or "") for c in run)))
    for c in calls[budget:]:
        binding = session.bindings[c["function"]["name"]]
        records.append(McpCallRecord(c["id"], binding.label, binding.tool.name, c["function"].get("arguments") or "",
                                     error="not run: the request's max_tool_calls was reached",
                                     status="incomplete"))
    return records


def _follow_up(request: dict[str, Any], content: Any, calls: list[dict[str, Any]],
               records: list[McpCallRecord], spent: bool) -> None:
    """Append the turn (the model's calls and their results) to the conversation for the next turn."""
    request["messages"] = [
        *request["messages"],
        {"role": "assistant", "content": content, "tool_calls": calls},
        *({"role": "tool", "tool_call_id": r.id, "content": r.model_text} for r in records)]
    if spent:
        request["tool_choice"] = "none"


def _add_usage(total: dict[str, int], usage: Any) -> None:
    if isinstance(usage, dict):
        for key in _USAGE_KEYS:
            value = usage.get(key)
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value


async def run_chat(model: ModelCall, body: Mapping[str, Any], session: ToolSession,
                   max_tool_calls: int) -> dict[str, Any]:
    request = prepare(body, session)
    request["stream"] = False
    records: list[McpCallRecord] = []
    usage: dict[str, int] = {}
    last_turn = False
    while True:
        answer = dict(await model(request))  # type: ignore[arg-type]
        _add_usage(usage, answer.get("usage"))
        choices = answer.get("choices") or []
        message = dict(choices[0].get("message") or {}) if choices else {}
        calls = list(message.get("tool_calls") or [])
        mine = [c for c in calls if c.get("function", {}).get("name") in session]
        theirs = [c for c in calls if c not in mine]
        if not mine:
            break
        if last_turn:  # past the budget the model was told not to call tools: what it still asks is dropped
            records.extend(await _run_calls(session, mine, 0))
            _strip(answer, message, theirs, "stop")
            break
        budget = max_tool_calls - sum(r.status != "incomplete" for r in records)
        ran = await _run_calls(session, mine, budget)
        records.extend(ran)
        if theirs:
            _strip(answer, message, theirs, "tool_calls")
            break
        last_turn = budget <= len(mine)
        _follow_up(request, message.get("content"), mine, ran, last_turn)
    if usage:
        answer["usage"] = {**(answer.get("usage") or {}), **usage}
    answer["mcp_calls"] = [r.as_item() for r in records]
    return answer


def _strip(answer: dict[str, Any], message: dict[str, Any], theirs: list[dict[str, Any]], finish: str) -> None:
    message["tool_calls"] = theirs or None
    if not theirs:
        message.pop("tool_calls")
    choice = dict(answer["choices"][0])
    choice["message"], choice["finish_reason"] = message, finish
    answer["choices"] = [choice, *answer["choices"][1:]]


async def stream_chat(model: ModelCall, body: Mapping[str, Any], session: ToolSession,
                      max_tool_calls: int) -> AsyncGenerator[dict[str, Any], None]:
    """The chunks the client gets: the model's own, across every turn, under the first turn's id."""
    request = prepare(body, session)
    request["stream"] = True
    want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    request["stream_options"] = {"include_usage": True}  # summed over the turns
    records: list[McpCallRecord] = []
    usage: dict[str, int] = {}
    identity: dict[str, Any] = {}
    turn = 0
    last_turn = False
    while True:
        turn += 1
        stream = await model(request)
        assert not isinstance(stream, Mapping), "a streamed model call answers with chunks"
        turn_state = _StreamTurn(session, drop_role=turn > 1)
        try:
            async for chunk in stream:
                if not identity:
                    identity = {k: chunk[k] for k in ("id", "created", "model") if k in chunk}
                _add_usage(usage, chunk.get("usage"))
                for out in turn_state.feed(chunk):
                    yield {**out, **identity}
        finally:  # a client gone mid-turn: the model call (and its upstream request) ends too
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        mine = turn_state.mine()
        theirs_seen = turn_state.forwarded_any
        if not mine:
            if turn_state.finish is not None:
                yield {**turn_state.finish, **identity}
            break
        if last_turn:
            records.extend(await _run_calls(session, mine, 0))
            yield {**_finish_chunk(turn_state, "tool_calls" if theirs_seen else "stop"), **identity}
            break
        budget = max_tool_calls - sum(r.status != "incomplete" for r in records)
        ran = await _run_calls(session, mine, budget)
        records.extend(ran)
        yield {"object": "chat.completion.chunk", "choices": [], "mcp_calls": [r.as_item() for r in ran], **identity}
        if theirs_seen:
            yield {**_finish_chunk(turn_state, "tool_calls"), **identity}
            break
        last_turn = budget <= len(mine)
        _follow_up(request, turn_state.content or None, mine, ran, last_turn)
    if want_usage and usage:
        yield {"object": "chat.completion.chunk", "choices": [], "usage": usage, **identity}


def _finish_chunk(turn: _StreamTurn, reason: str) -> dict[str, Any]:
    base = dict(turn.finish or {"object": "chat.completion.chunk"})
    base["choices"] = [{"index": 0, "delta": {}, "finish_reason": reason}]
    return base


class _StreamTurn:
    """One turn's chunks: content and the client's own tool calls pass on, MCP calls are gathered."""

    def __init__(self, session: ToolSession, drop_role: bool) -> None:
        self._session = session
        self._drop_role = drop_role
        self._calls: dict[int, dict[str, Any]] = {}
        self._client_index: dict[int, int] = {}
        self.content = ""
        self.finish: dict[str, Any] | None = None
        self.forwarded_any = False

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        choices = chunk.get("choices") or []
        if not choices:
            return []  # usage-only chunks: summed, sent once at the end
        choice = dict(choices[0])
        delta = dict(choice.get("delta") or {})
        if self._drop_role:
            delta.pop("role", None)
        if isinstance(delta.get("content"), str):
            self.content += delta["content"]
        passed = self._tool_deltas(delta.pop("tool_calls", None) or [])
        if passed:
            delta["tool_calls"] = passed
        out: list[dict[str, Any]] = []
        if any(v not in (None, "", []) for v in delta.values()):
            out.append({**chunk, "choices": [{**choice, "delta": delta, "finish_reason": None}]})
        if choice.get("finish_reason") is not None:
            self.finish = {**chunk, "choices": [{**choice, "delta": {}}]}
            self.finish.pop("usage", None)
        return out

    def _tool_deltas(self, deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        passed: list[dict[str, Any]] = []
        for tc in deltas:
            index = tc.get("index", 0)
            entry = self._calls.setdefault(index, {"id": "", "name": "", "arguments": "", "mine": None,
                                                   "held": []})
            function = tc.get("function") or {}
            entry["id"] = tc.get("id") or entry["id"]
            entry["name"] += function.get("name") or ""
            entry["arguments"] += function.get("arguments") or ""
            if entry["mine"] is None:
                entry["held"].append(tc)
                if entry["name"]:
                    entry["mine"] = entry["name"] in self._session
                    if not entry["mine"]:
                        passed.extend(self._renumber(index, held) for held in entry["held"])
                    entry["held"] = []
            elif entry["mine"] is False:
                passed.append(self._renumber(index, tc))
        if passed:
            self.forwarded_any = True
        return passed

    def _renumber(self, index: int, delta: dict[str, Any]) -> dict[str, Any]:
        """The client's calls are numbered among themselves (the gateway's are not shown)."""
        number = self._client_index.setdefault(index, len(self._client_index))
        return {**delta, "index": number}

    def mine(self) -> list[dict[str, Any]]:
        return [{"id": e["id"], "type": "function", "function": {"name": e["name"], "arguments": e["arguments"]}}
                for _, e in sorted(self._calls.items()) if e["mine"]]

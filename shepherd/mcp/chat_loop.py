"""The tool loop on Chat Completions, over any model call: one mechanism for every API.

The loop needs only `ModelCall`: given a chat body, the completion dict (or, with `stream: true`, an
async iterable of chunk dicts). So it runs the same on HTTP engines, gRPC engines (whose tool
parsers produce `tool_calls`) and providers; the Responses API and Anthropic Messages run it on the
chat body their request becomes.

The model is offered the client's own tools and the session's MCP tools. Calls to MCP tools are
run by the gateway (a turn's calls in parallel) and their results fed back; calls to the client's
tools end the turn and go back to the client, as do the MCP calls run in that same turn (reported,
not repeated). A call to a tool that needs the client's approval is not run: the loop ends with it
held (`LoopResult.held`, a `CallsHeld` event). At most `max_tool_calls` MCP calls run per request;
past that the model gets one last turn with `tool_choice: "none"`.

`run_loop` / `stream_loop` give the API layers what happened (records, and when streaming the
model's chunks interleaved with `CallsStarting` / `CallsDone` / `CallsHeld` events); `run_chat` /
`stream_chat` are the Chat Completions shape of it: what ran is reported in an `mcp_calls` list (on
the completion, or in a chunk with no choices), each `{id, type: "mcp_call", server_label, name,
arguments, output, error, status}`, `status` completed | failed | incomplete.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the session imports the mcp SDK, which only gateways that use MCP pay for
    from shepherd.mcp.session import McpCallRecord, ToolSession

ModelCall = Callable[[dict[str, Any]], Awaitable[Mapping[str, Any] | AsyncIterable[dict[str, Any]]]]

_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
_NOT_RUN = "not run: the request's max_tool_calls was reached"


@dataclass
class CallsStarting:
    records: list[McpCallRecord]  # status in_progress


@dataclass
class CallsDone:
    records: list[McpCallRecord]  # completed | failed | incomplete


@dataclass
class CallsHeld:
    records: list[McpCallRecord]  # awaiting_approval; the loop ends after this


LoopEvent = CallsStarting | CallsDone | CallsHeld


@dataclass
class Step:
    """A turn in which the gateway ran calls: what the model wrote before them (none for the turn the
    loop ended on: its text is the answer's) and the records of the calls that ran."""
    text: str | None
    reasoning: str | None
    records: list[McpCallRecord]


@dataclass
class LoopResult:
    answer: dict[str, Any]  # the last turn's completion (the gateway's calls taken out), usage summed
    steps: list[Step] = field(default_factory=list)  # in order; a streamed answer shows the same order
    held: list[McpCallRecord] = field(default_factory=list)

    @property
    def records(self) -> list[McpCallRecord]:
        return [r for step in self.steps for r in step.records]

    def text_before(self) -> str:
        """The text the model wrote in the turns before the answer (a stream carries it, in order)."""
        return "".join(step.text or "" for step in self.steps)


def prepare(body: Mapping[str, Any], session: ToolSession) -> dict[str, Any]:
    """The body the model gets: the client's tools plus the session's."""
    request = dict(body)
    request["tools"] = [*(body.get("tools") or []), *session.chat_tools()]
    request["messages"] = list(body.get("messages") or [])
    return request


class _Turns:
    """What the loop has done so far, and the decision for each turn's MCP calls."""

    def __init__(self, session: ToolSession, max_tool_calls: int, spent: int) -> None:
        self.session = session
        self.limit = max_tool_calls
        self.used = spent  # calls run (a resumed approval's call counts)
        self.last_turn = spent >= max_tool_calls
        self.held: list[McpCallRecord] = []

    def plan(self, mine: list[dict[str, Any]]) -> tuple[list[McpCallRecord], list[McpCallRecord]]:
        """Every call's record, in order, and those to run now."""
        turn: list[McpCallRecord] = []
        run: list[McpCallRecord] = []
        for c in mine:
            name, arguments = c["function"]["name"], c["function"].get("arguments") or ""
            if self.last_turn or (self.used >= self.limit and not self.session.needs_approval(name)):
                record = self.session.record(c["id"], name, arguments, "incomplete")
                record.error = _NOT_RUN
            elif self.session.needs_approval(name):
                record = self.session.record(c["id"], name, arguments, "awaiting_approval")
                self.held.append(record)
            else:
                record = self.session.record(c["id"], name, arguments)
                run.append(record)
                self.used += 1
            turn.append(record)
        return turn, run

    async def run(self, turn: list[McpCallRecord], run: list[McpCallRecord]) -> list[McpCallRecord]:
        """Run the turn's calls at once; its records that are not held."""
        await asyncio.gather(*(self.session.run(r) for r in run))
        return [r for r in turn if r.status != "awaiting_approval"]

    def ends(self, was_last_turn: bool, theirs: bool) -> bool:
        return was_last_turn or theirs or bool(self.held)


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


async def run_loop(model: ModelCall, body: Mapping[str, Any], session: ToolSession, max_tool_calls: int,
                   spent: int = 0) -> LoopResult:
    request = prepare(body, session)
    request["stream"] = False
    turns = _Turns(session, max_tool_calls, spent)
    usage: dict[str, int] = {}
    steps: list[Step] = []
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
        was_last_turn = turns.last_turn
        turn, run = turns.plan(mine)
        done = await turns.run(turn, run)
        if turns.ends(was_last_turn, bool(theirs)):
            steps.append(Step(None, None, done))
            _strip(answer, message, theirs, "tool_calls" if theirs else "stop")
            break
        steps.append(Step(_text(message.get("content")),
                          _text(message.get("reasoning_content") or message.get("reasoning")), done))
        turns.last_turn = turns.used >= max_tool_calls
        _follow_up(request, message.get("content"), mine, turn, turns.last_turn)
    if usage:
        answer["usage"] = {**(answer.get("usage") or {}), **usage}
    return LoopResult(answer, steps, turns.held)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


async def run_chat(model: ModelCall, body: Mapping[str, Any], session: ToolSession,
                   max_tool_calls: int) -> dict[str, Any]:
    result = await run_loop(model, body, session, max_tool_calls)
    answer = result.answer
    before = result.text_before()
    if before and answer.get("choices"):  # as a stream shows it: every turn's text, in one message
        choice = dict(answer["choices"][0])
        message = dict(choice.get("message") or {})
        message["content"] = before + (message.get("content") or "")
        choice["message"] = message
        answer = {**answer, "choices": [choice, *answer["choices"][1:]]}
    return {**answer, "mcp_calls": [r.as_item() for r in result.records]}


def _strip(answer: dict[str, Any], message: dict[str, Any], theirs: list[dict[str, Any]], finish: str) -> None:
    message["tool_calls"] = theirs or None
    if not theirs:
        message.pop("tool_calls")
    choice = dict(answer["choices"][0])
    choice["message"], choice["finish_reason"] = message, finish
    answer["choices"] = [choice, *answer["choices"][1:]]


async def stream_loop(model: ModelCall, body: Mapping[str, Any], session: ToolSession, max_tool_calls: int,
                      spent: int = 0) -> AsyncGenerator[dict[str, Any] | LoopEvent, None]:
    """The model's chunks across every turn, under the first turn's id, with the loop's events between
    them; the gateway's calls are not in the chunks. The summed usage comes last when asked for."""
    request = prepare(body, session)
    request["stream"] = True
    want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    request["stream_options"] = {"include_usage": True}  # summed over the turns
    turns = _Turns(session, max_tool_calls, spent)
    usage: dict[str, int] = {}
    identity: dict[str, Any] = {}
    turn_number = 0
    while True:
        turn_number += 1
        stream = await model(request)
        assert not isinstance(stream, Mapping), "a streamed model call answers with chunks"
        turn_state = _StreamTurn(session, drop_role=turn_number > 1)
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
        was_last_turn = turns.last_turn
        turn, run = turns.plan(mine)
        if run:
            yield CallsStarting(run)
        done = await turns.run(turn, run)
        if done:
            yield CallsDone(done)
        if turns.held:
            yield CallsHeld(turns.held)
        if turns.ends(was_last_turn, theirs_seen):
            yield {**_finish_chunk(turn_state, "tool_calls" if theirs_seen else "stop"), **identity}
            break
        turns.last_turn = turns.used >= max_tool_calls
        _follow_up(request, turn_state.content or None, mine, turn, turns.last_turn)
    if want_usage and usage:
        yield {"object": "chat.completion.chunk", "choices": [], "usage": usage, **identity}


async def stream_chat(model: ModelCall, body: Mapping[str, Any], session: ToolSession,
                      max_tool_calls: int) -> AsyncGenerator[dict[str, Any], None]:
    """The chunks the Chat Completions client gets: what ran is a chunk with no choices and `mcp_calls`."""
    identity: dict[str, Any] = {}
    events = stream_loop(model, body, session, max_tool_calls)
    try:
        async for event in events:
            if isinstance(event, dict):
                identity = identity or {k: event[k] for k in ("id", "created", "model") if k in event}
                yield event
            elif isinstance(event, CallsDone):
                yield {"object": "chat.completion.chunk", "choices": [],
                       "mcp_calls": [r.as_item() for r in event.records], **identity}
    finally:
        await events.aclose()


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

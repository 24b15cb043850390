"""POST /v1/responses executed by the gateway, on any backend.

Local engines (HTTP and gRPC) and Anthropic providers: the request and its history (chain or
conversation) become one Chat Completions model call (routers/common/model_call.py) whose answer is
turned into a Response object or event stream (output.py). OpenAI-compatible providers that speak
the Responses API get it themselves, with the history expanded here and `store: false` (the
gateway, not the provider, keeps state); their answer is relayed with its id and echoes patched.

Either way the result is stored (unless `store: false`), and `background: true` runs the work in a
task that outlives the request: the record goes queued -> in_progress -> completed | incomplete |
failed | cancelled, and the run's events can be followed while it works (runs.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from shepherd.context import AppContext
from shepherd.errors import GatewayError
from shepherd.mcp.chat_loop import run_loop, stream_loop
from shepherd.providers.kinds import provider_kind
from shepherd.request_keys import TENANT
from shepherd.responses.history import load_history, persist, stored_response
from shepherd.responses.output import EventStream, base_response, complete_from_chat, events_from_chat
from shepherd.responses.request import ResponseRequest, new_response_id
from shepherd.responses.runs import BackgroundRuns, Run
from shepherd.routers.common.model_call import ChatStream, call_model
from shepherd.storage.base import HistoryStorage, StorageError

if TYPE_CHECKING:
    from shepherd.responses.mcp import McpRun

log = logging.getLogger("shepherd.responses")
RESPONSES_PATH = "/v1/responses"
_PATCHED = ("previous_response_id", "store", "background", "instructions", "metadata", "conversation", "model",
            "tools", "text")


def error_object(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, GatewayError):
        return {"code": exc.code, "message": exc.message}
    if isinstance(exc, StorageError):
        return {"code": "storage_unavailable", "message": str(exc)}
    return {"code": "server_error", "message": f"The response failed: {exc.__class__.__name__}"}


class ModelStream(Protocol):
    """A started model stream: its events, and a way to stop it early."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    async def aclose(self) -> None: ...


class Work:
    """One response's production: its request, history and (once known) the Response object."""

    def __init__(self, context: AppContext, request: web.Request, parsed: ResponseRequest, store: HistoryStorage,
                 history: list[dict[str, Any]], response_id: str, mcp: McpRun | None = None) -> None:
        self.context = context
        self.store = store  # the request's tenant's view of the history
        self.request = request
        self.parsed = parsed
        self.history = history
        self.id = response_id
        self.mcp = mcp  # the gateway runs the request's MCP tools (so it runs the model call too)
        self.passthrough = mcp is None and _speaks_responses(context, parsed.model)
        self.response = base_response(parsed, response_id, "in_progress")
        # The sticky key of the chain this response starts or continues (a first response is its own root).
        self.lineage = parsed.lineage or response_id

    def prompt_body(self) -> dict[str, Any]:
        """A body whose text is the model's whole prompt (the chain's history expanded): what the
        status page and the traffic recorder read."""
        return self._upstream_body(False) if self.passthrough else self._chat_body(False)

    def token_counts(self) -> tuple[int, int, int] | None:
        """(input, output, cached) tokens of the response, summed over its model calls, once known."""
        usage = self.response.get("usage")
        if not isinstance(usage, dict):
            return None
        cached = (usage.get("input_tokens_details") or {}).get("cached_tokens")
        return (int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0), int(cached or 0))

    async def _model(self, chat_body: dict[str, Any]) -> dict[str, Any] | ChatStream:
        return await call_model(self.context, self.request, chat_body, lineage=self.lineage)

    def _chat_body(self, stream: bool) -> dict[str, Any]:
        if self.mcp is None:
            return self.parsed.chat_body(self.history, stream)
        return self.parsed.chat_body(self.history, stream, after=self.mcp.resumed, mcp_name=self.mcp.mcp_name)

    # -- one model call, whole ----------------------------------------------------------------

    async def whole(self) -> dict[str, Any]:
        if self.passthrough:
            answer = await call_model(self.context, self.request, self._upstream_body(False), RESPONSES_PATH,
                                      lineage=self.lineage)
            assert isinstance(answer, dict)
            self.response = self._patched(answer)
            return self.response
        if self.mcp is not None:
            result = await run_loop(self._model, self._chat_body(False), self.mcp.session, self.mcp.limit,
                                    self.mcp.spent)
            self.response = complete_from_chat(self.response, result.answer)
            self.response["output"] = [*self.mcp.output(result), *self.response["output"]]
            return self.response
        answer = await call_model(self.context, self.request, self._chat_body(False), lineage=self.lineage)
        assert isinstance(answer, dict)
        self.response = complete_from_chat(self.response, answer)
        return self.response

    # -- or streamed --------------------------------------------------------------------------

    async def open_stream(self) -> ModelStream:
        """Start the model's stream (errors before its first event are the request's HTTP error)."""
        if self.mcp is not None:
            return await Primed.start(stream_loop(self._model, self._chat_body(True), self.mcp.session,
                                                  self.mcp.limit, self.mcp.spent))
        if self.passthrough:
            stream = await call_model(self.context, self.request, self._upstream_body(True), RESPONSES_PATH,
                                      lineage=self.lineage)
        else:
            stream = await call_model(self.context, self.request, self._chat_body(True), lineage=self.lineage)
        if not isinstance(stream, ChatStream):
            raise GatewayError(502, "upstream_invalid_response", "The model answered a streamed request whole")
        return stream

    async def events(self, stream: ModelStream, sequence: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Every event of the response up to, not including, the terminal one (self.response is final after)."""
        if self.passthrough:
            async for event in self._relayed(stream, sequence):
                yield event
            return
        builder = self._builder = EventStream(self.response, sequence)
        for event in builder.start():
            yield event
        if self.mcp is not None:
            from shepherd.responses.mcp import mcp_events
            async for event in mcp_events(self.mcp, stream, builder):
                yield event
            for event in builder.finish():
                yield event
            return
        async for event in events_from_chat(stream, builder):
            yield event

    _builder: EventStream | None = None
    _sequence = 0

    @property
    def sequence(self) -> int:
        return self._builder.sequence if self._builder is not None else self._sequence

    def _next_sequence(self) -> int:
        if self._builder is not None:
            self._builder.sequence += 1
            return self._builder.sequence - 1
        self._sequence += 1
        return self._sequence - 1

    def terminal(self) -> dict[str, Any]:
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        return {"type": kind, "sequence_number": self._next_sequence(), "response": self.response}

    def failed(self, exc: BaseException) -> dict[str, Any]:
        self.response = {**self.response, "status": "failed", "error": error_object(exc), "completed_at": None}
        return {"type": "response.failed", "sequence_number": self._next_sequence(), "response": self.response}

    async def persist(self) -> None:
        if self.parsed.store:
            await persist(self.store, self.parsed, self.response)

    # -- OpenAI-compatible providers: their own Responses API -----------------------------------

    def _upstream_body(self, stream: bool) -> dict[str, Any]:
        body = {k: v for k, v in self.parsed.body.items()
                if k not in ("previous_response_id", "conversation", "background", "store", "stream")}
        body["input"] = [_upstream_item(item) for item in self.history + self.parsed.input_items
                         if item.get("type") != "reasoning"]
        body["store"] = False
        if stream:
            body["stream"] = True
        return body

    def _patched(self, upstream: dict[str, Any]) -> dict[str, Any]:
        patched = {**upstream, "id": self.id}
        for name in _PATCHED:
            if name in self.response:
                patched[name] = self.response[name]
        return patched

    async def _relayed(self, stream: ModelStream, sequence: int) -> AsyncIterator[dict[str, Any]]:
        started: Any = None  # the created event's response, until in_progress went out
        async for event in stream:
            if not isinstance(event.get("type"), str):
                continue
            kind = event["type"]
            if isinstance(event.get("response"), dict):
                event = {**event, "response": self._patched(event["response"])}
                if kind in ("response.completed", "response.incomplete", "response.failed"):
                    self.response = event["response"]
                    self._sequence = sequence
                    return  # the terminal event is ours (sent after the response is stored)
            if kind == "response.created":
                started = event.get("response")
            elif kind == "response.in_progress":
                started = None
            elif started is not None:  # a provider that skips in_progress: the client still gets OpenAI's grammar
                yield {"type": "response.in_progress", "sequence_number": sequence, "response": started}
                sequence += 1
                started = None
            yield {**event, "sequence_number": sequence}
            sequence += 1
            self._sequence = sequence
        raise GatewayError(502, "upstream_stream_incomplete", "The provider's stream ended before the response did")


class Primed:
    """A stream whose first event is already in hand: an error before it is the request's HTTP error."""

    def __init__(self, events: AsyncGenerator[Any, None], first: list[Any]) -> None:
        self._events = events
        self._first = first

    @classmethod
    async def start(cls, events: AsyncGenerator[Any, None]) -> Primed:
        try:
            first = [await anext(events)]
        except StopAsyncIteration:
            first = []
        except BaseException:
            await events.aclose()
            raise
        return cls(events, first)

    async def _all(self) -> AsyncIterator[Any]:
        for event in self._first:
            yield event
        async for event in self._events:
            yield event

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._all()

    async def aclose(self) -> None:
        await self._events.aclose()


def _upstream_item(item: dict[str, Any]) -> dict[str, Any]:
    """A replayed item as a provider accepts it in `input` (our ids and statuses stay here)."""
    return {k: v for k, v in item.items() if k not in ("id", "status")}


def _speaks_responses(context: AppContext, model: str) -> bool:
    """Every worker of the model is an OpenAI-compatible provider (they have /v1/responses)."""
    workers = context.registry.for_model(model)
    return bool(workers) and all(
        w.connection_mode == "external" and provider_kind(w.provider or "custom").api == "openai" for w in workers)


class ResponsesExecutor:
    def __init__(self, context: AppContext) -> None:
        self.context = context
        self.runs = BackgroundRuns(context.config.max_background_responses)

    async def prepare(self, request: web.Request, body: dict[str, Any]) -> Work:
        parsed = ResponseRequest.parse(body)
        if parsed.background and self.runs.limit == 0:
            parsed.background = False  # the mode is off: the work runs while the client waits
        store = self.context.history_for(request.get(TENANT))
        history = await load_history(store, parsed)
        mcp = None
        if parsed.mcp_tools or parsed.approvals:
            from shepherd.responses.mcp import prepare_mcp  # the mcp SDK: imported once a request needs it
            mcp = await prepare_mcp(self.context, request, parsed, history)
        return Work(self.context, request, parsed, store, history, new_response_id(), mcp)

    async def foreground(self, work: Work) -> dict[str, Any]:
        try:
            response = await work.whole()
        except GatewayError as exc:
            if work.parsed.store:
                work.failed(exc)
                await work.persist()  # the failed attempt is on record, like OpenAI's
            raise
        await work.persist()
        return response

    async def foreground_events(self, work: Work, stream: ModelStream) -> AsyncGenerator[dict[str, Any], None]:
        """The whole event stream of a foreground response; storing it before its terminal event."""
        try:
            async for event in work.events(stream):
                yield event
        except GatewayError as exc:
            yield work.failed(exc)
            await _quietly(work.persist())
            return
        finally:
            await stream.aclose()
        try:
            await work.persist()
        except StorageError as exc:  # the answer went out but is not on record: the client must know
            yield work.failed(exc)
            return
        yield work.terminal()

    async def persist_quietly(self, work: Work) -> None:
        await _quietly(work.persist())

    async def start_background(self, work: Work, finished: Callable[[int], None] | None = None) -> Run:
        """Start the run; `finished` is told its outcome as an HTTP status (200, the failure's, or 499
        for a cancelled run) when it ends."""
        run = self.runs.admit(work.id)
        queued = {**work.response, "status": "queued"}
        try:
            await work.store.store_response(stored_response(work.parsed, queued))
        except BaseException:
            self.runs.pop(work.id)
            raise
        run.append({"type": "response.created", "sequence_number": 0, "response": queued})
        run.append({"type": "response.queued", "sequence_number": 1, "response": queued})
        self.runs.start(run, lambda run: self._background(work, run, finished or (lambda status: None)))
        return run

    async def _background(self, work: Work, run: Run, finished: Callable[[int], None]) -> None:
        store = work.store
        status = 500
        try:
            await store.store_response(stored_response(work.parsed, work.response))  # in_progress
            stream = await work.open_stream()
            try:
                async for event in work.events(stream, sequence=1):
                    if event["type"] != "response.created":  # sent at admission
                        run.append(event)
            finally:
                await stream.aclose()
            await work.persist()
            run.append(work.terminal())
            status = 200
        except asyncio.CancelledError:
            status = 499
            work.response = {**work.response, "status": "cancelled", "completed_at": None}
            await _quietly(store.store_response(stored_response(work.parsed, work.response)))
            if not run.cancel_requested:
                raise
        except Exception as exc:  # noqa: BLE001 - every failure is the response's recorded outcome
            status = exc.status if isinstance(exc, GatewayError) else 500
            log.info("background response %s failed: %s", work.id, exc)
            run.append(work.failed(exc))
            await _quietly(store.store_response(stored_response(work.parsed, work.response)))
        finally:
            finished(status)


async def _quietly(operation: Any) -> None:
    """A store after a failure: if the store is down too, the log says so (the answer already went out)."""
    try:
        await operation
    except (StorageError, OSError) as exc:
        log.warning("could not store a response outcome: %s", exc)

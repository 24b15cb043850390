"""The Responses API routes: create (plain, streamed, background), retrieve (or follow), delete,
cancel, and list a response's input items. The work is the executor's (shepherd/responses)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from shepherd.api.admit import admit, leave
from shepherd.api.body import parse_json_object, read_body
from shepherd.api.conversations import page_query, storage_errors
from shepherd.api.keys import CONTEXT
from shepherd.api.outcome import Outcome, observed
from shepherd.errors import GatewayError
from shepherd.headers import ROUTED_WORKER_HEADER
from shepherd.request_keys import TENANT, USAGE, WANT_USAGE, WORKER
from shepherd.responses.executor import RESPONSES_PATH, ResponsesExecutor, Work
from shepherd.responses.history import stored_response
from shepherd.responses.output import replay_events
from shepherd.routers.common.sse import ClientGone, end_stream, event_frame, send, start_sse
from shepherd.storage.base import HistoryStorage, StoredResponse

EXECUTOR: web.AppKey[ResponsesExecutor] = web.AppKey("shepherd_responses", ResponsesExecutor)
DEFAULT_PAGE = 20
MAX_PAGE = 100


def _json(value: Any, request: web.Request | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json", headers=_routed(request))


def _routed(request: web.Request | None) -> dict[str, str]:
    """The worker that served the model call (rewritten to its id like every routed answer's)."""
    worker = request.get(WORKER) if request is not None else None
    return {ROUTED_WORKER_HEADER: worker} if worker else {}


def _not_found(response_id: str) -> GatewayError:
    return GatewayError(404, "response_not_found", f"Response with id '{response_id}' not found.")


def _history(request: web.Request) -> HistoryStorage:
    """The caller's view of the history: its tenant's records (and untagged ones) when tenancy is on."""
    return request.app[CONTEXT].history_for(request.get(TENANT))


async def _stored(request: web.Request) -> StoredResponse:
    response_id = request.match_info["response_id"]
    stored = await _history(request).get_response(response_id)
    if stored is None:
        raise _not_found(response_id)
    return stored


async def _sse(request: web.Request, events: AsyncIterator[dict[str, Any]]) -> web.StreamResponse:
    """Write `events` as a Responses event stream; a client that leaves stops only its own copy."""
    response = await start_sse(request, _routed(request))
    try:
        async for event in events:
            await send(response, event_frame(event["type"], event))
    except ClientGone:
        return response
    await end_stream(response)
    return response


@storage_errors
async def create_response(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    executor = request.app[EXECUTOR]
    body = parse_json_object(await read_body(request, context.config.max_payload_size))
    model = body.get("model")
    ticket = await admit(context, request, model if isinstance(model, str) else None)
    try:
        request[WANT_USAGE] = True
        with observed(context, request, RESPONSES_PATH, body, ticket) as outcome:
            work = await executor.prepare(request, body)
            outcome.body = work.prompt_body()
            if work.parsed.background:  # told when the run ends, with the run's outcome
                run = await executor.start_background(work, finished=lambda status: _tell(outcome, work, status))
                outcome.deferred = True
                if work.parsed.stream:
                    return await _sse(request, run.follow())
                return _json(run.events[0]["response"])
            response = await _foreground(request, executor, work)
            _tell(outcome, work, response.status, now=False)
            return response
    finally:
        leave(context, request, ticket)


def _tell(outcome: Outcome, work: Work, status: int, now: bool = True) -> None:
    counts = work.token_counts()
    if counts is not None:
        outcome.request[USAGE] = counts
    outcome.status = status
    if now:
        outcome.tell()


async def _foreground(request: web.Request, executor: ResponsesExecutor, work: Work) -> web.StreamResponse:
    if work.parsed.stream:
        if work.parsed.store:  # on record while it streams; and a store that is down is a 503 before any event
            await work.store.store_response(stored_response(work.parsed, work.response))
        try:
            stream = await work.open_stream()
        except GatewayError as exc:
            if work.parsed.store:
                work.failed(exc)
                await executor.persist_quietly(work)
            raise
        events = executor.foreground_events(work, stream)
        try:
            return await _sse(request, events)
        finally:
            await events.aclose()  # a client gone: the model call is closed, its upstream aborted
    return _json(await executor.foreground(work), request)


@storage_errors
async def get_response(request: web.Request) -> web.StreamResponse:
    stored = await _stored(request)
    if request.query.get("stream") not in ("true", "1"):
        return _json(stored.raw_response)
    try:
        after = int(request.query.get("starting_after", "-1"))
    except ValueError:
        raise GatewayError(400, "invalid_value", "'starting_after' must be an integer",
                           param="starting_after") from None
    run = request.app[EXECUTOR].runs.get(stored.id)
    if run is not None:
        return await _sse(request, run.follow(after))
    return await _sse(request, replay_events(stored.raw_response, after))


@storage_errors
async def delete_response(request: web.Request) -> web.Response:
    stored = await _stored(request)
    executor = request.app[EXECUTOR]
    run = executor.runs.get(stored.id)
    if run is not None:
        await executor.runs.cancel(run)
    if not await _history(request).delete_response(stored.id):
        raise _not_found(stored.id)
    return _json({"id": stored.id, "object": "response.deleted", "deleted": True})


@storage_errors
async def cancel_response(request: web.Request) -> web.Response:
    stored = await _stored(request)
    executor = request.app[EXECUTOR]
    history = _history(request)
    run = executor.runs.get(stored.id)
    if run is not None:
        await executor.runs.cancel(run)
        stored = await _stored(request)
    status = stored.raw_response.get("status")
    if status == "cancelled":
        return _json(stored.raw_response)
    if status in ("completed", "incomplete"):
        raise GatewayError(400, "response_already_completed", "Cannot cancel a completed response.")
    if status == "failed":
        raise GatewayError(400, "response_already_failed", "Cannot cancel a failed response.")
    if stored.raw_response.get("background") and status in ("queued", "in_progress"):
        # Its work is not running here (a restart dropped it): the record is all there is to cancel.
        stored.raw_response = {**stored.raw_response, "status": "cancelled"}
        await history.store_response(stored)
        return _json(stored.raw_response)
    raise GatewayError(400, "invalid_request", "Only responses created with 'background': true can be cancelled")


@storage_errors
async def list_input_items(request: web.Request) -> web.Response:
    stored = await _stored(request)
    limit, order, after = page_query(request)
    items = list(stored.input) if order == "asc" else list(reversed(stored.input))
    if after:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise GatewayError(400, "invalid_value", "'after' must be the id of an input item of this response",
                               param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return _json({"object": "list", "data": page, "first_id": page[0].get("id") if page else None,
                  "last_id": page[-1].get("id") if page else None, "has_more": len(items) > limit})


def add_response_routes(app: web.Application) -> None:
    app[EXECUTOR] = ResponsesExecutor(app[CONTEXT])

    async def stop_runs(app: web.Application) -> None:
        await app[EXECUTOR].runs.close()

    app.on_shutdown.append(stop_runs)
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{response_id}", get_response)
    app.router.add_delete("/v1/responses/{response_id}", delete_response)
    app.router.add_post("/v1/responses/{response_id}/cancel", cancel_response)
    app.router.add_get("/v1/responses/{response_id}/input_items", list_input_items)

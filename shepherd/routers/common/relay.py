"""Reading a worker's answer and relaying it to the client: whole, or event by event as it arrives.

Failures are classified here once for every path:
* before anything reached the client (no head, or a body that broke off, timed out or grew past the
  limit while being read whole): a RetryableFailure unless the attempt is the request's last;
* after the stream started: the client's API's error frame ends the stream (a non-SSE body is cut
  off instead, so it cannot pass for complete), and the attempt counts as the worker's failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeGuard

import orjson
from aiohttp import web
from multidict import CIMultiDict

from shepherd.errors import GatewayError, flavor_for_path
from shepherd.request_keys import USAGE, WANT_USAGE, peek
from shepherd.routers.common.attempt import Attempt
from shepherd.routers.common.execution import Execution
from shepherd.routers.common.retry import RetryableFailure
from shepherd.routers.common.sink import open_stream
from shepherd.routers.common.sse import end_stream, stream_error_frame, whole_events
from shepherd.transport.base import TransportResponse
from shepherd.transport.errors import UpstreamError, UpstreamTimeout

log = logging.getLogger("shepherd.router")
access_log = logging.getLogger("shepherd.access")

Transform = Callable[[bytes], bytes]


def failure(final: bool, status: int, code: str, message: str) -> Exception:
    """The error for a failure before the first byte: retryable unless this was the last attempt."""
    error = GatewayError(status, code, message)
    return error if final else RetryableFailure(error)


def no_answer(exc: UpstreamError, final: bool, who: str) -> Exception:
    """The worker gave no response head."""
    if isinstance(exc, UpstreamTimeout):
        return failure(final, 504, "call_upstream_timeout", f"{who} did not answer in time")
    return failure(final, 502, "call_upstream_connection_failed", f"Could not reach {who}: {exc}")


def response_of(attempt: Attempt) -> TransportResponse:
    assert attempt.response is not None, "the attempt has no response head yet"
    return attempt.response


async def read_answer(attempt: Attempt, limit: int, who: str, final: bool) -> bytes:
    """The worker's whole body, at most `limit` bytes. Nothing reached the client yet, so a body that
    breaks off, times out or is too large is tried on another worker where attempts remain."""
    upstream = response_of(attempt)
    too_large = ("upstream_response_too_large", f"The response of {who} exceeds the {limit}-byte limit")
    if upstream.content_length is not None and upstream.content_length > limit:
        raise failure(final, 502, *too_large)
    try:
        body = await upstream.read(limit)
    except UpstreamTimeout:
        attempt.failed()
        raise failure(final, 504, "call_upstream_timeout", f"{who} timed out mid-response") from None
    except UpstreamError as exc:
        attempt.failed()
        raise failure(final, 502, "upstream_response_incomplete", f"{who} failed mid-response: {exc}") from None
    except ValueError:
        raise failure(final, 502, *too_large) from None
    attempt.outcome.complete = True
    attempt.progressed()
    return body


async def relay_whole(execution: Execution[Any], attempt: Attempt, headers: CIMultiDict[str], final: bool,
                      transform: Transform | None = None) -> web.Response:
    """Read the worker's whole answer and answer the client with it."""
    payload = await read_answer(attempt, execution.lifecycle.max_response_bytes, who(attempt), final)
    if transform is not None:
        payload = transform(payload)
    if b'"usage"' in payload[-1024:] and _wants_usage(execution.request):
        execution.request[USAGE] = _usage(payload)
    return web.Response(status=response_of(attempt).status, body=payload, headers=headers)


async def relay_stream(execution: Execution[Any], attempt: Attempt, headers: CIMultiDict[str],
                       transform: Transform | None = None) -> web.StreamResponse:
    """Relay the worker's body chunk by chunk as it arrives. With `transform`, whole SSE events are
    rewritten one by one (so a chunk that ends mid-event waits for the rest of that event)."""
    request, upstream = execution.request, response_of(attempt)
    # A body whose first bytes came with the head (a fast worker's whole short answer often does)
    # is relayed at once: our head rides along with it. A transform may hold a partial event back.
    response = await open_stream(request, upstream.status, headers,
                                 first_chunk_ready=transform is None and upstream.body_ready)
    is_sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
    chunk = b"\n\n"
    metrics = execution.lifecycle.metrics
    model = metrics.model_label(execution.model) if metrics is not None else ""
    # The per-chunk series, looked up once: this loop runs for every event of every stream.
    inter_chunk = metrics.inter_chunk(request.path, model).observe if metrics is not None else None
    progressed = attempt.progressed
    write = response.write
    dispatched = time.perf_counter()
    previous = 0.0
    chunks = upstream.iter_chunks() if transform is None else whole_events(upstream.iter_chunks(), transform)
    # The worker's last chunk, when it came with the end of its body, goes out with the end of ours:
    # one write instead of two (aiohttp sends a last chunk and the chunked terminator together).
    last_ends = (response.write_eof if transform is None else None)
    try:
        async for chunk in chunks:
            progressed()
            if previous:
                now = time.perf_counter()
                if inter_chunk is not None:
                    inter_chunk(now - previous)
            else:  # the first chunk
                execution.first_byte()
                now = time.perf_counter()
                if metrics is not None:
                    metrics.ttfb(request.path, model, attempt.worker.url).observe(now - dispatched)
            previous = now
            if last_ends is not None and upstream.body_done:
                await last_ends(chunk)  # the loop still runs to the iterator's end, which frees the connection
            else:
                await write(chunk)
        attempt.outcome.complete = True
        if b'"usage"' in chunk and _wants_usage(request):
            request[USAGE] = _stream_usage(chunk)
    except ConnectionError as exc:
        if request.transport is None or request.transport.is_closing():
            log.info("client of request %s went away mid-stream; closing the upstream", execution.request_id)
            attempt.client_left()
            return response
        await _broke_off(execution, attempt, response, exc, is_sse, chunk.endswith(b"\n\n"))
    except UpstreamError as exc:
        await _broke_off(execution, attempt, response, exc, is_sse, chunk.endswith(b"\n\n"))
    else:
        await end_stream(response)
    return response


async def _broke_off(execution: Execution[Any], attempt: Attempt, response: web.StreamResponse,
                     exc: BaseException, is_sse: bool, at_event_boundary: bool) -> None:
    """The worker failed after the stream started: tell the client cleanly, never hang."""
    attempt.failed()
    reason = "timed out" if isinstance(exc, UpstreamTimeout) else f"failed: {exc.__class__.__name__}"
    log.warning("stream of request %s from %s %s", execution.request_id, attempt.worker.url, reason)
    request = execution.request
    if not is_sse:
        if request.transport is not None:
            request.transport.close()  # a truncated non-SSE body must not look complete
        return
    frame = stream_error_frame(flavor_for_path(request.path), f"{who(attempt).capitalize()} {reason} mid-stream")
    if not at_event_boundary:  # end the worker's half-written event before ours
        frame = b"\n\n" + frame
    await end_stream(response, frame)


def _wants_usage(request: web.Request) -> bool:
    """Token counts are parsed only for someone who reads them: the access log or the traffic recorder."""
    return peek(request, WANT_USAGE) is not None or access_log.isEnabledFor(logging.INFO)


def who(attempt: Attempt) -> str:
    """How messages name the attempt's worker (providers by kind: their URL may carry an account)."""
    worker = attempt.worker
    if worker.connection_mode == "external":
        return f"the {worker.provider or 'external'} provider"
    return f"worker {worker.url}"


def _usage(payload: bytes) -> tuple[int, int, int] | None:
    """(prompt, completion, cached) tokens from an OpenAI or Anthropic JSON answer (access log, recorder)."""
    try:
        usage = orjson.loads(payload).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return _token_pair(usage)


def _stream_usage(last_chunk: bytes) -> tuple[int, int, int] | None:
    """Usage from the final usage event of a stream, if the last chunk carries one. Lines are read
    from the end (the usage event is near it) without splitting the whole chunk, which can hold
    every event of an answer that arrived at once."""
    end = len(last_chunk)
    while end > 0:
        start = last_chunk.rfind(b"\n", 0, end) + 1
        if last_chunk.startswith(b"data: {", start) and last_chunk.find(b'"usage"', start, end) >= 0:
            try:
                return _token_pair(orjson.loads(last_chunk[start + 6:end]).get("usage"))
            except (orjson.JSONDecodeError, AttributeError):
                return None
        end = start - 1
    return None


def _token_pair(usage: Any) -> tuple[int, int, int] | None:
    """(prompt, completion, cached prompt) tokens; cached is 0 when the worker does not say. Counts
    that are not whole numbers of at least 0 (a JSON `true` included) are no counts: the token
    counters and the tenants' token limits take them as they are."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    if not (_is_count(prompt) and _is_count(completion)):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else usage.get("cache_read_input_tokens")
    return prompt, completion, cached if _is_count(cached) else 0


def _is_count(value: Any) -> TypeGuard[int]:
    return type(value) is int and value >= 0

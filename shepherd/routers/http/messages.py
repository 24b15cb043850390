"""Anthropic Messages on HTTP engines that have no `/v1/messages` of their own.

SMG passes `/v1/messages` through to the engine, which serves it where the engine has it (vLLM,
recent SGLang). The gateway does the same first, and learns from the answer: an engine that says
"no such route" (404 or 405 with a framework's not-found body, not a JSON error about the request
such as an unknown model) is marked on its Worker (`missing_apis`, shown by `GET /workers` as
`translated_apis`), and that request and every later one for it are translated to Chat Completions
and back, streamed events included (the same translation serves Messages clients of OpenAI-compatible
providers). A worker registered with the label `messages_api=false` is translated from the start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from shepherd.errors import GatewayError, error_response
from shepherd.providers.error_body import parse_provider_error
from shepherd.routers.common.execution import Execution
from shepherd.routers.common.headers import client_response_headers, routed_headers, upstream_request_headers
from shepherd.routers.common.relay import no_answer, read_answer, who
from shepherd.routers.common.retry import error_answer
from shepherd.routers.external.plans import CHAT_PATH, COUNT_TOKENS_PATH, MESSAGES_PATH, MessagesViaChat
from shepherd.routers.external.relay import translate_stream, translate_whole
from shepherd.routers.external.translate.common import TranslationError
from shepherd.transport.base import Transport
from shepherd.transport.errors import UpstreamError
from shepherd.workers.worker import Worker

log = logging.getLogger("shepherd.router")

ANTHROPIC_PATHS = frozenset({MESSAGES_PATH, COUNT_TOKENS_PATH})
_NOT_FOUND_BODIES = (b"404: Not Found", b"405: Method Not Allowed", b"Not Found", b"Method Not Allowed")


def lacks(worker: Worker, path: str) -> bool:
    """Whether the engine is known to have no route for `path`."""
    if path in worker.missing_apis:
        return True
    return path in ANTHROPIC_PATHS and worker.labels.get("messages_api", "").lower() == "false"


def route_missing(status: int, body: bytes) -> bool:
    """An answer that means "no such route" (the web framework's), not an error about the request."""
    if status not in (404, 405):
        return False
    text = body.strip()
    if not text or text in _NOT_FOUND_BODIES:
        return True
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return b"not found" in text.lower() or b"method not allowed" in text.lower()
    # FastAPI (SGLang, vLLM) answers an unknown route with {"detail": "Not Found"}; an unknown model
    # or a bad request comes as an error object with a message, which is the client's to read.
    return isinstance(document, dict) and document.get("detail") in ("Not Found", "Method Not Allowed")


def learn_missing(worker: Worker, path: str) -> None:
    if path not in worker.missing_apis:
        worker.missing_apis.add(path)
        log.info("worker %s has no %s; the gateway translates it to Chat Completions from now on", worker.url, path)


def count_tokens_missing(worker: Worker) -> GatewayError:
    return GatewayError(501, "count_tokens_not_supported",
                        f"Worker {worker.url} has no {COUNT_TOKENS_PATH}, and tokens of HTTP engines' models are "
                        "counted by the engine; serve the model from an engine that has it, or from gRPC workers "
                        "(counted by the gateway's tokenizer)")


async def messages_via_chat(transport: Transport, gateway_keys: Any, execution: Execution[Any], worker: Worker,
                            body: Mapping[str, Any], final: bool) -> web.StreamResponse:
    """One attempt of a Messages request on an engine without Messages: its chat API, translated."""
    model = body.get("model")
    plan = MessagesViaChat(body, model if isinstance(model, str) else "", engine=True)
    try:
        chat = orjson.loads(plan.request(b"", body, model if isinstance(model, str) else ""))
    except TranslationError as exc:
        raise GatewayError(400, "invalid_request_error", exc.message, param=exc.param) from None
    if not isinstance(model, str):
        chat.pop("model", None)
    if worker.dp_rank is not None:
        chat["data_parallel_rank"] = worker.dp_rank
    payload = orjson.dumps(chat)
    request = execution.request
    headers = upstream_request_headers(request.headers, execution.request_id, worker.api_key, gateway_keys,
                                       has_body=True)
    stream = bool(body.get("stream"))
    attempt = execution.attempt(worker)
    try:
        try:
            upstream = await attempt.send(transport, "POST", CHAT_PATH, headers, payload, execution.remaining())
        except UpstreamError as exc:
            raise no_answer(exc, final, who(attempt)) from None
        out = routed_headers(client_response_headers(upstream.headers), execution.request_id, worker.url)
        if upstream.status >= 400:
            answer = await read_answer(attempt, execution.lifecycle.max_response_bytes, who(attempt), final)
            error = parse_provider_error(answer)
            response = error_response(upstream.status, error.code or error.kind or "upstream_error",
                                      f"{who(attempt).capitalize()} answered {upstream.status}: {error.message}",
                                      flavor="anthropic")
            routed_headers(response.headers, execution.request_id, worker.url)  # type: ignore[arg-type]
            return error_answer(response, upstream.status, final, who(attempt))
        if stream:
            return await translate_stream(execution, attempt, plan.stream(), out)
        return await translate_whole(execution, attempt, plan, out, final)
    except asyncio.CancelledError:
        attempt.client_left()
        raise
    finally:
        attempt.close()

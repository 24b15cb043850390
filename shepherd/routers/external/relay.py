"""A provider's successful answer in another API than the client's: translated whole or event by event.

Answers in the client's own API are relayed by the common relay (routers/common/relay.py).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from shepherd.errors import GatewayError
from shepherd.routers.common.attempt import Attempt
from shepherd.routers.common.execution import Execution
from shepherd.routers.common.relay import read_answer, response_of, who
from shepherd.routers.common.sink import open_stream
from shepherd.routers.common.sse import SSEDecoder, end_stream
from shepherd.routers.external.plans import StreamTranslator, Translation
from shepherd.transport.errors import UpstreamError, UpstreamTimeout

log = logging.getLogger("shepherd.router.external")


async def translate_whole(execution: Execution[Any], attempt: Attempt, plan: Translation,
                          headers: CIMultiDict[str], final: bool) -> web.Response:
    payload = await read_answer(attempt, execution.lifecycle.max_response_bytes, who(attempt), final)
    try:
        body = plan.response(payload)
    except ValueError as exc:
        raise GatewayError(502, "upstream_invalid_response",
                           f"The answer of {who(attempt)} could not be read: {exc}") from None
    headers["Content-Type"] = "application/json"
    return web.Response(status=response_of(attempt).status, body=body, headers=headers)


async def translate_stream(execution: Execution[Any], attempt: Attempt, translator: StreamTranslator,
                           headers: CIMultiDict[str]) -> web.StreamResponse:
    upstream = response_of(attempt)
    if not upstream.headers.get("content-type", "").startswith("text/event-stream"):
        raise GatewayError(502, "upstream_invalid_response",
                           f"{who(attempt).capitalize()} answered a streaming request without an event stream")
    headers["Content-Type"] = "text/event-stream"
    headers["Cache-Control"] = "no-cache"
    response = await open_stream(execution.request, 200, headers)
    decoder = SSEDecoder()
    try:
        async for chunk in upstream.iter_chunks():
            out = b"".join(translator.feed(event) for event in decoder.feed(chunk))
            if out:
                execution.first_byte()
                await response.write(out)
            if translator.done:
                break
        else:
            out = b"".join(translator.feed(event) for event in decoder.finish()) + translator.finish()
            if out:
                await response.write(out)
    except ConnectionError:
        log.info("client of request %s went away mid-stream; closing the provider's stream", execution.request_id)
        attempt.client_left()
        return response
    except UpstreamError as exc:
        attempt.failed()
        reason = "timed out" if isinstance(exc, UpstreamTimeout) else "failed"
        log.warning("stream from %s %s: %s", who(attempt), reason, exc.__class__.__name__)
        await end_stream(response, translator.fail(f"{who(attempt).capitalize()} {reason} mid-stream"))
        return response
    await end_stream(response)
    return response

"""Anthropic Messages for a model whose workers speak only Chat Completions (gRPC engines).

`count_tokens` is answered by the gateway's tokenizer in the same way (the templated prompt's tokens).
The Messages request becomes a Chat Completions request (the same translation the external router
uses for OpenAI-compatible providers), goes through the normal router as a model call (selection,
retries, breakers, the gRPC pipeline's template, tokenizer and parsers), and the answer comes back
in Anthropic's shapes: a message, or its event stream (message_start, content blocks for text,
thinking and tool_use with input_json_delta, message_delta with the stop reason and usage,
message_stop; an `error` event if the model fails mid-answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from shepherd.errors import GatewayError
from shepherd.headers import REQUEST_ID_HEADER, ROUTED_WORKER_HEADER
from shepherd.request_keys import REQUEST_ID, WORKER
from shepherd.routers.base import TokenCounter
from shepherd.routers.common.model_call import Routes, call_model
from shepherd.routers.common.sse import SSEEvent, end_stream, send, start_sse
from shepherd.routers.external.translate.anthropic_to_openai import messages_request_to_chat
from shepherd.routers.external.translate.common import TranslationError
from shepherd.routers.external.translate.openai_to_anthropic import chat_completion_to_message
from shepherd.routers.external.translate.stream_openai_to_anthropic import ChatStreamToMessages

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


class _Routing:
    """The router manager, as the model call wants it."""

    def __init__(self, routes: Routes) -> None:
        self.router = routes


def chat_body_for(body: Mapping[str, Any], *, counting: bool = False) -> dict[str, Any]:
    """The Chat Completions request a Messages request stands for (400 if it cannot be translated).
    `counting`: for count_tokens, which has no max_tokens."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "invalid_request_error", "'model' is required", param="model")
    max_tokens = body.get("max_tokens")
    if not counting and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise GatewayError(400, "invalid_request_error", "'max_tokens' is required and must be a positive integer",
                           param="max_tokens")
    try:
        chat = messages_request_to_chat(body, model)
    except TranslationError as exc:
        raise GatewayError(400, "invalid_request_error", exc.message, param=exc.param) from None
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}  # message_delta carries the usage
    return chat


def _stop_sequences(body: Mapping[str, Any]) -> tuple[str, ...]:
    stops = body.get("stop_sequences")
    return tuple(s for s in stops if isinstance(s, str)) if isinstance(stops, list) else ()


async def messages_via_chat(routes: Routes, request: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
    chat = chat_body_for(body)
    model, stops = str(body["model"]), _stop_sequences(body)
    answer = await call_model(_Routing(routes), request, chat)
    headers = {REQUEST_ID_HEADER: str(request.get(REQUEST_ID, ""))}
    if WORKER in request:
        headers[ROUTED_WORKER_HEADER] = request[WORKER]
    if isinstance(answer, dict):
        message = chat_completion_to_message(answer, stop_sequences=stops)
        message["model"] = model  # the model the client asked for, not an engine's internal name
        return web.Response(body=orjson.dumps(message), content_type="application/json", headers=headers)
    translator = ChatStreamToMessages(model=model, stop_sequences=stops)
    response = await start_sse(request, headers)
    try:
        async for chunk in answer:
            await send(response, translator.feed(SSEEvent(None, orjson.dumps(chunk).decode())))
        if not translator.done:
            await send(response, translator.feed(SSEEvent(None, "[DONE]")))
    except GatewayError as exc:  # the model failed mid-answer: Anthropic's error event ends the stream
        await send(response, translator.fail(exc.message))
    finally:
        await answer.aclose()
    await end_stream(response)
    return response


async def count_tokens_via_chat(router: TokenCounter, body: Mapping[str, Any]) -> web.Response:
    """Anthropic's count_tokens, counted by the gateway: the prompt the chat template renders for the
    translated request, tools and system prompt included, in the model's own tokens."""
    return web.json_response({"input_tokens": await router.count_prompt_tokens(chat_body_for(body, counting=True))})

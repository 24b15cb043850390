"""How one request crosses to one backend: as it is, or translated between the two APIs.

A plan builds the upstream body and turns the upstream's answer (whole or streamed) into the
client's API. Plans hold no connection state, so each one is a pure, socket-free unit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from shepherd.providers.kinds import ProviderKind
from shepherd.routers.common.sse import SSEEvent
from shepherd.routers.external.translate.anthropic_to_openai import (
    message_to_chat_completion,
    messages_request_to_chat,
)
from shepherd.routers.external.translate.common import TranslationError
from shepherd.routers.external.translate.openai_to_anthropic import (
    chat_completion_to_message,
    chat_request_to_messages,
)
from shepherd.routers.external.translate.stream_anthropic_to_openai import MessagesStreamToChat
from shepherd.routers.external.translate.stream_openai_to_anthropic import ChatStreamToMessages

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
CHAT_PATH = "/v1/chat/completions"


class StreamTranslator(Protocol):
    @property
    def done(self) -> bool: ...

    def feed(self, event: SSEEvent) -> bytes: ...

    def finish(self) -> bytes: ...

    def fail(self, message: str, kind: str = "api_error") -> bytes: ...


class Plan(Protocol):
    backend_path: str  # the gateway-style path on the backend, e.g. /v1/chat/completions

    def request(self, raw: bytes, body: Mapping[str, Any], model: str) -> bytes: ...


class Translation(Plan, Protocol):
    """A plan whose answers must be rewritten into the client's API."""

    def response(self, payload: bytes) -> bytes: ...

    def stream(self) -> StreamTranslator: ...


def client_api_for(path: str) -> str:
    return "anthropic" if path.startswith(MESSAGES_PATH) else "openai"


class Passthrough:
    """The backend speaks the client's API: the client's bytes go as they are, and so do the answers."""

    def __init__(self, path: str) -> None:
        self.backend_path = path

    def request(self, raw: bytes, body: Mapping[str, Any], model: str) -> bytes:
        if body.get("model") == model:
            return raw
        return orjson.dumps({**body, "model": model})  # an alias: the provider wants its listed id


class MessagesViaChat:
    """An Anthropic Messages client served by an OpenAI-compatible backend."""

    backend_path = CHAT_PATH

    def __init__(self, body: Mapping[str, Any], model: str, *, max_tokens_field: str = "max_tokens",
                 engine: bool = False) -> None:
        self._max_tokens_field = max_tokens_field
        self._engine = engine  # an inference engine's chat API (top_k, thinking) rather than a provider's
        stops = body.get("stop_sequences")
        self._stop_sequences = tuple(s for s in stops if isinstance(s, str)) if isinstance(stops, list) else ()
        self._model = model

    def request(self, raw: bytes, body: Mapping[str, Any], model: str) -> bytes:
        return orjson.dumps(messages_request_to_chat(body, model, max_tokens_field=self._max_tokens_field,
                                                     engine=self._engine))

    def response(self, payload: bytes) -> bytes:
        return orjson.dumps(chat_completion_to_message(_object(payload), stop_sequences=self._stop_sequences))

    def stream(self) -> StreamTranslator:
        return ChatStreamToMessages(model=self._model, stop_sequences=self._stop_sequences)


class ChatViaMessages:
    """An OpenAI Chat Completions client served by an Anthropic backend."""

    backend_path = MESSAGES_PATH

    def __init__(self, body: Mapping[str, Any], model: str) -> None:
        options = body.get("stream_options")
        self._include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        self._model = model

    def request(self, raw: bytes, body: Mapping[str, Any], model: str) -> bytes:
        return orjson.dumps(chat_request_to_messages(body, model))

    def response(self, payload: bytes) -> bytes:
        return orjson.dumps(message_to_chat_completion(_object(payload), created=int(time.time())))

    def stream(self) -> StreamTranslator:
        return MessagesStreamToChat(model=self._model, include_usage=self._include_usage)


def plan_for(path: str, kind: ProviderKind, body: Mapping[str, Any], model: str) -> Passthrough | Translation:
    """The plan for a request on `path` to a backend of `kind`; TranslationError if there is none."""
    client_api = client_api_for(path)
    if client_api == kind.api:
        return Passthrough(path)
    if path == MESSAGES_PATH:
        return MessagesViaChat(body, model, max_tokens_field=kind.max_tokens_field)
    if path == CHAT_PATH:
        return ChatViaMessages(body, model)
    if path == COUNT_TOKENS_PATH:
        raise TranslationError(f"`{path}` is not available for model `{model}`: its provider ({kind.name}) has no "
                               "token-counting API")
    raise TranslationError(f"`{path}` is not available for model `{model}`: its provider ({kind.name}) speaks the "
                           "Anthropic Messages API; use /v1/messages or /v1/chat/completions")


def _object(payload: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ValueError("the backend's answer is not JSON") from None
    if not isinstance(document, dict):
        raise ValueError("the backend's answer is not a JSON object")
    return document

"""Tokenizer routes: `/v1/tokenize` and `/v1/detokenize` with the gateway's own tokenizers, and the
admin registry `/v1/tokenizers` to add, inspect (cache counters included) and remove them.

A model without a gateway tokenizer is passed to its workers (an HTTP engine serves these routes
itself); with neither, the answer is 404.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from shepherd.api.body import parse_json_object, read_body
from shepherd.api.keys import CONTEXT
from shepherd.errors import GatewayError
from shepherd.routers.grpc.params import flag, invalid, token_ids
from shepherd.tokenizer.chat_template import ChatTemplateError
from shepherd.tokenizer.files import TokenizerLoadError
from shepherd.tokenizer.registry import TokenizerEntry

_ADMIN_BODY_LIMIT = 1024 * 1024


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _max_model_len(request: web.Request, model: str) -> int | None:
    for worker in request.app[CONTEXT].registry.for_model(model):
        for card in worker.model_cards:
            if card.get("id") == model and isinstance(card.get("max_model_len"), int):
                return int(card["max_model_len"])
    return None


async def _body_and_entry(request: web.Request) -> tuple[bytes, dict[str, Any], TokenizerEntry | None]:
    context = request.app[CONTEXT]
    raw = await read_body(request, context.config.max_payload_size)
    body = parse_json_object(raw)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("'model' must be a string", "model")
    return raw, body, context.grpc.tokenizers.get(model)


async def _not_ours(request: web.Request, raw: bytes, body: dict[str, Any]) -> web.StreamResponse:
    context = request.app[CONTEXT]
    model = body.get("model")
    if context.registry.for_model(model):
        response = await context.router.route(request, request.path, raw, body)
        if response.status >= 400 and isinstance(response, web.Response) and not _openai_error(response.body):
            # The engine does not serve the route (its own 404 text, FastAPI's {"detail": ...}): say so our way.
            raise GatewayError(404 if response.status in (404, 405) else 502, "tokenizer_not_found",
                               f"No tokenizer is registered for model `{model}` in the gateway, and its workers "
                               f"do not serve {request.path} (they answered {response.status})", param="model")
        return response
    raise GatewayError(404, "tokenizer_not_found", f"No tokenizer is registered for model `{model}`", param="model")


def _openai_error(body: Any) -> bool:
    if not isinstance(body, bytes):
        return False
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)


async def tokenize(request: web.Request) -> web.StreamResponse:
    raw, body, entry = await _body_and_entry(request)
    if entry is None:
        return await _not_ours(request, raw, body)
    model = body.get("model") or entry.model
    messages = body.get("messages")
    prompt = body.get("prompt", body.get("text"))
    if messages is not None:
        template = entry.tokenizer.chat_template
        if template is None:
            raise GatewayError(400, "chat_template_missing", f"The tokenizer of `{model}` has no chat template")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise invalid("'messages' must be a list of message objects", "messages")
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise invalid("'chat_template_kwargs' must be an object", "chat_template_kwargs")
        try:
            prompt = template.render(messages, tools=body.get("tools"), kwargs=kwargs,
                                     add_generation_prompt=flag(body, "add_generation_prompt", True))
        except ChatTemplateError as exc:
            raise invalid(str(exc), "messages") from None
        add_special = flag(body, "add_special_tokens", False)
    else:
        add_special = flag(body, "add_special_tokens", True)
    if isinstance(prompt, str):
        prompts, batched = [prompt], False
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts, batched = prompt, True
    else:
        raise invalid("give 'prompt' (a string or a list of strings) or 'messages'", "prompt")
    ids = [await entry.encode_async(p, add_special) for p in prompts]
    answer: dict[str, Any] = {"model": model, "tokens": ids if batched else ids[0],
                              "count": [len(i) for i in ids] if batched else len(ids[0]),
                              "max_model_len": _max_model_len(request, model)}
    if flag(body, "return_token_strs", False):
        strings = [[entry.tokenizer.id_to_token(t) for t in seq] for seq in ids]
        answer["token_strs"] = strings if batched else strings[0]
    return _json(answer)


async def detokenize(request: web.Request) -> web.StreamResponse:
    raw, body, entry = await _body_and_entry(request)
    if entry is None:
        return await _not_ours(request, raw, body)
    tokens = body.get("tokens")
    skip = flag(body, "skip_special_tokens", True)
    if isinstance(tokens, list) and tokens and all(isinstance(t, list) for t in tokens):
        texts = [entry.tokenizer.decode(token_ids(t, "tokens"), skip) for t in tokens]
        return _json({"model": body.get("model") or entry.model, "text": texts})
    if tokens is None:
        raise invalid("'tokens' is required", "tokens")
    ids = token_ids(tokens, "tokens")
    if any(t >= entry.tokenizer.vocab_size for t in ids):
        raise invalid(f"token ids must be below the vocabulary size {entry.tokenizer.vocab_size}", "tokens")
    return _json({"model": body.get("model") or entry.model, "text": entry.tokenizer.decode(ids, skip)})


# -- admin: the tokenizer registry --------------------------------------------------------------

async def add_tokenizer(request: web.Request) -> web.Response:
    body = parse_json_object(await read_body(request, _ADMIN_BODY_LIMIT))
    model = body.get("model", body.get("name"))
    source = body.get("source", body.get("path"))
    template = body.get("chat_template")
    if not isinstance(model, str) or not model:
        raise invalid("'model' (the model id the tokenizer serves) is required", "model")
    if not isinstance(source, str) or not source:
        raise invalid("'source' (a local tokenizer directory or tokenizer.json) is required", "source")
    if template is not None and not isinstance(template, str):
        raise invalid("'chat_template' must be a path to a template file", "chat_template")
    registry = request.app[CONTEXT].grpc.tokenizers
    replaced = model in registry
    try:
        entry = await registry.load(model, source, template or request.app[CONTEXT].config.chat_template,
                                    origin="api")
    except TokenizerLoadError as exc:
        raise GatewayError(400, "tokenizer_load_failed", str(exc), param="source") from None
    return _json(entry.info(), status=200 if replaced else 201)


async def list_tokenizers(request: web.Request) -> web.Response:
    entries = request.app[CONTEXT].grpc.tokenizers.entries()
    return _json({"tokenizers": [entry.info() for entry in entries]})


def _entry_or_404(request: web.Request) -> TokenizerEntry:
    model = request.match_info["model"]
    entry = request.app[CONTEXT].grpc.tokenizers.get(model)
    if entry is None:
        raise GatewayError(404, "tokenizer_not_found", f"No tokenizer is registered for model `{model}`")
    return entry


async def get_tokenizer(request: web.Request) -> web.Response:
    return _json(_entry_or_404(request).info())


async def remove_tokenizer(request: web.Request) -> web.Response:
    entry = _entry_or_404(request)
    context = request.app[CONTEXT]
    if any(w.connection_mode == "grpc" for w in context.registry.for_model(entry.model)):
        raise GatewayError(409, "tokenizer_in_use",
                           f"gRPC workers serve `{entry.model}`; remove them before its tokenizer")
    context.grpc.tokenizers.remove(entry.model)
    return _json({"status": "removed", "model": entry.model})


def add_tokenizer_routes(app: web.Application) -> None:
    for path in ("/v1/tokenize", "/tokenize"):
        app.router.add_post(path, tokenize)
    for path in ("/v1/detokenize", "/detokenize"):
        app.router.add_post(path, detokenize)
    app.router.add_post("/v1/tokenizers", add_tokenizer)
    app.router.add_get("/v1/tokenizers", list_tokenizers)
    app.router.add_get("/v1/tokenizers/{model:.+}", get_tokenizer)
    app.router.add_delete("/v1/tokenizers/{model:.+}", remove_tokenizer)

"""Response bodies and SSE frames in the exact shapes real engines use, one class per API."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from shepherd.sim.generation import Generation

DONE = b"data: [DONE]\n\n"


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_event(event: str, payload: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


@dataclass
class Context:
    request_id: str
    model: str
    body: dict[str, Any]
    batched: bool = False  # a batched /generate answers with a list
    prompt_logprobs: bool = True  # a PD decode worker has no prompt logprobs (the prefill computed them)
    created: int = field(default_factory=lambda: int(time.time()))
    sequence_number: int = 0  # Responses API stream events are numbered

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))


def openai_usage(gens: Sequence[Generation]) -> dict[str, Any]:
    prompt = gens[0].prompt_tokens if gens else 0
    completion = sum(g.completion_tokens for g in gens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": gens[0].cached_tokens if gens else 0}}


def _logprob(token_id: int) -> float:
    """A deterministic, plausible log-probability for a token."""
    return -round((token_id % 997) / 250.0, 4)


class Format:
    """Defaults for APIs whose stream is `data:` chunks ending with `[DONE]`."""

    # Whether the stream's opening frames go out as soon as the request is accepted, before the
    # engine admits it. Chat's role delta and Anthropic's message_start come with the first token
    # (vLLM's and SGLang's order); a Responses stream announces `response.created` at once.
    opens_at_once = False

    def response(self, gens: Sequence[Generation], ctx: Context) -> Any:
        raise NotImplementedError

    def stream_start(self, gens: Sequence[Generation], ctx: Context) -> bytes:
        return b""

    def stream_token(self, index: int, gen: Generation, token: int, ctx: Context) -> bytes:
        raise NotImplementedError

    def stream_finish(self, index: int, gen: Generation, ctx: Context) -> bytes:
        return b""

    def stream_end(self, gens: Sequence[Generation], ctx: Context) -> bytes:
        return DONE


def _top_logprobs(ctx: Context) -> int | None:
    """None without `logprobs: true`; else how many alternatives each token lists (0-20)."""
    if ctx.body.get("logprobs") is not True:
        return None
    top = ctx.body.get("top_logprobs")
    return max(0, min(int(top), 20)) if isinstance(top, int) else 0


def _token_logprob(piece: str, token_id: int, top: int) -> dict[str, Any]:
    logprob = _logprob(token_id)
    alternatives = [{"token": piece, "logprob": logprob, "bytes": list(piece.encode())}]
    alternatives += [{"token": f"{piece}{i}", "logprob": round(logprob - i * 0.75, 4),
                      "bytes": list(f"{piece}{i}".encode())} for i in range(1, top)]
    return {"token": piece, "logprob": logprob, "bytes": list(piece.encode()), "top_logprobs": alternatives[:top]}


def _chat_logprobs(gen: Generation, tokens: range, ctx: Context) -> dict[str, Any] | None:
    top = _top_logprobs(ctx)
    if top is None:
        return None
    return {"content": [_token_logprob(gen.pieces[t], gen.token_ids[t], top) for t in tokens], "refusal": None}


class ChatFormat(Format):
    def response(self, gens: Sequence[Generation], ctx: Context) -> Any:
        return {
            "id": ctx.request_id, "object": "chat.completion", "created": ctx.created, "model": ctx.model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": g.text, "reasoning_content": None,
                                                 "tool_calls": None},
                         "logprobs": _chat_logprobs(g, range(len(g.pieces)), ctx),
                         "finish_reason": g.finish_reason, "matched_stop": None}
                        for i, g in enumerate(gens)],
            "usage": openai_usage(gens),
        }

    def _chunk(self, ctx: Context, index: int, delta: dict[str, Any], finish: str | None,
               logprobs: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {"id": ctx.request_id, "object": "chat.completion.chunk", "created": ctx.created,
                                 "model": ctx.model,
                                 "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                              "finish_reason": finish}]}
        if ctx.include_usage:
            chunk["usage"] = None
        return sse(chunk)

    def stream_start(self, gens: Sequence[Generation], ctx: Context) -> bytes:
        return b"".join(self._chunk(ctx, i, {"role": "assistant", "content": ""}, None) for i in range(len(gens)))

    def stream_token(self, index: int, gen: Generation, token: int, ctx: Context) -> bytes:
        return self._chunk(ctx, index, {"content": gen.pieces[token]}, None,
                           _chat_logprobs(gen, range(token, token + 1), ctx))

    def stream_finish(self, index: int, gen: Generation, ctx: Context) -> bytes:
        return self._chunk(ctx, index, {}, gen.finish_reason)

    def stream_end(self, gens: Sequence[Generation], ctx: Context) -> bytes:
        if not ctx.include_usage:
            return DONE
        usage = {"id": ctx.request_id, "object": "chat.completion.chunk", "created": ctx.created, "model": ctx.model,
                 "choices": [], "usage": openai_usage(gens)}
        return sse(usage) + DONE


def _completion_logprobs(gen: Generation, ctx: Context) -> dict[str, Any] | None:
    """The legacy completions shape: `logprobs: N` asks for N alternatives per token (0-5)."""
    top = ctx.body.get("logprobs")
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        return None
    offsets, position = [], 0
    for piece in gen.pieces:
        offsets.append(position)
        position += len(piece)
    entries = [_token_logprob(p, t, min(top, 5)) for p, t in zip(gen.pieces, gen.token_ids, strict=False)]
    return {"tokens": list(gen.pieces), "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{alt["token"]: alt["logprob"] for alt in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


class CompletionFormat(Format):
    def response(self, gens: Sequence[Generation], ctx: Context) -> Any:
        return {
            "id": ctx.request_id, "object": "text_completion", "created": ctx.created, "model": ctx.model,
            "choices": [{"index": i, "text": g.text, "logprobs": _completion_logprobs(g, ctx),
                         "finish_reason": g.finish_reason, "matched_stop": None} for i, g in enumerate(gens)],
            "usage": openai_usage(gens),
        }

    def _chunk(self, ctx: Context, index: int, text: str, finish: str | None) -> bytes:
        chunk: dict[str, Any] = {"id": ctx.request_id, "object": "text_completion", "created": ctx.created,
                                 "model": ctx.model,
                                 "choices": [{"index": index, "text": text, "logprobs": None,
                                              "finish_reason": finish}]}
        if ctx.include_usage:
            chunk["usage"] = None
        return sse(chunk)

    def stream_token(self, index: int, gen: Generation, token: int, ctx: Context) -> bytes:
        return self._chunk(ctx, index, gen.pieces[token], None)

    def stream_finish(self, index: int, gen: Generation, ctx: Context) -> bytes:
        return self._chunk(ctx, index, "", gen.finish_reason)

    def stream_end(self, gens: Sequence[Generation], ctx: Context) -> bytes:
        if not ctx.include_usage:
            return DONE
        usage = {"id": ctx.request_id, "object": "text_completion", "created": ctx.created, "model": ctx.model,
                 "choices": [], "usage": openai_usage(gens)}
        return sse(usage) + DONE


class GenerateFormat(Format):
    """SGLang's native `/generate`: cumulative text per stream chunk, details in `meta_info`."""

    def _meta(self, ctx: Context, index: int, gen: Generation, produced: int, finished: bool) -> dict[str, Any]:
        finish = None
        if finished:
            finish = {"type": "length", "length": produced} if gen.finish_reason == "length" else {
                "type": "stop", "matched": None}
        rid = ctx.request_id if index == 0 else f"{ctx.request_id}-{index}"
        meta: dict[str, Any] = {"id": rid, "finish_reason": finish, "prompt_tokens": gen.prompt_tokens,
                                "completion_tokens": produced, "cached_tokens": gen.cached_tokens}
        if ctx.body.get("return_logprob"):
            prompt = gen.prompt_ids if ctx.prompt_logprobs else []
            meta["input_token_logprobs"] = [[_logprob(t) if i else None, t, None] for i, t in enumerate(prompt)]
            meta["output_token_logprobs"] = [[_logprob(t), t, None] for t in gen.token_ids[:produced]]
        return meta

    def response(self, gens: Sequence[Generation], ctx: Context) -> Any:
        items = [{"text": g.text, "meta_info": self._meta(ctx, i, g, g.completion_tokens, True)}
                 for i, g in enumerate(gens)]
        return items if ctx.batched else items[0]

    def _chunk(self, ctx: Context, index: int, gen: Generation, produced: int, finished: bool) -> bytes:
        chunk: dict[str, Any] = {"text": "".join(gen.pieces[:produced]),
                                 "meta_info": self._meta(ctx, index, gen, produced, finished)}
        if ctx.batched:
            chunk["index"] = index
        return sse(chunk)

    def stream_token(self, index: int, gen: Generation, token: int, ctx: Context) -> bytes:
        if token + 1 == gen.completion_tokens:
            return b""  # the finish chunk carries the last token together with the finish reason
        return self._chunk(ctx, index, gen, token + 1, False)

    def stream_finish(self, index: int, gen: Generation, ctx: Context) -> bytes:
        return self._chunk(ctx, index, gen, gen.completion_tokens, True)


class MessagesFormat(Format):
    """Anthropic Messages API."""

    @staticmethod
    def _stop_reason(gen: Generation) -> str:
        return "max_tokens" if gen.finish_reason == "length" else "end_turn"

    def response(self, gens: Sequence[Generation], ctx: Context) -> Any:
        gen = gens[0]
        return {"id": ctx.request_id, "type": "message", "role": "assistant", "model": ctx.model,
                "content": [{"type": "text", "text": gen.text}], "stop_reason": self._stop_reason(gen),
                "stop_sequence": None,
                "usage": {"input_tokens": gen.prompt_tokens - gen.cached_tokens, "output_tokens": gen.completion_tokens,
                          "cache_read_input_tokens": gen.cached_tokens, "cache_creation_input_tokens": 0}}

    def stream_start(self, gens: Sequence[Generation], ctx: Context) -> bytes:
        gen = gens[0]
        message: dict[str, Any] = {"id": ctx.request_id, "type": "message", "role": "assistant", "model": ctx.model,
                                   "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": gen.prompt_tokens - gen.cached_tokens, "output_tokens": 1,
                             "cache_read_input_tokens": gen.cached_tokens, "cache_creation_input_tokens": 0}}
        return (sse_event("message_start", {"type": "message_start", "message": message})
                + sse_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text", "text": ""}})
                + sse_event("ping", {"type": "ping"}))

    def stream_token(self, index: int, gen: Generation, token: int, ctx: Context) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta", "text": gen.pieces[token]}})

    def stream_finish(self, index: int, gen: Generation, ctx: Context) -> bytes:
        return (sse_event("content_block_stop", {"type": "content_block_stop", "index": 0})
                + sse_event("message_delta", {"type": "message_delta",
                                              "delta": {"stop_reason": self._stop_reason(gen), "stop_sequence": None},
                                              "usage": {"output_tokens": gen.completion_tokens}}))

    def stream_end(self, gens: Sequence[Generation], ctx: Context) -> bytes:
        return sse_event("message_stop", {"type": "message_stop"})


class ResponsesFormat(Format):
    """OpenAI Responses API (stateless subset: one message output item)."""

    opens_at_once = True

    def _response(self, gens: Sequence[Generation], ctx: Context, status: str) -> dict[str, Any]:
        gen = gens[0]
        done = status != "in_progress"
        incomplete = done and gen.finish_reason == "length"
        output = [self._item(ctx, gen, "completed")] if done else []
        return {
            "id": ctx.request_id, "object": "response", "created_at": ctx.created, "model": ctx.model,
            "status": ("incomplete" if incomplete else "completed") if done else status,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "error": None, "instructions": ctx.body.get("instructions"), "metadata": {}, "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "temperature": 1.0, "top_p": 1.0,
            "usage": {"input_tokens": gen.prompt_tokens, "input_tokens_details": {"cached_tokens": gen.cached_tokens},
                      "output_tokens": gen.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": gen.prompt_tokens + gen.completion_tokens} if done else None,
        }

    def _item(self, ctx: Context, gen: Generation, status: str, text: str | None = None) -> dict[str, Any]:
        content = [] if text is None and status != "completed" else [
            {"type": "output_text", "text": gen.text if text is None else text, "annotations": []}]
        return {"type": "message", "id": "msg_" + ctx.request_id, "status": status, "role": "assistant",
                "content": content}

    def response(self, gens: Sequence[Generation], ctx: Context) -> Any:
        return self._response(gens, ctx, "completed")

    def stream_start(self, gens: Sequence[Generation], ctx: Context) -> bytes:
        item = self._item(ctx, gens[0], "in_progress")
        return (self._event(ctx, "response.created", response=self._response(gens, ctx, "in_progress"))
                + self._event(ctx, "response.output_item.added", output_index=0, item=item)
                + self._event(ctx, "response.content_part.added", item_id=item["id"], output_index=0,
                              content_index=0, part={"type": "output_text", "text": "", "annotations": []}))

    def stream_token(self, index: int, gen: Generation, token: int, ctx: Context) -> bytes:
        return self._event(ctx, "response.output_text.delta", item_id="msg_" + ctx.request_id, output_index=0,
                           content_index=0, delta=gen.pieces[token])

    def stream_finish(self, index: int, gen: Generation, ctx: Context) -> bytes:
        item_id = "msg_" + ctx.request_id
        return (self._event(ctx, "response.output_text.done", item_id=item_id, output_index=0, content_index=0,
                            text=gen.text)
                + self._event(ctx, "response.content_part.done", item_id=item_id, output_index=0, content_index=0,
                              part={"type": "output_text", "text": gen.text, "annotations": []})
                + self._event(ctx, "response.output_item.done", output_index=0,
                              item=self._item(ctx, gen, "completed")))

    def stream_end(self, gens: Sequence[Generation], ctx: Context) -> bytes:
        final = self._response(gens, ctx, "completed")
        return self._event(ctx, "response.completed" if final["status"] == "completed" else "response.incomplete",
                           response=final)

    @staticmethod
    def _event(ctx: Context, kind: str, **fields: Any) -> bytes:
        sequence = ctx.sequence_number
        ctx.sequence_number += 1
        return sse_event(kind, {"type": kind, "sequence_number": sequence, **fields})

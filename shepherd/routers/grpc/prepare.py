"""Request preparation: from an API body to token ids, sampling parameters and stop rules.

Chat renders the model's chat template (tools filtered by tool_choice, template kwargs merged in
order: reasoning_effort, tool_choice, response_format, then the request's chat_template_kwargs) and
tokenizes without adding special tokens, since the template wrote them. Completions tokenize the
prompt as an engine would (BOS where the tokenizer adds one); `/generate` takes text or input_ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from shepherd.errors import GatewayError
from shepherd.parsers.tool import ToolChoiceError, tool_choice_constraint
from shepherd.routers.external.translate.anthropic_to_openai import messages_request_to_chat
from shepherd.routers.external.translate.common import TranslationError
from shepherd.routers.grpc.output import ChatOutputContext, OutputFactory
from shepherd.routers.grpc.params import (
    Sampling,
    chat_sampling,
    completion_sampling,
    flag,
    generate_sampling,
    invalid,
    token_ids,
)
from shepherd.tokenizer.chat_template import ChatTemplateError
from shepherd.tokenizer.registry import TokenizerEntry
from shepherd.tokenizer.stop import StopConfig

_MEDIA_PARTS = {"image_url": "image", "image": "image", "video_url": "video", "video": "video",
                "input_audio": "audio", "audio_url": "audio", "audio": "audio"}


@dataclass(slots=True)
class Prepared:
    entry: TokenizerEntry
    input_ids: list[int]
    text: str  # the rendered prompt (chat), the prompt text, or "" for raw ids
    sampling: Sampling
    stop: StopConfig
    output: ChatOutputContext | None = None  # chat only
    echo: bool = False  # completions only


def resolve_stops(entry: TokenizerEntry, sampling: Sampling) -> StopConfig:
    """The gateway's stop rules, and the ids the engine can stop on by itself."""
    engine_ids = list(sampling.stop_token_ids)
    for stop in sampling.stop:
        ids = entry.tokenizer.encode(stop, False) if stop else []
        if len(ids) == 1 and ids[0] not in engine_ids:  # a one-token stop string the engine can match
            engine_ids.append(ids[0])
    sampling.engine_stop_token_ids = engine_ids
    return StopConfig.build(entry.tokenizer, sampling.stop, sampling.stop_token_ids, ignore_eos=sampling.ignore_eos,
                            no_stop_trim=sampling.no_stop_trim, skip_special_tokens=sampling.skip_special_tokens)


# -- chat -----------------------------------------------------------------------------------------

def _tools_and_choice(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None and body.get("functions") is not None:  # the deprecated spelling
        functions = body["functions"]
        if not isinstance(functions, list):
            raise invalid("'functions' must be a list", "functions")
        tools = [{"type": "function", "function": f} for f in functions]
        call = body.get("function_call")
        if isinstance(call, dict) and "name" in call:
            choice = {"type": "function", "function": {"name": call["name"]}}
        elif call is not None:
            choice = call
    if tools is None:
        return [], choice
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
            for t in tools):
        raise invalid("'tools' must be a list of {type: function, function: {name, ...}} objects", "tools")
    return tools, choice


def _filter_tools(tools: list[dict[str, Any]], choice: Any) -> list[dict[str, Any]]:
    """tool_choice naming one function (or an allowed set) narrows what the template shows."""
    if not isinstance(choice, dict):
        if choice not in (None, "none", "auto", "required"):
            raise invalid("'tool_choice' must be none, auto, required or an object", "tool_choice")
        return tools
    names: set[str]
    if choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        names = {name} if isinstance(name, str) else set()
    elif choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools", choice)
        listed = allowed.get("tools", []) if isinstance(allowed, dict) else []
        names = {str((t.get("function") or {}).get("name", t.get("name"))) for t in listed if isinstance(t, dict)}
    else:
        raise invalid("unknown tool_choice type", "tool_choice")
    kept = [t for t in tools if t["function"]["name"] in names]
    if not kept:
        raise invalid(f"tool_choice names no tool in 'tools': {sorted(n for n in names if n)}", "tool_choice")
    return kept


def _choice_mode(choice: Any) -> str:
    """none | auto | required | function"""
    if isinstance(choice, dict):
        if choice.get("type") == "function":
            return "function"
        allowed = choice.get("allowed_tools", choice)
        return "required" if isinstance(allowed, dict) and allowed.get("mode") == "required" else "auto"
    return choice if isinstance(choice, str) else "auto"


def _convert_message(message: Any, content_format: str) -> dict[str, Any]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise invalid("each message must be an object with a 'role'", "messages")
    out = {k: v for k, v in message.items() if v is not None}
    content = message.get("content")
    if isinstance(content, list):
        if content_format == "string":
            out["content"] = "\n".join(part["text"] for part in content
                                       if isinstance(part, dict) and isinstance(part.get("text"), str))
        else:
            media = [{"type": _MEDIA_PARTS[p["type"]]} for p in content
                     if isinstance(p, dict) and p.get("type") in _MEDIA_PARTS]
            text = [p for p in content if isinstance(p, dict) and p.get("type") not in _MEDIA_PARTS]
            out["content"] = media + text
    elif content is None:
        # Templates read content unconditionally (an assistant turn with only tool calls has none).
        out["content"] = "" if content_format == "string" else None
    elif not isinstance(content, str):
        raise invalid("message 'content' must be a string or a list of content parts", "messages")
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        converted = []
        for call in calls:
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                function = dict(call["function"])
                arguments = function.get("arguments")
                if isinstance(arguments, str):  # templates expect a mapping, as in Hugging Face
                    try:
                        function["arguments"] = orjson.loads(arguments) if arguments.strip() else {}
                    except orjson.JSONDecodeError:
                        raise invalid("tool_calls[].function.arguments is not valid JSON", "messages") from None
                call = {**call, "function": function}
            converted.append(call)
        out["tool_calls"] = converted
    return out


@dataclass(slots=True)
class ChatPrompt:
    text: str  # the rendered chat template
    tools: list[dict[str, Any]]
    choice: Any
    mode: str
    kwargs: dict[str, Any]


def render_chat(body: Mapping[str, Any], entry: TokenizerEntry, model: str) -> ChatPrompt:
    """The prompt text an engine renders for a chat body with this tokenizer's template."""
    template = entry.tokenizer.chat_template
    if template is None:
        raise GatewayError(400, "chat_template_missing",
                           f"The tokenizer of `{model}` has no chat template (tokenizer.chat_template is not set); "
                           "start the gateway with --chat-template")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty list", "messages")
    tools, choice = _tools_and_choice(body)
    tools = _filter_tools(tools, choice) if tools else tools
    mode = _choice_mode(choice)

    kwargs: dict[str, Any] = {}
    effort = body.get("reasoning_effort")
    if effort is not None:
        kwargs["reasoning_effort"] = effort
    if choice is not None:
        kwargs["tool_choice"] = choice
    if body.get("response_format") is not None:
        kwargs["response_format"] = body["response_format"]
    extra = body.get("chat_template_kwargs")
    if extra is not None:
        if not isinstance(extra, dict):
            raise invalid("'chat_template_kwargs' must be an object", "chat_template_kwargs")
        kwargs.update(extra)
    key = template.traits.thinking_key
    if effort in ("none", "minimal") and key is not None and key not in kwargs:
        kwargs[key] = False

    converted = [_convert_message(m, template.traits.content_format) for m in messages]
    suffix = ""
    if flag(body, "continue_final_message", False) and converted[-1]["role"] == "assistant":
        last = converted.pop()
        suffix = last["content"] if isinstance(last.get("content"), str) else ""
    try:
        text = template.render(converted, tools=tools or None, add_generation_prompt=True, kwargs=kwargs) + suffix
    except ChatTemplateError as exc:
        raise invalid(str(exc), "messages") from None
    return ChatPrompt(text, tools, choice, mode, kwargs)


async def chat_prompt_ids(body: Mapping[str, Any], entry: TokenizerEntry, model: str) -> list[int]:
    """The token ids an engine prefills for a chat body (what its KV-cache events describe)."""
    return await entry.encode_async(render_chat(body, entry, model).text, False)


async def prepare_chat(body: Mapping[str, Any], entry: TokenizerEntry, outputs: OutputFactory, model: str
                       ) -> Prepared:
    prompt = render_chat(body, entry, model)
    template = entry.tokenizer.chat_template
    assert template is not None
    sampling = chat_sampling(body)
    text, tools, choice, mode, kwargs = prompt.text, prompt.tools, prompt.choice, prompt.mode, prompt.kwargs
    key = template.traits.thinking_key

    thinking = template.thinking_enabled(kwargs)
    sampling.require_reasoning = key is not None and thinking
    try:  # forcing a call: a JSON schema for the arguments (one function) or an array of calls (required)
        forced = tool_choice_constraint(tools, choice) if tools and mode != "none" else None
    except ToolChoiceError as exc:
        raise invalid(str(exc), "tool_choice") from None
    if forced is not None and sampling.constraint is None:  # an explicit response_format wins
        sampling.constraint = (forced[0], orjson.dumps(forced[1]).decode())
    context = ChatOutputContext(model=model, tools=tools, tool_choice=choice, thinking=thinking,
                                traits=template.traits, body=body)
    if tools and mode != "none" and outputs.needs_special_tokens(context):
        sampling.skip_special_tokens = False  # tool-call markers may be special tokens
    stop = resolve_stops(entry, sampling)
    input_ids = await entry.encode_async(text, False)
    return Prepared(entry, input_ids, text, sampling, stop, output=context)


# -- Anthropic Messages: a chat request by another name -----------------------------------------

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


def messages_as_chat(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A Messages request as the chat request the pipeline prepares (system, tools, tool_choice,
    tool_use/tool_result turns, thinking, stop_sequences, sampling); 400 for what it cannot express."""
    try:
        return messages_request_to_chat(body, model, engine=True)
    except TranslationError as exc:
        raise invalid(exc.message, exc.param or "messages") from None


# -- completions and generate ---------------------------------------------------------------------

def _single_prompt(value: Any, key: str) -> str | list[int]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return token_ids(value, key)
    if isinstance(value, list) and len(value) > 1:
        raise invalid(f"'{key}' holds several prompts; gRPC workers take one prompt per request", key)
    raise invalid(f"'{key}' must be a string or a list of token ids", key)


async def prepare_completion(body: Mapping[str, Any], entry: TokenizerEntry) -> Prepared:
    if body.get("suffix") is not None:
        raise invalid("'suffix' is not supported", "suffix")
    prompt = _single_prompt(body.get("prompt"), "prompt")
    sampling = completion_sampling(body)
    stop = resolve_stops(entry, sampling)
    if isinstance(prompt, str):
        ids = await entry.encode_async(prompt, True)
        text = prompt
    else:
        ids, text = prompt, ""
    if not ids:
        raise invalid("the prompt is empty", "prompt")
    return Prepared(entry, ids, text, sampling, stop, echo=flag(body, "echo", False))


async def prepare_generate(body: Mapping[str, Any], entry: TokenizerEntry) -> Prepared:
    text, ids = body.get("text"), body.get("input_ids")
    if (text is None) == (ids is None):
        raise invalid("give exactly one of 'text' and 'input_ids'", "text")
    sampling = generate_sampling(body)
    stop = resolve_stops(entry, sampling)
    if text is not None:
        if not isinstance(text, str):
            raise invalid("'text' must be a string; batches are not supported on gRPC workers", "text")
        input_ids = await entry.encode_async(text, False)
        prompt = text
    else:
        if isinstance(ids, list) and ids and isinstance(ids[0], list):
            raise invalid("'input_ids' must be one list of token ids; batches are not supported", "input_ids")
        input_ids, prompt = token_ids(ids, "input_ids"), ""
    if not input_ids:
        raise invalid("the prompt is empty", "text" if text is not None else "input_ids")
    return Prepared(entry, input_ids, prompt, sampling, stop)


def request_rid(body: Mapping[str, Any]) -> str | None:
    rid = body.get("rid")
    if rid is None:
        return None
    if not isinstance(rid, str) or not rid:
        raise invalid("'rid' must be a non-empty string", "rid")
    return rid


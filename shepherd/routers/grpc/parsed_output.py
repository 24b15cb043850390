"""The parser-backed chat output: reasoning first, then tool calls, on the gRPC chat path.

Each choice's detokenized text goes through the reasoning parser (if the model family has one and
thinking is on): `ReasoningDelta`s become `reasoning_content`, its content goes on to the tool-call
parser (if the request has tools): `ToolCallStart`/`ToolCallArgs` become OpenAI `tool_calls` deltas,
the rest stays `content`. Parsers are picked by `--reasoning-parser`/`--tool-call-parser`, else
detected from the model name.
"""

from __future__ import annotations

from typing import Any

from shepherd.parsers.profiles import ParserProfiles
from shepherd.parsers.reasoning import ReasoningDelta, ReasoningParser, create_reasoning_parser
from shepherd.parsers.tool import ContentDelta, ToolCallArgs, ToolCallStart, ToolParser, create_tool_parser
from shepherd.parsers.tool.registry import resolve_tool_parser
from shepherd.routers.grpc.output import ChatOutputContext, ChoiceOutput, OutputDelta, PlainOutput


class ParsedOutput:
    """One choice's answer, split into reasoning, content and tool calls as it streams."""

    __slots__ = ("_reasoning", "_tools")

    def __init__(self, reasoning: ReasoningParser | None, tools: ToolParser | None) -> None:
        self._reasoning = reasoning
        self._tools = tools

    def feed(self, text: str) -> OutputDelta | None:
        return self._delta(self._events(text, final=False))

    def finish(self) -> OutputDelta | None:
        return self._delta(self._events("", final=True))

    def complete(self, text: str) -> OutputDelta:
        """The whole answer at once: tool calls in `message.tool_calls` form."""
        delta = self._delta(self._events(text, final=True)) or OutputDelta()
        calls: dict[int, dict[str, Any]] = {}
        for item in delta.tool_calls:
            call = calls.setdefault(item["index"], {"id": "", "type": "function",
                                                    "function": {"name": "", "arguments": ""}})
            call["id"] = item.get("id") or call["id"]
            function = item.get("function", {})
            call["function"]["name"] = function.get("name") or call["function"]["name"]
            call["function"]["arguments"] += function.get("arguments", "")
        delta.tool_calls = [calls[index] for index in sorted(calls)]
        return delta

    def _events(self, text: str, final: bool) -> list[Any]:
        reasoning, tools = self._reasoning, self._tools
        if reasoning is not None:
            first = reasoning.feed(text) if text else []
            stage = [*first, *reasoning.finish()] if final else first
        else:
            stage = [ContentDelta(text)] if text else []
        if tools is None:
            return stage
        events: list[Any] = []
        for event in stage:
            if isinstance(event, ContentDelta):
                events.extend(tools.feed(event.text))
            else:
                events.append(event)
        if final:
            events.extend(tools.finish())
        return events

    @staticmethod
    def _delta(events: list[Any]) -> OutputDelta | None:
        if not events:
            return None
        delta = OutputDelta()
        content: list[str] = []
        reasoning: list[str] = []
        for event in events:
            if isinstance(event, ReasoningDelta):
                reasoning.append(event.text)
            elif isinstance(event, ContentDelta):
                content.append(event.text)
            elif isinstance(event, ToolCallStart):
                delta.tool_calls.append({"index": event.index, "id": event.id, "type": "function",
                                         "function": {"name": event.name, "arguments": ""}})
            elif isinstance(event, ToolCallArgs):
                last = delta.tool_calls[-1] if delta.tool_calls else None
                if last is not None and last["index"] == event.index:  # one entry per call per chunk
                    last["function"]["arguments"] += event.fragment
                else:
                    delta.tool_calls.append({"index": event.index, "function": {"arguments": event.fragment}})
        delta.content = "".join(content)
        delta.reasoning_content = "".join(reasoning)
        if not (delta.content or delta.reasoning_content or delta.tool_calls):
            return None
        return delta


class ParserOutputFactory:
    """Builds each choice's output: parsers where the model and request call for them, plain text otherwise."""

    def __init__(self, tool_call_parser: str | None, reasoning_parser: str | None,
                 profiles: ParserProfiles | None = None) -> None:
        self._tool_call_parser = tool_call_parser
        self._reasoning_parser = reasoning_parser
        self._profiles = profiles or ParserProfiles()
        self._plain = PlainOutput()

    def needs_special_tokens(self, context: ChatOutputContext) -> bool:
        """Tool-call markers can be special tokens: keep them in the decoded text when tools are in play."""
        model = self._profiles.detection_name(context.model)
        return bool(context.tools) and resolve_tool_parser(self._tool_call_parser, model) is not None

    def __call__(self, context: ChatOutputContext) -> ChoiceOutput:
        kwargs = context.body.get("chat_template_kwargs")
        model = self._profiles.detection_name(context.model)
        reasoning = create_reasoning_parser(self._reasoning_parser, model=model,
                                            chat_template_kwargs=kwargs if isinstance(kwargs, dict) else None)
        tools = create_tool_parser(self._tool_call_parser, model=model, tools=list(context.tools),
                                   tool_choice=context.tool_choice) if context.tools else None
        if reasoning is None and tools is None:
            return self._plain
        return ParsedOutput(reasoning, tools)

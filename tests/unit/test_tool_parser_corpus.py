"""Every family's corpus: the one-shot split, and the same split when the text streams in."""

from __future__ import annotations

import re

import orjson
import pytest

from shepherd.parsers.tool import (
    ContentDelta,
    ToolCallArgs,
    ToolCallStart,
    ToolEvent,
    collect,
    create_tool_parser,
)
from shepherd.testing.parser_corpus import TOOL_SAMPLES, Sample

OPENAI_ID = re.compile(r"call_[A-Za-z0-9]{24}")


def stream(sample: Sample, pieces: list[str], tools: object = "sample") -> list[ToolEvent]:
    parser = create_tool_parser(sample.parser, tools=sample.tools if tools == "sample" else tools)
    assert parser is not None
    events: list[ToolEvent] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    events.extend(parser.finish())
    return events


def chunks(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def summary(events: list[ToolEvent]) -> tuple[str, list[tuple[str, str]]]:
    result = collect(events)
    return result.normal_text, [(call.name, call.arguments) for call in result.calls]


@pytest.mark.parametrize("sample", TOOL_SAMPLES, ids=lambda s: s.id)
def test_one_shot_split_matches_the_corpus(sample: Sample) -> None:
    parser = create_tool_parser(sample.parser, tools=sample.tools)
    assert parser is not None
    result = parser.parse(sample.text)
    assert result.normal_text == sample.normal
    assert [(call.name, orjson.loads(call.arguments)) for call in result.calls] == list(sample.calls)
    assert [call.index for call in result.calls] == list(range(len(sample.calls)))
    for call in result.calls:
        if sample.parser == "kimik2":
            assert re.fullmatch(rf"functions\.{call.name}:\d+", call.id)
        else:
            assert OPENAI_ID.fullmatch(call.id)
        openai = call.to_openai()
        assert openai["type"] == "function" and openai["function"]["arguments"] == call.arguments
    assert parser.call_count == len(sample.calls)


@pytest.mark.parametrize("size", [1, 2, 8])
@pytest.mark.parametrize("sample", TOOL_SAMPLES, ids=lambda s: s.id)
def test_streaming_gives_the_one_shot_split(sample: Sample, size: int) -> None:
    one_shot = summary(stream(sample, [sample.text]))
    events = stream(sample, chunks(sample.text, size))
    assert summary(events) == one_shot
    # A call is announced once, before any of its arguments, and calls are numbered in order.
    started: list[int] = []
    for event in events:
        if isinstance(event, ToolCallStart):
            assert event.index == len(started) and event.name
            started.append(event.index)
        elif isinstance(event, ToolCallArgs):
            assert event.index == started[-1] and event.fragment
        else:
            assert isinstance(event, ContentDelta) and event.text


# Pythonic calls are only JSON once complete, so they are sent whole by design.
@pytest.mark.parametrize("sample", [s for s in TOOL_SAMPLES if s.calls and s.parser != "pythonic"],
                         ids=lambda s: s.id)
def test_arguments_stream_before_the_call_ends(sample: Sample) -> None:
    """Name first, then several argument pieces: the client sees progress, not one final blob."""
    events = stream(sample, chunks(sample.text, 4))
    first_args = [e for e in events if isinstance(e, ToolCallArgs) and e.index == 0]
    assert len(first_args) > 1


@pytest.mark.parametrize("sample", TOOL_SAMPLES, ids=lambda s: s.id)
def test_declared_schemas_do_not_change_the_corpus_result(sample: Sample) -> None:
    """Without tools every name is accepted; these samples' values type the same either way."""
    assert summary(stream(sample, [sample.text], tools=None)) == summary(stream(sample, [sample.text]))

"""Token usage is read from a stream's last chunk: the last usage event, wherever the chunk ends."""

from __future__ import annotations

from shepherd.routers.common.relay import _stream_usage

USAGE = b'data: {"usage": {"prompt_tokens": 3, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2}}}'


def test_the_usage_event_is_found_among_every_event_of_an_answer_that_arrived_at_once() -> None:
    events = b"".join(b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n' for _ in range(64))
    assert _stream_usage(events + USAGE + b"\n\ndata: [DONE]\n\n") == (3, 5, 2)
    assert _stream_usage(USAGE) == (3, 5, 2)  # no newline at all
    assert _stream_usage(b"event: message_delta\n" + b'data: {"usage": {"input_tokens": 1, "output_tokens": 2}}\n\n') \
        == (1, 2, 0)


def test_the_last_usage_event_counts_and_broken_ones_give_none() -> None:
    earlier = b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}\n\n'
    assert _stream_usage(earlier + USAGE + b"\n\n") == (3, 5, 2)
    assert _stream_usage(b'data: {"usage": broken\n\n') is None
    assert _stream_usage(b'data: "usage"\n\n') is None  # not an event object
    assert _stream_usage(b"") is None and _stream_usage(b"\n\n") is None

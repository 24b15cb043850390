"""The log lines' format: the cached timestamps and the access line say exactly what they said
when each record was formatted from scratch."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from shepherd.middleware.gateway import _log_request
from shepherd.observability.logging import JsonFormatter, TextFormatter
from shepherd.request_keys import MODEL, REQUEST_ID, TENANT, USAGE, WORKER

# Fractions where rounding to microseconds, then to milliseconds, carries into the next unit.
_EDGES = [1764877989.0, 1764877989.0005, 1764877989.9994999, 1764877989.9995, 1764877989.9999995,
          1764877989.9999996, 1764877990.0000004]


def _record(created: float) -> logging.LogRecord:
    record = logging.makeLogRecord({"msg": "m", "levelname": "INFO", "name": "t"})
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord computes it
    return record


@given(st.lists(st.one_of(st.floats(min_value=0, max_value=4_102_444_800), st.sampled_from(_EDGES)),
                min_size=1, max_size=20))
def test_cached_timestamps_match_a_fresh_format(instants: list[float]) -> None:
    text, json, reference = TextFormatter(), JsonFormatter(), logging.Formatter()
    for created in instants + sorted(instants):  # the same seconds again, from the cache
        assert text.formatTime(_record(created)) == reference.formatTime(_record(created))
        assert json.timestamp(created) == datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def test_an_explicit_date_format_is_honoured() -> None:
    record = _record(1764877989.25)
    assert TextFormatter().formatTime(record, "%Y") == logging.Formatter().formatTime(record, "%Y")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _access_record(keys: dict, status: int, error_code: str | None) -> logging.LogRecord:
    request = make_mocked_request("POST", "/v1/chat/completions")
    for key, value in keys.items():
        request[key] = value
    capture = _Capture()
    logger = logging.getLogger("shepherd.access")
    logger.addHandler(capture)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        _log_request(request, status, 0.01234, error_code)
    finally:
        logger.removeHandler(capture)
        logger.setLevel(previous)
    (record,) = capture.records
    return record


def test_the_access_line_names_every_field() -> None:
    record = _access_record({REQUEST_ID: "req-1", TENANT: "team-a", MODEL: "m1", WORKER: "http://w:1",
                             USAGE: (12, 34)}, 429, "rate_limited")
    line = TextFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert line == ("INFO shepherd.access: POST /v1/chat/completions 429 12.3ms request_id=req-1 tenant=team-a "
                    "model=m1 worker=http://w:1 prompt_tokens=12 completion_tokens=34 error_code=rate_limited")
    entry = orjson.loads(JsonFormatter().format(record))
    assert {k: v for k, v in entry.items() if k != "timestamp"} == {
        "level": "info", "logger": "shepherd.access", "message": record.getMessage(), "request_id": "req-1",
        "method": "POST", "path": "/v1/chat/completions", "status": 429, "duration_ms": 12.34,
        "tenant": "team-a", "model": "m1", "worker": "http://w:1", "prompt_tokens": 12, "completion_tokens": 34,
        "error_code": "rate_limited"}


def test_the_access_line_leaves_out_what_the_request_never_had() -> None:
    record = _access_record({REQUEST_ID: "req-2"}, 200, None)
    assert record.getMessage() == "POST /v1/chat/completions 200 12.3ms request_id=req-2"
    entry = orjson.loads(JsonFormatter().format(record))
    assert set(entry) == {"timestamp", "level", "logger", "message", "request_id", "method", "path", "status",
                          "duration_ms"}

"""Write one JSON line per inference request to bounded, rotated files.

The request path only builds a small dict and appends its bytes to an in-memory buffer; a
background task hands the buffer to a thread that appends it to the current file. Every bound is
explicit: the buffer (records beyond it are dropped and counted), the size of one file (then the
next file starts) and the number of files (the oldest are deleted), so a recording never holds more
than max_files x max_file_bytes on disk.

What a record holds (nothing private unless --record-prompts): arrival time, model, API path, the
prompt as a salted block-hash chain (see blocks.py) and its length, prompt/output token counts when
the worker reported them, max_tokens, stream or not, a salted pseudonym of the routing key, the
worker, time to first chunk and duration, and the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from shepherd.config import RecordingConfig
from shepherd.policies.base import RoutingRequest
from shepherd.recording.blocks import BlockHasher

log = logging.getLogger("shepherd.recording")

FORMAT_VERSION = 1
FILE_PATTERN = re.compile(r"^traffic-(\d{6})\.jsonl$")
_FLUSH_SECS = 0.5


class TrafficRecorder:
    def __init__(self, config: RecordingConfig, routing_key_headers: Sequence[str] = ("x-smg-routing-key",)) -> None:
        assert config.directory is not None
        self._config = config
        self._dir = config.directory
        self._key_headers = tuple(routing_key_headers)
        self._hasher = BlockHasher()  # its keys are never written: hashes cannot be matched to guessed text
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.dropped = 0
        self.written = 0
        self._index = 0
        self._file_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None

    # -- the request path ---------------------------------------------------------------------

    def record(
        self,
        *,
        arrived: float,
        api: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        status: int,
        worker: str | None,
        usage: Sequence[int] | None,
        ttft: float | None,
        duration: float,
    ) -> None:
        routing = RoutingRequest(api, body, headers, routing_key_headers=self._key_headers)
        text = routing.text
        key = routing.routing_key
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", body.get("max_new_tokens")))
        record: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "t": round(arrived, 6),
            "model": body.get("model") if isinstance(body.get("model"), str) else None,
            "api": api,
            "block_bytes": self._hasher.block_bytes,
            "blocks": self._hasher.chain(text),
            "prompt_bytes": len(text.encode("utf-8", "surrogatepass")),
            "prompt_tokens": usage[0] if usage else None,
            "output_tokens": usage[1] if usage else None,
            "max_tokens": max_tokens if isinstance(max_tokens, int) else None,
            "stream": bool(body.get("stream")),
            "routing_key": self._hasher.key(key) if key is not None else None,
            "worker": worker,
            "ttft_ms": round(ttft * 1000, 3) if ttft is not None else None,
            "duration_ms": round(duration * 1000, 3),
            "status": status,
        }
        if self._config.prompts:
            record["prompt"] = text
        line = orjson.dumps(record) + b"\n"
        if self._buffered + len(line) > self._config.max_buffer_bytes:
            self.dropped += 1  # the disk is not keeping up: never hold more than the bound
            return
        self._buffer.append(line)
        self._buffered += len(line)

    # -- the writer ---------------------------------------------------------------------------

    def start(self) -> None:
        os.makedirs(self._dir, exist_ok=True)
        existing = [int(m.group(1)) for name in os.listdir(self._dir) if (m := FILE_PATTERN.match(name))]
        self._index = max(existing, default=0) + 1  # a restart appends a new file, never overwrites
        self._file_bytes = 0
        if self._task is None:
            self._stopping = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(self._stopping))

    async def _run(self, stopping: asyncio.Event) -> None:
        # Never cancelled mid-write: a write runs in a thread, which a cancel would leave running
        # while the next flush starts another.
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), _FLUSH_SECS)
            await self.flush()
            if stopping.is_set():
                return

    async def flush(self) -> None:
        if not self._buffer:
            return
        lines, self._buffer, self._buffered = self._buffer, [], 0
        try:
            await asyncio.to_thread(self._write, lines)
        except OSError as exc:
            self.dropped += len(lines)
            log.warning("could not write %d traffic records to %s: %s", len(lines), self._dir, exc)

    def _write(self, lines: list[bytes]) -> None:
        pending = lines
        while pending:
            room = self._config.max_file_bytes - self._file_bytes
            take, size = 0, 0
            while take < len(pending) and size + len(pending[take]) <= room:
                size += len(pending[take])
                take += 1
            if take == 0 and self._file_bytes == 0:  # one record larger than a file: it gets a file of its own
                take, size = 1, len(pending[0])
            if take:
                with open(self._path(self._index), "ab") as handle:
                    handle.write(b"".join(pending[:take]))
                self._file_bytes += size
                self.written += take
                pending = pending[take:]
            if pending:
                self._index += 1
                self._file_bytes = 0
                self._prune()

    def _path(self, index: int) -> str:
        return os.path.join(self._dir, f"traffic-{index:06d}.jsonl")

    def _prune(self) -> None:
        """Keep the newest max_files files, counting the one about to be started."""
        indexes = sorted(int(m.group(1)) for name in os.listdir(self._dir) if (m := FILE_PATTERN.match(name)))
        for index in indexes[:max(0, len(indexes) + 1 - self._config.max_files)]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._path(index))

    async def close(self) -> None:
        """Write what is buffered and stop."""
        if self._task is not None and self._stopping is not None:
            self._stopping.set()
            await self._task  # its last round flushes
            self._task = None
        else:
            await self.flush()

    def info(self) -> dict[str, Any]:
        return {"directory": self._dir, "written": self.written, "dropped": self.dropped,
                "current_file": os.path.basename(self._path(self._index))}

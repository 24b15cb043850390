"""A light, non-Python backend for benchmarks: nginx on loopback answering like an OpenAI engine.

The answers are fixed bytes (`return 200 '...'`), so the backend costs a few microseconds per
request and the gateways in front of it are what a benchmark measures. It speaks what a gateway
needs to register a worker (`/health`, `/v1/models`, `/get_server_info`) and what the proxy
benchmark sends: a chat answer, and a streamed one when the body asks for `"stream": true`
(nginx cannot read JSON, so the streaming answer lives on its own path, `/stream/...`, and
the benchmark's streaming scenario posts the same body to the gateway, which forwards to
`/v1/chat/completions`; see `stream_location`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import httpx
import orjson

from shepherd.testing import free_ports, wait_until

MODEL = "mock-model"


def find_nginx() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def chat_answer(content: str = "Hello there, this is a short answer.") -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    })


def stream_answer(events: int = 64) -> bytes:
    frames = []
    for index in range(events):
        delta = {"role": "assistant", "content": ""} if index == 0 else {"content": f" tok{index}"}
        frames.append(b"data: " + orjson.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}) + b"\n\n")
    frames.append(b"data: " + orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": events, "total_tokens": 12 + events}}) + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return b"".join(frames)


def _quoted(body: bytes) -> str:
    """An nginx string literal: single quotes, with backslashes and quotes escaped."""
    return "'" + body.decode().replace("\\", "\\\\").replace("'", "\\'") + "'"


_CONFIG = """
worker_processes {workers};
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_buffer_size 64k;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        default_type application/json;
        location = /health {{ return 200 ''; }}
        location = /v1/models {{ return 200 {models}; }}
        location = /get_server_info {{ return 200 '{{"version": "nginx-bench"}}'; }}
        # An OTLP/HTTP trace sink (an empty ExportTraceServiceResponse): spans are accepted and dropped.
        location = /v1/traces {{ default_type application/x-protobuf; return 200 ''; }}
        location = /v1/chat/completions {{
            if ($http_x_bench_slow) {{ rewrite ^ /slow last; }}
            if ($http_x_bench_stream) {{ rewrite ^ /stream last; }}
            return 200 {chat};
        }}
        # The stream is a file (too long for a literal). Static files refuse POST, so the 405 is
        # turned into an internal GET of the file; sub_filter drops Content-Length, so the answer
        # is chunked like an engine's stream.
        location = /stream {{ internal; error_page 405 =200 /stream.sse; return 405; }}
        # The same stream trickled at 256 bytes/s (about a minute): streams that stay open, for
        # measuring what concurrent streams cost the gateway (bench/soak.py).
        location = /slow {{ internal; error_page 405 =200 /slow.sse; return 405; }}
        location = /slow.sse {{
            internal;
            alias {root}/stream.sse;
            limit_rate 256;
            default_type text/event-stream;
            sub_filter_types text/event-stream;
            sub_filter '[DONE]' '[DONE]';
        }}
        location = /stream.sse {{
            internal;
            root {root};
            default_type text/event-stream;
            sub_filter_types text/event-stream;
            sub_filter '[DONE]' '[DONE]';
        }}
    }}
}}
"""


class Nginx:
    """nginx with a generated config in a temp dir, on a free loopback port.

    A request that carries the header `X-Bench-Stream: 1` gets the streamed answer (`X-Bench-Slow: 1`:
    the same, trickled over about a minute); the benchmark sends that header to the gateways, which
    forward it (they pass client headers on)."""

    def __init__(self, workers: int = 1, stream_events: int = 64) -> None:
        binary = find_nginx()
        if binary is None:
            raise RuntimeError("nginx is not installed: `apt-get install nginx` (see `make bench-setup`)")
        self.root = tempfile.mkdtemp(prefix="shepherd-bench-nginx-")
        os.chmod(self.root, 0o755)  # nginx's workers drop to an unprivileged user when started as root
        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        models = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})
        config = _CONFIG.format(workers=workers, root=self.root, port=self.port, models=_quoted(models),
                                chat=_quoted(chat_answer()))
        with open(os.path.join(self.root, "stream.sse"), "wb") as handle:
            handle.write(stream_answer(stream_events))
        os.chmod(os.path.join(self.root, "stream.sse"), 0o644)
        path = os.path.join(self.root, "nginx.conf")
        with open(path, "w") as handle:
            handle.write(config)
        self.proc = subprocess.Popen([binary, "-p", self.root, "-c", path, "-e", os.path.join(self.root, "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(self._ready, 15, 0.05, "nginx to answer")
        except AssertionError:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            error = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"nginx exited with {self.proc.returncode}: {error}")
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish and exit
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

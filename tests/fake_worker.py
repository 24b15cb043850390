"""A worker that misbehaves on purpose: a raw-socket HTTP/1.1 server on loopback, in a thread.

It answers the control-plane probes (`/health`, `/v1/models`) like an engine, so a real gateway
registers it, and hands every other request to a script that writes whatever bytes it likes.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable

# (request path, the connected socket) -> None; the script writes the answer (or does not).
Script = Callable[[str, socket.socket], None]


def _read_request(conn: socket.socket) -> tuple[str, bytes] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    path = lines[0].split(b" ")[1].decode()
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return path, body


def json_answer(payload: object, status: str = "200 OK", extra: bytes = b"") -> bytes:
    body = json.dumps(payload).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
            + extra + b"\r\n" + body)


class FakeWorker:
    """`script` answers every inference request; probes get a healthy engine's answers."""

    def __init__(self, script: Script, model: str = "fake-model") -> None:
        self.script = script
        self.model = model
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.paths: list[str] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    request = _read_request(conn)
                    if request is None:
                        return
                    path, _ = request
                    if path == "/health":
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    elif path == "/v1/models":
                        conn.sendall(json_answer({"object": "list", "data": [
                            {"id": self.model, "object": "model", "owned_by": "fake"}]}))
                    elif path.startswith(("/get_server_info", "/version", "/v1/loads", "/get_load", "/metrics")):
                        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    else:
                        self.paths.append(path)
                        self.script(path, conn)
            except OSError:
                return

    def close(self) -> None:
        self._closed = True
        self._server.close()

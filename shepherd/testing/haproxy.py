"""A real HAProxy (Debian's package) in front of several gateways, on loopback, for tests and
benchmarks: round robin, /readiness health checks every 200 ms, and a failed connection
re-dispatched to another gateway (what an operator's load balancer does). A check may take 1 s: on
a busy machine a slower answer is not a dead gateway. `http-no-delay`: streamed tokens go out as they
come (without it HAProxy merges small writes, and time to first token grew 4x)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

from shepherd.testing.databases import LoopbackServer, _binary
from shepherd.testing.processes import free_ports

_CONFIG = """global
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout check 1s
    retries 3
    option redispatch
    option http-keep-alive
    option http-no-delay
frontend gateways
    bind 127.0.0.1:{port}
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /readiness
    default-server inter 200ms fall 2 rise 1
{servers}
"""


class HAProxy(LoopbackServer):
    name = "haproxy"

    def __init__(self, backend_ports: Sequence[int]) -> None:
        binary = _binary("haproxy", "haproxy", ("/usr/sbin/haproxy",))
        self.dir = tempfile.mkdtemp(prefix="shepherd-haproxy-")
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(f"    server g{i} 127.0.0.1:{port} check" for i, port in enumerate(backend_ports))
        path = os.path.join(self.dir, "haproxy.cfg")
        with open(path, "w") as file:
            file.write(_CONFIG.format(port=self.port, servers=servers))
        self._launch([binary, "-db", "-f", path])

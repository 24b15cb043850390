"""nginx (Debian's package) as an engine that costs nothing: canned answers from its config, so a
benchmark of the gateway is not bounded by a Python simulator sharing the same cores."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from shepherd.testing.databases import _accepts, _binary
from shepherd.testing.processes import free_ports, wait_until

_ANSWER = ('{"id":"chatcmpl-nginx","object":"chat.completion","created":1,"model":"mock-model",'
           '"choices":[{"index":0,"message":{"role":"assistant","content":"Hello from nginx."},'
           '"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}')

_CONFIG = """daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} reuseport;
        default_type application/json;
        location = /health {{ return 200 ""; }}
        location = /v1/models {{ return 200 '{{"object":"list","data":[{{"id":"mock-model","owned_by":"vllm"}}]}}'; }}
        location / {{ return 200 '{answer}'; }}
    }}
}}
"""


class NginxBackend:
    def __init__(self) -> None:
        binary = _binary("nginx", "nginx", ("/usr/sbin/nginx",))
        self.dir = tempfile.mkdtemp(prefix="shepherd-nginx-")
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as file:
            file.write(_CONFIG.format(dir=self.dir, port=self.port, answer=_ANSWER))
        self.proc = subprocess.Popen([binary, "-c", path, "-p", self.dir, "-e", os.path.join(self.dir, "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: _accepts(self.port), 10, 0.05, f"nginx on port {self.port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

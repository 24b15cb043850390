"""Run SMG (`pip install smg` in its own venv, see `make bench-setup`) beside Shepherd in a benchmark."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

import httpx

from shepherd.testing import free_ports, wait_until


def find_smg(explicit: str | None = None) -> str | None:
    for candidate in (explicit, ".venv-smg/bin/smg", shutil.which("smg")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


class Smg:
    """`smg launch` in front of the given workers, on free loopback ports."""

    def __init__(self, binary: str, worker_urls: Sequence[str], policy: str = "round_robin",
                 extra_args: Sequence[str] = ()) -> None:
        self.port, metrics_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "launch", "--host", "127.0.0.1", "--port", str(self.port),
             *(["--worker-urls", *worker_urls] if worker_urls else []), "--policy", policy, "--log-level", "warn",
             "--prometheus-port", str(metrics_port), *extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._ready, 60, 0.2, "SMG to become ready")
        expected = len(worker_urls)
        if expected:
            wait_until(lambda: self._healthy() >= expected, 60, 0.2, "SMG to register its workers")

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readiness", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _healthy(self) -> int:
        try:
            return int(httpx.get(self.url + "/readiness", timeout=1).json().get("healthy_workers", 0))
        except (httpx.HTTPError, ValueError):
            return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

"""Start real simulator and gateway processes on loopback for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition") -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class Process:
    """A child process whose output goes to a temp file (shown if it fails to start)."""

    def __init__(self, args: Sequence[str], ready_url: str, timeout: float = 20.0,
                 env: Mapping[str, str] | None = None, checkout: str | None = None,
                 prefix: Sequence[str] = ()) -> None:
        """`checkout`: run the `shepherd` of another checkout (`python -m` imports from its working
        directory first), for benchmarks against a previous version. `prefix`: a command the
        interpreter runs under (a benchmark's `valgrind --tool=callgrind ...`)."""
        self.args = list(args)
        self.log = tempfile.NamedTemporaryFile(prefix="shepherd-test-", suffix=".log", delete=False)  # noqa: SIM115
        child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "shepherd", *self.args], stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=checkout or ROOT, env=child_env)
        try:
            wait_until(lambda: self._ready(ready_url), timeout, 0.05, f"{ready_url} to answer")
        except AssertionError:
            self.stop()
            raise AssertionError(f"process {' '.join(self.args)} did not start:\n{self.output()}") from None

    def _ready(self, url: str) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"process exited with {self.proc.returncode}:\n{self.output()}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Sim(Process):
    """`shepherd mock-worker` serving one or many ports."""

    def __init__(self, count: int = 1, *flags: str, ports: Sequence[int] | None = None) -> None:
        self.ports = list(ports) if ports else free_ports(count)
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        super().__init__(["mock-worker", "--ports", *map(str, self.ports), *flags], self.urls[-1] + "/health")

    def stats(self, index: int = 0) -> dict[str, Any]:
        return httpx.get(self.urls[index] + "/sim/stats", timeout=5).json()

    def faults(self, index: int = 0, **changes: Any) -> dict[str, Any]:
        return httpx.post(self.urls[index] + "/sim/faults", json=changes, timeout=5).json()

    def requests(self, index: int = 0) -> list[dict[str, Any]]:
        return httpx.get(self.urls[index] + "/sim/requests", timeout=5).json()

    def reset(self) -> None:
        for url in self.urls:
            httpx.post(url + "/sim/reset", timeout=5)


# With these, no open admin API.
_KEYED_FLAGS = ("--control-plane-api-keys", "--jwt-issuer", "--api-key", "--tenant-api-key")


class Gateway(Process):
    """`shepherd launch` on a free port; waits until `expect_workers` workers are registered.

    The admin API is closed by default; a gateway started without any key flags gets
    `--allow-unauthenticated-admin` so tests can call /workers (pass `open_admin=False` to test the
    closed default)."""

    def __init__(self, worker_urls: Sequence[str] = (), *flags: str, expect_workers: int | None = None,
                 admin_key: str | None = None, scheme: str = "http", env: Mapping[str, str] | None = None,
                 checkout: str | None = None, open_admin: bool | None = None,
                 routed_worker_header: str | None = "url", start_timeout: float = 20.0,
                 prefix: Sequence[str] = ()) -> None:
        self.port, self.metrics_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        args = ["launch", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info",
                "--worker-startup-check-interval", "0.2", "--prometheus-host", "127.0.0.1",
                "--prometheus-port", str(self.metrics_port),
                "--shutdown-settle-secs", "0"]  # tests stop gateways often; a test may pass its own
        if worker_urls:
            args += ["--worker-urls", *worker_urls]
        if open_admin is None:
            open_admin = not any(flag in _KEYED_FLAGS for flag in flags)
        if open_admin:
            args.append("--allow-unauthenticated-admin")
        if "--policy" not in flags:  # tests count requests per worker; SMG's default (cache_aware) would pin them
            args += ["--policy", "round_robin"]
        if routed_worker_header is not None:  # tests tell workers apart by URL; None: the default (ids)
            args += ["--routed-worker-header", routed_worker_header]
        self._history_dir: str | None = None
        if "--history-backend" not in flags and "--history-data-dir" not in flags:
            # The default SQLite history goes to a private folder, not the user's data dir.
            self._history_dir = tempfile.mkdtemp(prefix="shepherd-history-")
            args += ["--history-data-dir", self._history_dir]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._admin_headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        super().__init__([*args, *flags], self.url + "/liveness", timeout=start_timeout, env=env, checkout=checkout,
                         prefix=prefix)
        expected = len(worker_urls) if expect_workers is None else expect_workers
        if open_admin or admin_key:
            wait_until(lambda: self._registered(expected), 60, 0.2, message=f"{expected} workers to register")
        elif expected:
            wait_until(lambda: httpx.get(self.url + "/readiness", timeout=5, verify=False).status_code == 200, 20,
                       message="a ready worker")

    def _ready(self, url: str) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"process exited with {self.proc.returncode}:\n{self.output()}")
        try:
            return httpx.get(url, timeout=1, verify=False).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        code = super().stop(sig, timeout)
        if self._history_dir is not None:
            shutil.rmtree(self._history_dir, ignore_errors=True)
        return code

    def _registered(self, expected: int) -> bool:
        try:
            return len(self.workers()) >= expected
        except httpx.TimeoutException:  # a busy machine: the gateway is still loading (tokenizers)
            return False

    def workers(self) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/workers", headers=self._admin_headers, timeout=5, verify=False)
        return response.json()["workers"]  # type: ignore[no-any-return]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` on /metrics whose labels include `labels`."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(httpx.get(self.metrics_url, timeout=5).text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


class GrpcSim(Process):
    """`shepherd mock-worker --grpc`: gRPC engines, each with an HTTP control port for the /sim/ routes."""

    def __init__(self, count: int = 1, *flags: str, runtime: str = "sglang", timeout: float = 20.0) -> None:
        ports = free_ports(2 * count)
        self.ports, self.control_ports = ports[:count], ports[count:]
        self.targets = [f"grpc://127.0.0.1:{p}" for p in self.ports]
        self.controls = [f"http://127.0.0.1:{p}" for p in self.control_ports]
        super().__init__(["mock-worker", "--grpc", "--runtime", runtime, "--ports", *map(str, self.ports),
                          "--control-ports", *map(str, self.control_ports), *flags], self.controls[-1] + "/health",
                         timeout)

    def stats(self, index: int = 0) -> dict[str, Any]:
        return httpx.get(self.controls[index] + "/sim/stats", timeout=5).json()

    def faults(self, index: int = 0, **changes: Any) -> dict[str, Any]:
        return httpx.post(self.controls[index] + "/sim/faults", json=changes, timeout=5).json()

    def requests(self, index: int | None = None) -> list[dict[str, Any]]:
        indexes = range(len(self.controls)) if index is None else [index]
        return [r for i in indexes for r in httpx.get(self.controls[i] + "/sim/requests", timeout=5).json()]

    def reset(self) -> None:
        for url in self.controls:
            httpx.post(url + "/sim/reset", timeout=5)

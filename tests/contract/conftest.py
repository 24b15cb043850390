"""The four routing paths, each as a small fleet of real simulator processes behind a real gateway.

Every path is driven through the same `RoutingPath` handle (fault a worker, count what it received, read
what credentials it saw, add a spare worker and kill it), so one test body checks all four paths.
The simulators live for the module; each test gets a fresh gateway (breaker state never leaks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from shepherd.testing import Gateway, GrpcSim, Process, Sim, free_ports, wait_until

GATEWAY_KEY = "gw-serving-key-contract"
ADMIN_KEY = "gw-admin-key-contract"
WORKER_KEY = "worker-key-contract"
PATHS = ("http", "pd", "grpc", "external")
CREDENTIALS = ("authorization", "x-api-key")

GATEWAY_FLAGS = (
    "--policy", "round_robin", "--api-key", GATEWAY_KEY,
    "--control-plane-api-keys", f"ops:ops:admin:{ADMIN_KEY}",
    "--cb-failure-threshold", "3", "--cb-window-duration-secs", "120", "--cb-timeout-duration-secs", "120",
    "--retry-max-retries", "4", "--retry-initial-backoff-ms", "20", "--retry-max-backoff-ms", "200",
    "--request-timeout-secs", "20", "--health-check-interval-secs", "120",
)


@dataclass
class Fleet:
    """The simulator processes of one path (kept for the module)."""

    name: str
    model: str
    processes: list[Any]  # Sim | GrpcSim
    faultable: list[tuple[Any, int]]  # the two workers tests fault: (process, port index)
    gateway_args: list[str]
    expect_workers: int
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


class RoutingPath:
    """One path's fleet behind a fresh gateway, with the same handles for every path."""

    def __init__(self, fleet: Fleet, gateway: Gateway) -> None:
        self.fleet = fleet
        self.name = fleet.name
        self.model = fleet.model
        self.gateway = gateway
        self.admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    # -- the faultable workers: two of them (decode workers on PD, providers on external) -------

    def worker_url(self, index: int) -> str:
        sim, port = self.fleet.faultable[index]
        return str(sim.targets[port] if isinstance(sim, GrpcSim) else sim.urls[port])

    def _faults(self, index: int, **changes: Any) -> None:
        sim, port = self.fleet.faultable[index]
        sim.faults(port, **changes)

    def _stats(self, index: int) -> dict[str, Any]:
        sim, port = self.fleet.faultable[index]
        return sim.stats(port)  # type: ignore[no-any-return]

    def fail_with_500(self, index: int) -> None:
        if self.name == "grpc":
            self._faults(index, error_code="INTERNAL")
        else:
            self._faults(index, error_rate=1.0, error_status=500)

    def heal(self, index: int) -> None:
        """Undo fail_with_500."""
        if self.name == "grpc":
            self._faults(index, error_code="")
        else:
            self._faults(index, error_rate=0.0)

    def break_streams(self) -> None:
        for index in (0, 1):
            if self.name == "grpc":
                self._faults(index, error_code="INTERNAL", error_after_chunks=2)
            else:
                self._faults(index, drop_after_chunks=2)

    def hang(self) -> None:
        for index in (0, 1):
            self._faults(index, hang=True)

    def received(self, index: int) -> int:
        """Inference requests the worker received."""
        return int(self._stats(index)["requests_total"])

    def aborted(self) -> int:
        """Requests the workers saw abandoned by the gateway."""
        key = "aborts" if self.name == "grpc" else "aborted"
        return sum(int(self._stats(index)[key]) for index in (0, 1))

    def credentials_seen(self) -> list[str]:
        """Every credential value any worker of the fleet received, on every recorded request."""
        seen: list[str] = []
        for sim in self.fleet.processes:
            if isinstance(sim, GrpcSim):
                records = sim.requests()
                seen.extend(v for r in records for k, v in r.get("metadata", {}).items() if k in CREDENTIALS)
                continue
            for port in range(len(sim.urls)):
                records = sim.requests(port)
                seen.extend(v for r in records for k, v in r["headers"].items() if k.lower() in CREDENTIALS)
        return seen

    # -- the gateway ------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {GATEWAY_KEY}"}
        return httpx.Client(base_url=self.gateway.url, headers=headers, timeout=30, **kwargs)

    def chat(self, stream: bool = False, max_tokens: int = 8, content: str = "contract test") -> dict[str, Any]:
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens, "stream": stream}

    def workers(self) -> list[dict[str, Any]]:
        return httpx.get(self.gateway.url + "/workers", headers=self.admin, timeout=5).json()["workers"]

    def breaker(self, url: str) -> dict[str, Any]:
        for worker in self.workers():
            if worker["url"] == url:
                return worker["circuit_breaker"]  # type: ignore[no-any-return]
        raise AssertionError(f"{url} is not registered")

    def metric(self, name: str, **labels: str) -> float:
        return self.gateway.metric(name, **labels)

    @contextlib.contextmanager
    def spare_worker(self) -> Iterator[tuple[str, Process]]:
        """A third worker of the faultable kind, registered through the admin API; yields (url, process)."""
        name = self.name
        process: Process
        if name == "grpc":
            grpc_sim = GrpcSim(1, "--model", self.model)
            process, url, spec = grpc_sim, grpc_sim.targets[0], {"url": grpc_sim.targets[0]}
        elif name == "external":
            sim = Sim(1, "--provider", "openai", "--api-key", WORKER_KEY, "--model", self.model, "--engine", "canned")
            process, url = sim, sim.urls[0]
            spec = {"url": url, "runtime_type": "external", "provider": "openai", "api_key": WORKER_KEY}
        else:
            flags = ("--role", "decode", "--pd-timeout-secs", "2") if name == "pd" else ("--model", self.model)
            sim = Sim(1, "--api-key", WORKER_KEY, *flags)
            process, url = sim, sim.urls[0]
            spec = {"url": url, "api_key": WORKER_KEY, **({"worker_type": "decode"} if name == "pd" else {})}
        try:
            added = httpx.post(self.gateway.url + "/workers", json=spec, headers=self.admin, timeout=5)
            assert added.status_code == 202, added.text
            wait_until(lambda: any(w["url"] == url for w in self.workers()), 20, message="the spare to register")
            yield url, process
        finally:
            process.stop()


def _fleet(name: str) -> Fleet:
    if name == "http":
        sim = Sim(2, "--model", "mock-model", "--api-key", WORKER_KEY, "--output-tokens", "16")
        return Fleet(name, "mock-model", [sim], [(sim, 0), (sim, 1)],
                     ["--worker-urls", *sim.urls, "--worker-api-key", WORKER_KEY], 2)
    if name == "pd":
        bootstrap = free_ports(1)
        prefill = Sim(1, "--role", "prefill", "--bootstrap-ports", str(bootstrap[0]), "--api-key", WORKER_KEY)
        decode = Sim(2, "--role", "decode", "--pd-timeout-secs", "2", "--api-key", WORKER_KEY, "--output-tokens", "16")
        args = ["--pd-disaggregation", "--prefill", prefill.urls[0], str(bootstrap[0]), "--worker-api-key", WORKER_KEY]
        for url in decode.urls:
            args += ["--decode", url]
        return Fleet(name, "mock-model", [prefill, decode], [(decode, 0), (decode, 1)], args, 3)
    if name == "grpc":
        grpc_sim = GrpcSim(2, "--model", "qwen-contract", "--output-tokens", "16")
        return Fleet(name, "qwen-contract", [grpc_sim], [(grpc_sim, 0), (grpc_sim, 1)],
                     ["--worker-urls", *grpc_sim.targets, "--worker-api-key", WORKER_KEY], 2)
    providers = [Sim(1, "--provider", "openai", "--api-key", WORKER_KEY, "--model", "gpt-sim", "--output-tokens", "16")
                 for _ in range(2)]
    args: list[str] = []
    for provider in providers:
        args += ["--external-provider", f"{provider.urls[0]}=openai,key_env=CONTRACT_PROVIDER_KEY"]
    return Fleet(name, "gpt-sim", list(providers), [(providers[0], 0), (providers[1], 0)], args, 2,
                 env={"CONTRACT_PROVIDER_KEY": WORKER_KEY})


@pytest.fixture(scope="module", params=PATHS)
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    built = _fleet(request.param)
    yield built
    built.stop()


@contextlib.contextmanager
def path_with(fleet: Fleet, *flags: str) -> Iterator[RoutingPath]:
    """The fleet behind a fresh gateway started with the contract's flags (then `flags`, which win)."""
    gateway = Gateway([], *fleet.gateway_args, *GATEWAY_FLAGS, *flags, expect_workers=fleet.expect_workers,
                      admin_key=ADMIN_KEY, env=fleet.env)
    try:
        yield RoutingPath(fleet, gateway)
    finally:
        gateway.stop()
        for process in fleet.processes:
            process.reset()


@pytest.fixture
def path(fleet: Fleet) -> Iterator[RoutingPath]:
    with path_with(fleet) as handle:
        yield handle

"""Scale-out: `--workers 2` under a supervisor, and several instances sharing state on a real
redis-server, behind a real HAProxy (Debian's packages, started here)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from shepherd.testing.databases import RedisServer
from shepherd.testing.haproxy import HAProxy
from shepherd.testing.processes import Gateway, Sim, wait_until

pytestmark = pytest.mark.integration

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
FAST_SIM = ("--engine", "canned", "--gen-ms", "5")
MESH_FLAGS = ("--mesh-sync-interval-secs", "0.1", "--history-backend", "memory")


def chat(url: str, **headers: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:  # a new connection: the kernel or the LB picks a process
        return client.post(url + "/v1/chat/completions", json=CHAT, headers=headers)


def workers_of(url: str) -> list[dict]:
    with httpx.Client(timeout=5) as client:
        return client.get(url + "/workers").json()["workers"]  # type: ignore[no-any-return]


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as file:
        return [int(p) for p in file.read().split()]


@pytest.fixture
def engines() -> Iterator[list[Sim]]:
    started = [Sim(1, *FAST_SIM), Sim(1, *FAST_SIM)]
    yield started
    for sim in started:
        sim.stop()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


# -- many processes ---------------------------------------------------------------------------------

def test_workers_2_share_port_registry_and_metrics_and_survive_a_crash(engines: list[Sim]) -> None:
    gateway = Gateway([engines[0].urls[0]], "--workers", "2", "--history-backend", "memory", start_timeout=60)
    try:
        wait_until(lambda: len(children(gateway.proc.pid)) == 2, 20, message="two gateway processes")
        # Both processes serve the port, and both answer on the merged metrics.
        wait_until(lambda: gateway.metric("shepherd_supervisor_processes", state="answering") == 2, 20,
                   message="both processes on /metrics")
        for _ in range(10):
            assert chat(gateway.url).status_code == 200
        assert gateway.metric("smg_http_requests_total", path="/v1/chat/completions") == 10
        # An admin change on one process reaches the other (the local file channel: no Redis here).
        added = httpx.post(gateway.url + "/workers", json={"url": engines[1].urls[0]}, timeout=5).json()
        wait_until(lambda: all(len(workers_of(gateway.url)) == 2 for _ in range(8)), 5,
                   message="the added worker on every process")
        ids = {w["id"] for _ in range(8) for w in workers_of(gateway.url) if w["url"] == engines[1].urls[0]}
        assert ids == {added["worker_id"]}  # one id, whichever process answers
        httpx.delete(gateway.url + f"/workers/{added['worker_id']}", timeout=5)
        wait_until(lambda: all(len(workers_of(gateway.url)) == 1 for _ in range(8)), 5,
                   message="the removed worker gone from every process")
        # A crashed process is restarted; the gateway keeps answering meanwhile.
        victim = children(gateway.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        for _ in range(10):
            assert chat(gateway.url).status_code == 200
        wait_until(lambda: gateway.metric("shepherd_supervisor_restarts_total") == 1, 10, message="a restart")
        wait_until(lambda: len(children(gateway.proc.pid)) == 2 and victim not in children(gateway.proc.pid), 20,
                   message="the crashed process replaced")
    finally:
        assert gateway.stop() == 0  # SIGTERM: both processes drain and exit, then the supervisor
    assert "draining" in gateway.output()


# -- many instances ---------------------------------------------------------------------------------

def _instances(redis: RedisServer, workers: list[str], count: int, *flags: str) -> list[Gateway]:
    return [Gateway(workers, "--mesh-redis-url", redis.url, *MESH_FLAGS, *flags, start_timeout=60)
            for _ in range(count)]


def test_admin_changes_reach_every_instance_within_a_second(redis: RedisServer, engines: list[Sim]) -> None:
    gateways = _instances(redis, [engines[0].urls[0]], 2)
    gateways.append(Gateway([], "--mesh-redis-url", redis.url, *MESH_FLAGS, "--workers", "2", expect_workers=1,
                            start_timeout=60))
    lb = HAProxy([g.port for g in gateways])
    try:
        added = httpx.post(lb.url + "/workers", json={"url": engines[1].urls[0], "labels": {"zone": "a"}},
                           timeout=5).json()
        # Bounds here are generous (a busy test machine); the spread takes one sync interval (0.1 s here).
        for g in gateways:
            wait_until(lambda g=g: any(w["id"] == added["worker_id"] for w in workers_of(g.url)), 10,
                       message="the added worker everywhere")
        httpx.patch(gateways[0].url + f"/workers/{added['worker_id']}", json={"labels": {"zone": "b"}}, timeout=5)
        for g in gateways:
            wait_until(lambda g=g: any(w["labels"] == {"zone": "b"} for w in workers_of(g.url)), 10,
                       message="the patch everywhere")
        httpx.delete(gateways[1].url + f"/workers/{added['worker_id']}", timeout=5)
        for g in gateways:
            wait_until(lambda g=g: len(workers_of(g.url)) == 1, 10, message="the removal everywhere")
        assert all(chat(lb.url).status_code == 200 for _ in range(6))
    finally:
        lb.stop()
        for g in gateways:
            g.stop()


def test_a_worker_found_dead_by_one_instance_is_avoided_by_all(redis: RedisServer, engines: list[Sim]) -> None:
    # Health checks far apart: only the breaker of the instance that sends traffic can notice.
    flags = ("--health-check-interval-secs", "120", "--cb-failure-threshold", "2")
    gateways = _instances(redis, [s.urls[0] for s in engines], 2, *flags)
    try:
        dead = engines[1].urls[0]
        engines[1].kill()
        for _ in range(6):
            assert chat(gateways[0].url).status_code == 200  # retried on the live worker
        wait_until(lambda: not next(w for w in workers_of(gateways[1].url) if w["url"] == dead)["is_healthy"], 10,
                   message="the dead worker out of rotation on the quiet instance")
        for _ in range(6):  # never tried there: answered by the live worker at the first attempt
            response = chat(gateways[1].url)
            assert response.status_code == 200
            assert response.headers["x-smg-routed-worker-id"] == engines[0].urls[0]
        assert gateways[1].metric("smg_worker_retries_total") == 0
    finally:
        for g in gateways:
            g.stop()


def test_a_fleet_wide_rate_limit_holds_across_instances(redis: RedisServer, engines: list[Sim]) -> None:
    rate = 5
    gateways = _instances(redis, [engines[0].urls[0]], 2, "--rate-limit-tokens-per-second", str(rate))
    lb = HAProxy([g.port for g in gateways])
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:  # a burst from several clients at once
            statuses = [r.status_code for r in pool.map(lambda _: chat(lb.url), range(40))]
        elapsed = time.monotonic() - started
        admitted = statuses.count(200)
        assert set(statuses) <= {200, 429}
        # One bucket for the fleet: its burst plus what it refills (per-instance buckets: twice that).
        assert admitted <= rate + rate * elapsed + 1, (admitted, elapsed)
        assert admitted >= rate
        assert sum(g.metric("smg_http_rate_limit_total", result="rejected") for g in gateways) == 40 - admitted
    finally:
        lb.stop()
        for g in gateways:
            g.stop()


def test_a_tenants_limits_hold_for_the_whole_fleet(redis: RedisServer, engines: list[Sim], tmp_path) -> None:
    limits = tmp_path / "limits.yaml"
    limits.write_text('tenants:\n  "header:acme": {requests_per_minute: 4}\n')
    flags = ("--trust-tenant-header", "--tenant-rate-limit-enabled", "--tenant-rate-limit-config", str(limits))
    gateways = _instances(redis, [engines[0].urls[0]], 2, *flags)
    gateways.append(Gateway([], "--mesh-redis-url", redis.url, *MESH_FLAGS, "--workers", "2", *flags,
                            expect_workers=1, start_timeout=60))
    lb = HAProxy([g.port for g in gateways])
    try:
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda _: chat(lb.url, **{"x-smg-tenant-id": "acme"}).status_code, range(16)))
        # Four processes in all, each of which would admit 4 on its own: the fleet admits 4 (plus what
        # refills during the burst: one every 15 s).
        assert set(statuses) <= {200, 429}
        assert 4 <= statuses.count(200) <= 5, statuses
        for g in gateways[:2]:
            assert chat(g.url, **{"x-smg-tenant-id": "other"}).status_code == 200  # an unlimited tenant
    finally:
        lb.stop()
        for g in gateways:
            g.stop()


def test_cache_aware_instances_learn_where_the_others_sent_a_prompt(redis: RedisServer,
                                                                    engines: list[Sim]) -> None:
    gateways = _instances(redis, [s.urls[0] for s in engines], 2, "--policy", "cache_aware")
    try:
        for i in range(8):
            prompt = f"conversation {i}: " + "a long shared system prompt " * 40
            body = {**CHAT, "messages": [{"role": "user", "content": prompt}]}
            with httpx.Client(timeout=10) as client:
                first = client.post(gateways[0].url + "/v1/chat/completions", json=body)
                time.sleep(0.4)  # a few sync intervals: the event is written, then read by the other
                second = client.post(gateways[1].url + "/v1/chat/completions", json=body)
            assert first.status_code == second.status_code == 200
            # The other instance never saw this prompt, yet sends it where its cache is warm.
            assert second.headers["x-smg-routed-worker-id"] == first.headers["x-smg-routed-worker-id"]
        assert gateways[1].metric("smg_cache_aware_match_ratio") > 0.9
    finally:
        for g in gateways:
            g.stop()


def test_history_on_a_shared_redis_is_shared_by_every_instance(redis: RedisServer, engines: list[Sim]) -> None:
    history = ("--history-backend", "redis", "--redis-url", redis.url.replace("/0", "/1"))
    gateways = [Gateway([engines[0].urls[0]], "--mesh-redis-url", redis.url, "--mesh-sync-interval-secs", "0.1",
                        *history) for _ in range(2)]
    try:
        created = httpx.post(gateways[0].url + "/v1/conversations", json={"metadata": {"topic": "fleet"}},
                             timeout=5).json()
        read = httpx.get(gateways[1].url + f"/v1/conversations/{created['id']}", timeout=5)
        assert read.status_code == 200 and read.json()["metadata"] == {"topic": "fleet"}
    finally:
        for g in gateways:
            g.stop()


class _Load:
    """Requests in a loop from a few threads through the LB; every status counted."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url, self.statuses, self.errors = url, [], []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    self.statuses.append((time.monotonic(), client.post(self.url + "/v1/chat/completions",
                                                                        json=CHAT).status_code))
                except httpx.HTTPError as exc:
                    self.errors.append((time.monotonic(), repr(exc)))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def test_redis_stopped_and_started_under_load_gives_no_client_error(redis: RedisServer, engines: list[Sim]) -> None:
    gateways = _instances(redis, [engines[0].urls[0]], 2, "--rate-limit-tokens-per-second", "10000")
    lb = HAProxy([g.port for g in gateways])
    load = _Load(lb.url)
    try:
        time.sleep(1)
        port = redis.port
        redis.stop()
        wait_until(lambda: httpx.get(gateways[0].url + "/readiness", timeout=5).json()["mesh"]["connected"] is False,
                   10, message="the outage reported in /readiness")
        assert httpx.get(gateways[0].url + "/readiness", timeout=5).status_code == 200  # still in rotation
        assert gateways[0].metric("smg_mesh_store_up") == 0
        # An admin change during the outage is applied here and spreads once Redis is back.
        added = httpx.post(gateways[0].url + "/workers", json={"url": engines[1].urls[0]}, timeout=5).json()
        time.sleep(1)
        restarted = RedisServer(port=port)
        try:
            wait_until(lambda: all(httpx.get(g.url + "/readiness", timeout=5).json()["mesh"]["connected"]
                                   for g in gateways), 10, message="Redis back on every instance")
            wait_until(lambda: any(w["id"] == added["worker_id"] for w in workers_of(gateways[1].url)), 10,
                       message="the change made during the outage caught up")
            time.sleep(0.5)
            # Redis came back empty: the instances wrote back what they knew, nothing was removed.
            for g in gateways:
                assert sorted(w["url"] for w in workers_of(g.url)) == sorted(s.urls[0] for s in engines)
        finally:
            load.stop()
            restarted.stop()
        assert load.errors == []
        assert {status for _, status in load.statuses} == {200}
        assert len(load.statuses) > 50
        assert "unreachable" in gateways[0].output() and "answers again" in gateways[0].output()
    finally:
        load.stop()
        lb.stop()
        for g in gateways:
            g.stop()


def test_an_instance_killed_under_load_loses_only_its_in_flight_requests(redis: RedisServer,
                                                                         engines: list[Sim]) -> None:
    gateways = _instances(redis, [engines[0].urls[0]], 2)
    lb = HAProxy([g.port for g in gateways])
    threads = 4
    load = _Load(lb.url, threads)
    try:
        time.sleep(1)
        killed_at = time.monotonic()
        gateways[0].kill()
        time.sleep(2)
    finally:
        load.stop()
        lb.stop()
        for g in gateways:
            g.stop()
    failures = [at for at, status in load.statuses if status != 200] + [at for at, _ in load.errors]
    # At most one request per client thread was on the killed instance when it died; the LB sends
    # nothing there afterwards (refused connections are re-dispatched).
    assert len(failures) <= threads, (failures, load.errors)
    last_failure = max(failures, default=killed_at)
    assert sum(1 for at, status in load.statuses if at > last_failure and status == 200) > 10

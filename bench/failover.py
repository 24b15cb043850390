"""What a dead worker costs clients, how long until traffic routes around it, and how long until a
restarted worker serves again.

    python -m bench.failover [--seconds 18] [--kill-at 4] [--restart-at 10] [--concurrency 16]

Three simulated engines (separate processes) serve steady closed-loop chat traffic through the
gateway; one engine is killed mid-run and started again on the same port later. The report gives
client-visible errors, when the circuit breaker opened and when the health checker took the worker
out (seconds after the kill), the seconds from the restarted engine answering /health until the
gateway routes to it again (target: within two health intervals), and the latency before the kill,
right after it and after detection, as ratios to the before-kill baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time

import httpx
import orjson

from shepherd.testing import Gateway, Sim
from shepherd.transport.lean import LeanTransport

BODY = orjson.dumps({"model": "mock-model", "messages": [{"role": "user", "content": "status report"}],
                     "max_tokens": 16})


Record = tuple[float, float, int, str]  # (started, finished, status, the worker that served it)


async def drive(url: str, concurrency: int, seconds: float, records: list[Record]) -> None:
    pool = LeanTransport(connect_timeout=5, idle_timeout=30)
    deadline = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                response = await pool.request("POST", url, "/v1/chat/completions",
                                              {"content-type": "application/json"}, BODY, 60)
                await response.read()
                status = response.status
                worker = response.headers.get("x-smg-routed-worker-id", "")
            except Exception:
                status, worker = 0, ""
            records.append((started, time.monotonic(), status, worker))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    await pool.close()


def watch(gateway: Gateway, dead_url: str, stop: threading.Event, seen: dict[str, float]) -> None:
    """Note when the dead worker's breaker opened and when it left rotation."""
    with httpx.Client(timeout=5) as http:
        while not stop.is_set():
            for worker in http.get(gateway.url + "/workers").json()["workers"]:
                if worker["url"] != dead_url:
                    continue
                now = time.monotonic()
                if worker.get("circuit_breaker", {}).get("state") == "open":
                    seen.setdefault("breaker_open", now)
                if worker["status"] != "ready":
                    seen.setdefault("out_of_rotation", now)
            time.sleep(0.02)


def latency_ms(records: list[Record], start: float, end: float, q: float) -> float:
    values = sorted(finish - begin for begin, finish, status, _ in records if start <= begin < end and status == 200)
    if not values:
        return float("nan")
    return 1000 * (statistics.median(values) if q == 0.5 else values[min(len(values) - 1, int(q * len(values)))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=18)
    parser.add_argument("--kill-at", type=float, default=4)
    parser.add_argument("--restart-at", type=float, default=10, help="seconds into the run (0: no restart)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--health-check-interval-secs", type=float, default=1.0)
    parser.add_argument("--health-failure-threshold", type=int, default=2)
    parser.add_argument("--health-success-threshold", type=int, default=1)
    args = parser.parse_args()

    sims = [Sim(1) for _ in range(3)]
    urls = [s.urls[0] for s in sims]
    gateway = Gateway(urls, "--policy", "round_robin", "--log-level", "warn",
                      "--health-check-interval-secs", str(args.health_check_interval_secs),
                      "--health-failure-threshold", str(args.health_failure_threshold),
                      "--health-success-threshold", str(args.health_success_threshold))
    records: list[Record] = []
    seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(gateway, urls[0], stop, seen), daemon=True)
    kill_time: list[float] = []
    restart_time: list[float] = []

    def killer() -> None:
        time.sleep(args.kill_at)
        kill_time.append(time.monotonic())
        sims[0].kill()
        if args.restart_at > args.kill_at:
            time.sleep(args.restart_at - args.kill_at)
            sims[0] = Sim(1, ports=sims[0].ports)  # returns once the engine answers /health
            restart_time.append(time.monotonic())

    try:
        watcher.start()
        threading.Thread(target=killer, daemon=True).start()
        started = time.monotonic()
        asyncio.run(drive(gateway.url, args.concurrency, args.seconds, records))
    finally:
        stop.set()
        gateway.stop()
        for sim in sims:
            sim.stop()

    killed = kill_time[0]
    detected = seen.get("out_of_rotation", float("inf"))
    errors = sum(1 for _, _, status, _ in records if status != 200)
    before = (latency_ms(records, started, killed, 0.5), latency_ms(records, started, killed, 0.99))
    during = (latency_ms(records, killed, min(detected, killed + 2), 0.5),
              latency_ms(records, killed, min(detected, killed + 2), 0.99))
    back_at = restart_time[0] if restart_time else float("inf")
    after = (latency_ms(records, detected, back_at, 0.5), latency_ms(records, detected, back_at, 0.99))
    windows = [("before the kill (baseline)", before), ("kill until detection", during), ("after detection", after)]
    if restart_time:
        windows.append(("after the restart", (latency_ms(records, back_at, float("inf"), 0.5),
                                              latency_ms(records, back_at, float("inf"), 0.99))))
    restart = f", restarted at {args.restart_at:g}s" if restart_time else ""
    print(f"3 workers, {args.concurrency} concurrent clients, one worker killed {args.kill_at:.0f}s into "
          f"a {args.seconds:.0f}s run{restart}; health checks every {args.health_check_interval_secs:g}s, "
          f"{args.health_failure_threshold} failures to mark, {args.health_success_threshold} to bring back")
    print(f"requests: {len(records)}, client-visible errors: {errors}")
    for label, key in (("circuit breaker opened", "breaker_open"), ("health checker took it out", "out_of_rotation")):
        at = seen.get(key)
        print(f"{label:<28} {'never' if at is None else f'{at - killed:.2f}s after the kill'}")
    if restart_time:
        restarted = restart_time[0]
        served = [begin for begin, _, status, worker in records
                  if worker == urls[0] and status == 200 and begin >= restarted]
        interval = args.health_check_interval_secs
        delay = min(served) - restarted if served else 0.0
        back = f"{delay:.2f}s after it answered /health ({delay / interval:.2f} health intervals; target <= 2)" \
            if served else "never within the run"
        print(f"{'restarted worker served':<28} {back}")
    print(f"{'window':<30} {'p50 ms':>8} {'p99 ms':>8} {'p50 ratio':>10} {'p99 ratio':>10}")
    for label, (p50, p99) in windows:
        print(f"{label:<30} {p50:>8.1f} {p99:>8.1f} {p50 / before[0]:>10.2f} {p99 / before[1]:>10.2f}")


if __name__ == "__main__":
    main()

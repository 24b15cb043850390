"""The control plane reaches gRPC workers too: health through HealthCheck, load through GetLoads."""

from __future__ import annotations

import httpx

from shepherd.testing import Gateway, GrpcSim, wait_until


def test_health_and_load_of_grpc_workers() -> None:
    sim = GrpcSim(2, "--model", "qwen3-cp")
    gw = Gateway(sim.targets, "--health-check-interval-secs", "0.2", "--health-failure-threshold", "2",
                 "--health-success-threshold", "1", "--load-monitor-interval", "0.2", "--policy", "least_load")
    try:
        def worker(target: str) -> dict:
            return next(w for w in gw.workers() if w["url"] == target)

        wait_until(lambda: all("engine_load" in worker(t) for t in sim.targets), 10, message="GetLoads reports")
        assert worker(sim.targets[0])["engine_load"]["max_tokens"] > 0

        sim.faults(0, healthy=False)
        wait_until(lambda: worker(sim.targets[0])["status"] == "not_ready", 10, message="HealthCheck failing")
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            for _ in range(4):
                reply = http.post("/v1/chat/completions", json={
                    "model": "qwen3-cp", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
                assert reply.status_code == 200
                assert reply.headers["x-smg-routed-worker-id"] == sim.targets[1]
        sim.faults(0, healthy=True)
        wait_until(lambda: worker(sim.targets[0])["status"] == "ready", 10, message="back in rotation")
    finally:
        gw.stop()
        sim.stop()

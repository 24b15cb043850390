"""What traffic recording costs: gateway throughput with --record-traffic on, as a ratio to off, same run.

    python -m bench.recording_overhead [--seconds 8] [--rounds 3] [--concurrency 32] [--prompt-kb 4]

The backend is the simulator's canned engine (instant answers), so the gateway's own cost is what
shows. Every request carries a system prompt of --prompt-kb KB, which the recorder hashes block by
block. Variants run interleaved, --rounds times each, and the median is reported. Besides
throughput, the gateway process's own CPU time per request (from /proc) is reported: on a shared
machine it drifts much less than throughput does. Then the recorder's cost per record is timed in
this process, and the recorded files are counted, to show that every request was written.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from bench.loadgen import have_wrk, run_load
from shepherd.testing import Gateway, Sim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompt-kb", type=float, default=4)
    parser.add_argument("--loadgen", choices=("wrk", "python"), default="wrk" if have_wrk() else "python")
    args = parser.parse_args()

    system = ("You are a helpful assistant for the fleet operators. " * 100)[:int(args.prompt_kb * 1024)]
    bodies = {
        "chat": json.dumps({"model": "mock-model", "max_tokens": 16, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": "hello"}]}).encode(),
    }
    bodies["stream"] = json.dumps({**json.loads(bodies["chat"]), "stream": True,
                                   "stream_options": {"include_usage": True}}).encode()
    scratch = tempfile.mkdtemp(prefix="shepherd-recording-bench-")
    variants = {
        "recording off (baseline)": [],
        "recording on": ["--record-traffic", os.path.join(scratch, "hashes")],
        "recording on + prompts": ["--record-traffic", os.path.join(scratch, "prompts"), "--record-prompts"],
    }
    sim = Sim(1, "--engine", "canned", "--record-requests", "0")
    gateways = {name: Gateway(sim.urls, "--log-level", "warn", *flags) for name, flags in variants.items()}
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    sent: dict[str, int] = dict.fromkeys(variants, 0)
    try:
        for _ in range(args.rounds):
            for scenario, body in bodies.items():
                for name, gateway in gateways.items():
                    cpu_before = _cpu_secs(gateway.proc.pid)
                    result = run_load(gateway.url + "/v1/chat/completions", body, args.concurrency, args.seconds,
                                      use_wrk=args.loadgen == "wrk")
                    done = max(1.0, result.requests_per_sec * args.seconds)
                    cpu_us = (_cpu_secs(gateway.proc.pid) - cpu_before) / done * 1e6
                    runs.setdefault((scenario, name), []).append((result.requests_per_sec, result.p50_ms, cpu_us))
                    sent[name] += round(result.requests_per_sec * args.seconds)
                    time.sleep(0.5)
    finally:
        for gateway in gateways.values():
            gateway.stop()
        sim.stop()

    print(f"load generator: {args.loadgen}; concurrency {args.concurrency}; {args.prompt_kb:g} KB prompts; "
          f"median of {args.rounds} rounds x {args.seconds:g}s")
    print(f"{'scenario':<8} {'variant':<26} {'req/s':>9} {'p50 ms':>8} {'throughput vs off':>18} "
          f"{'gateway CPU us/req':>19} {'CPU vs off':>11}")
    for scenario in bodies:
        baseline = statistics.median(r for r, _, _ in runs[(scenario, "recording off (baseline)")])
        cpu_baseline = statistics.median(c for _, _, c in runs[(scenario, "recording off (baseline)")])
        for name in variants:
            values = runs[(scenario, name)]
            rate = statistics.median(r for r, _, _ in values)
            p50 = statistics.median(p for _, p, _ in values)
            cpu = statistics.median(c for _, _, c in values)
            print(f"{scenario:<8} {name:<26} {rate:>9,.0f} {p50:>8.2f} {rate / baseline:>18.3f} {cpu:>19.0f} "
                  f"{cpu / cpu_baseline:>11.3f}")
    print(f"recorder cost per record, in this process ({args.prompt_kb:g} KB prompt): "
          f"{_record_cost_us(json.loads(bodies['stream'])):.1f} us")
    for name, flags in variants.items():
        if not flags:
            continue
        directory = flags[1]
        files = sorted(os.listdir(directory))
        lines = sum(_count_lines(os.path.join(directory, f)) for f in files)
        size = sum(os.path.getsize(os.path.join(directory, f)) for f in files)
        print(f"{name}: {lines:,} records in {len(files)} file(s), {size / max(lines, 1):,.0f} bytes per record "
              f"(about {sent[name]:,} requests sent)")


def _cpu_secs(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _record_cost_us(body: dict[str, object], count: int = 20_000) -> float:
    from shepherd.config import RecordingConfig
    from shepherd.recording.recorder import TrafficRecorder

    recorder = TrafficRecorder(RecordingConfig(directory=tempfile.mkdtemp(), max_buffer_bytes=1 << 40))
    started = time.perf_counter()
    for _ in range(count):
        recorder.record(arrived=time.time(), api="/v1/chat/completions", body=body, headers={}, status=200,
                        worker="http://127.0.0.1:1", usage=(1000, 16, 0), ttft=0.01, duration=0.02)
    return (time.perf_counter() - started) / count * 1e6


def _count_lines(path: str) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


if __name__ == "__main__":
    main()

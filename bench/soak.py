"""Gateway memory: RSS per idle keep-alive client connection, and RSS over a bounded soak.

    python -m bench.soak [--minutes 3] [--concurrency 16] [--idle 10000] [--streams 1000] [--sample-secs 10]

One gateway in front of nginx (bench/nginx.py). wrk drives chat and streamed chat alternately
for `--minutes`, and the gateway's RSS is sampled every `--sample-secs`: the report is each sample
as a ratio to the first one after a warm-up minute (or the first sample, for shorter soaks), and
the growth per hour fitted to the samples. Then `--idle` client connections are opened, each sends
one request and sits idle on keep-alive; the gateway's RSS before and after gives the cost per
10,000 idle connections (ratio: against the RSS before; on a fresh gateway, so memory freed by
the streams does not hide it). Before those, `--streams` streamed chats that nginx trickles are
held open at once on the soaked gateway: the RSS before and during gives the cost per 1,000
concurrent streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time
from typing import Any

from bench.loadgen import run_load
from bench.nginx import Nginx
from shepherd.testing import Gateway

CHAT = json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM = json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _open_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(CHAT)).encode() + b"\r\n\r\n" + CHAT)
    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, 500):  # in batches, under the listen backlog
        async def one() -> asyncio.StreamWriter | None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                await reader.readuntil(b"\r\n\r\n")
                return writer
            except OSError:
                return None
        batch = await asyncio.gather(*(one() for _ in range(min(500, count - start))))
        writers.extend(w for w in batch if w is not None)
    await asyncio.sleep(2)  # let the gateway settle with all of them open
    return writers


async def _open_streams(port: int, count: int) -> tuple[list[asyncio.StreamWriter], int]:
    """`count` streamed chats that nginx trickles (X-Bench-Slow): each is open once its first event came."""
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"X-Bench-Slow: 1\r\nContent-Length: " + str(len(STREAM)).encode() + b"\r\n\r\n" + STREAM)
    writers: list[asyncio.StreamWriter] = []
    failed = 0
    for start in range(0, count, 250):
        async def one() -> asyncio.StreamWriter | None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                if not head.startswith(b"HTTP/1.1 200"):
                    writer.close()
                    return None
                await asyncio.wait_for(reader.readuntil(b"\n\n"), 30)  # the first event: the stream is flowing
                return writer
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                return None
        batch = await asyncio.gather(*(one() for _ in range(min(250, count - start))))
        writers.extend(w for w in batch if w is not None)
        failed += sum(1 for w in batch if w is None)
    await asyncio.sleep(2)
    return writers, failed


def _hold(pid: int, opener: Any) -> tuple[float, float, int, int]:
    """RSS before and while the connections `opener` makes are open; how many opened and failed."""
    before = rss_mib(pid)
    loop = asyncio.new_event_loop()
    result = loop.run_until_complete(opener)
    writers, failed = result if isinstance(result, tuple) else (result, 0)
    during = rss_mib(pid)
    for writer in writers:
        writer.close()
    loop.run_until_complete(asyncio.sleep(0.5))
    loop.close()
    return before, during, len(writers), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--streams", type=int, default=1_000, help="concurrent streams held open for their RSS")
    parser.add_argument("--sample-secs", type=float, default=10)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.idle + 1024)), hard))
    backend = Nginx()
    gateway = Gateway([backend.url], "--policy", "round_robin", "--log-level", "warn")
    pid = gateway.proc.pid
    try:
        run_load(gateway.url + "/v1/chat/completions", CHAT, args.concurrency, 3)
        samples: list[tuple[float, float]] = []
        started = time.monotonic()
        deadline = started + 60 * args.minutes
        turn = 0
        errors = 0
        while time.monotonic() < deadline:
            body = STREAM if turn % 2 else CHAT
            headers = {"X-Bench-Stream": "1"} if turn % 2 else {}
            result = run_load(gateway.url + "/v1/chat/completions", body, args.concurrency,
                              max(1.0, min(args.sample_secs, deadline - time.monotonic())), headers=headers)
            errors += result.errors
            samples.append((time.monotonic() - started, rss_mib(pid)))
            turn += 1
        # After the soak: streams held open, on top of the RSS at rest.
        quiet, streaming, streams, failed = _hold(pid, _open_streams(gateway.port, args.streams))
        per_1k = (streaming - quiet) * 1_000 / streams if streams else 0.0
        stream_line = (f"concurrent streams: {streams:,} open ({failed} failed to open); RSS {quiet:.1f} -> "
                       f"{streaming:.1f} MiB; {per_1k:.1f} MiB per 1,000 ({per_1k / quiet:.2f}x the RSS before)")
        # The idle connections on a gateway of their own: memory the streams left to the allocator
        # would otherwise hide theirs.
        gateway.stop()
        gateway = Gateway([backend.url], "--policy", "round_robin", "--log-level", "warn")
        run_load(gateway.url + "/v1/chat/completions", CHAT, args.concurrency, 3)
        at_rest, with_idle, opened, _ = _hold(gateway.proc.pid, _open_idle(gateway.port, args.idle))
        per_10k = (with_idle - at_rest) * 10_000 / opened if opened else 0.0
        idle_line = (f"idle keep-alive connections (a fresh gateway): {opened:,} open; RSS {at_rest:.1f} -> "
                     f"{with_idle:.1f} MiB; {per_10k:.1f} MiB per 10,000 ({per_10k / at_rest:.2f}x the RSS before)")
    finally:
        gateway.stop()
        backend.stop()
    warm = [s for s in samples if s[0] >= 60] if args.minutes > 2 else samples
    base = warm[0][1]
    print(idle_line)
    print(stream_line)
    print(f"soak: {len(samples)} samples over {args.minutes:g} min, {errors} failed requests; RSS as a ratio to "
          f"{base:.1f} MiB (the first sample{' after a warm-up minute' if args.minutes > 2 else ''}):")
    print("  " + " ".join(f"{rss / base:.3f}" for _, rss in warm))
    if len(warm) >= 3:
        slope = statistics.linear_regression([t for t, _ in warm], [r for _, r in warm]).slope
        print(f"  fitted growth: {slope * 3600:+.1f} MiB per hour ({slope * 3600 / base:+.3f}x per hour)")


if __name__ == "__main__":
    main()

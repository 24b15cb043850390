"""Instructions the gateway executes per proxied request, counted by callgrind: a figure without noise.

    python -m bench.proxy_instructions [--requests 2000] [--rounds 3] [--concurrency 32] [--stream]
                                       [--backend nginx|sim] [--baseline-checkout DIR] [--shepherd-flag=--x ...]

CPU seconds per request (bench/proxy_overhead.py) move by 10-30% from run to run on a shared
machine; a change worth 5% is lost in that. Here each gateway runs under `valgrind --tool=callgrind`
with instrumentation off while it starts (so start-up is quick), then on; for each batch of
`--requests` requests (non-streaming chat, or `--stream`, at `--concurrency`, to the nginx backend,
or with `--backend sim` to the simulator, which sends a stream's events one by one where nginx
sends them in one write) the counters are zeroed before and dumped after, and the batch's instructions (user space only:
the interpreter, C extensions, libc; syscalls' kernel work is not counted) are divided by the
requests it completed. Targets interleave batch by batch; the median per target is printed, and
the ratio shepherd/baseline with its min-max over rounds. Callgrind makes the gateway some 50x
slower, so the client's pace does not matter and a batch of 2,000 takes a minute or so.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import aiohttp

from bench.nginx import Nginx
from bench.proxy_overhead import CHAT, STREAM
from shepherd.testing import Gateway, Sim


class Counted:
    """A gateway under callgrind, with its counters zeroed and read by callgrind_control."""

    def __init__(self, name: str, urls: list[str], flags: list[str], checkout: str | None, out_dir: str) -> None:
        self.name = name
        self._out = os.path.join(out_dir, name)
        prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={self._out}.%p"]
        self.gateway = Gateway(urls, *flags, checkout=checkout, prefix=prefix, start_timeout=300)
        self._pid = self.gateway.proc.pid
        self._control("-i", "on")

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self._pid)], check=True, capture_output=True, timeout=120)

    def zero(self) -> None:
        self._control("-z")

    def instructions(self) -> int:
        """The instructions since the last zero, from a dump made now."""
        before = set(glob.glob(self._out + ".*"))
        self._control("-d")
        deadline = time.monotonic() + 60
        while True:
            new = sorted(set(glob.glob(self._out + ".*")) - before)
            if new:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"callgrind wrote no dump for {self.name}")
            time.sleep(0.1)
        for _ in range(100):  # the dump may still be being written
            with open(new[-1]) as handle:
                for line in handle:
                    if line.startswith(("summary:", "totals:")):
                        os.unlink(new[-1])
                        return int(line.split()[1])
            time.sleep(0.1)
        raise RuntimeError(f"no totals in {new[-1]}")

    def stop(self) -> None:
        self.gateway.stop(timeout=60)


async def _batch(url: str, body: bytes, requests: int, concurrency: int, stream: bool = False) -> int:
    """`requests` POSTs, `concurrency` at a time; returns how many got a 200. nginx answers a stream
    only to requests that ask with its header (bench/nginx.py)."""
    headers = {"Content-Type": "application/json", **({"X-Bench-Stream": "1"} if stream else {})}
    done = 0
    left = requests

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done, left
        while left > 0:
            left -= 1
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                done += response.status == 200

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stream", action="store_true", help="streamed chat answers (64 SSE events)")
    parser.add_argument("--backend", choices=("nginx", "sim"), default="nginx",
                        help="nginx sends a stream's 64 events in one write; the simulator (`shepherd mock-worker`, "
                             "its default cost model) sends them one by one, as an engine does")
    parser.add_argument("--shepherd-flag", action="append", default=[],
                        help="an extra `shepherd launch` flag for both targets (repeatable)")
    parser.add_argument("--baseline-checkout", help="also count the Shepherd of this checkout, as `baseline`")
    parser.add_argument("--json", help="also write the raw counts to this file")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (Debian package `valgrind`)")

    backend: Nginx | Sim = Nginx(stream_events=64) if args.backend == "nginx" else Sim(1)
    backend_url = backend.url if isinstance(backend, Nginx) else backend.urls[0]
    flags = ["--policy", "round_robin", "--log-level", "warn", *args.shepherd_flag]
    body = json.dumps(STREAM if args.stream else CHAT).encode()
    url_path = "/v1/chat/completions"
    out_dir = tempfile.mkdtemp(prefix="callgrind-")
    targets: list[Counted] = []
    counts: dict[str, list[float]] = {}
    try:
        targets.append(Counted("shepherd", [backend_url], flags, None, out_dir))
        if args.baseline_checkout:
            targets.append(Counted("baseline", [backend_url], flags, args.baseline_checkout, out_dir))
        for target in targets:  # warm-up: connections, caches, lazily built objects
            asyncio.run(_batch(target.gateway.url + url_path, body, 200, args.concurrency, args.stream))
        kind = "streamed" if args.stream else "non-streaming"
        print(f"callgrind, {args.rounds} rounds x {args.requests} requests at concurrency {args.concurrency}, "
              f"{kind} chat, {args.backend} backend; flags: {' '.join(flags)}")
        for _ in range(args.rounds):
            for target in targets:
                target.zero()
                ok = asyncio.run(_batch(target.gateway.url + url_path, body, args.requests,
                                        args.concurrency, args.stream))
                per_request = target.instructions() / max(ok, 1)
                counts.setdefault(target.name, []).append(per_request)
                print(f"  {target.name:9} {per_request:12,.0f} instructions/request ({ok} answered)", flush=True)
    finally:
        for target in targets:
            target.stop()
        backend.stop()
        shutil.rmtree(out_dir, ignore_errors=True)

    for name, values in counts.items():
        print(f"{name:9} median {statistics.median(values):,.0f} instructions/request "
              f"({min(values):,.0f}-{max(values):,.0f})")
    if "baseline" in counts:
        ratios = [s / b for s, b in zip(counts["shepherd"], counts["baseline"], strict=False)]
        print(f"shepherd/baseline {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(counts, handle, indent=2)


if __name__ == "__main__":
    main()

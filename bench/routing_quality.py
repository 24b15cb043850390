"""How well each policy uses the engines' prefix caches, measured on the realistic simulator.

    python -m bench.routing_quality [--workers 4] [--seconds 25] [--concurrency 32] [--smg PATH] [--grpc]
                                    [--instances 2 3]

Four (or more) simulated engines with a limited KV cache (LRU-evicted by blocks) serve these
workloads through the gateway:

* multi-turn chat: conversations whose every turn resends the whole history plus a new question;
* shared prefix: a few long system prompts, each followed by a short distinct question;
* long-context RAG: a dozen long documents (a few fit in one engine's cache), picked with a skew,
  each followed by a short question;
* agent loop: sessions that resend a growing transcript of tool results step after step; together
  they need more cache than the fleet has, so engines evict.

`--grpc` runs the engines as gRPC workers (the gateway tokenizes; engines publish KV events, which
precise_cache and SMG's cache_aware both subscribe to).

`--kv-events` (HTTP) has the engines tokenize with the Qwen3 tokenizer (chat template first) and publish
their KV events over ZMQ as vLLM does (PUB + replay ROUTER); precise_cache subscribes to them and
renders each chat into the same token ids (--tokenizer-path). The other routers, SMG's included, route
the same engines as before (no events on the HTTP path). `--one-worker` adds a row with every request
on one more engine that has the whole fleet's KV capacity: no prefix is ever split or duplicated
across engines, so its hit rate is the ceiling a router of the fleet can approach (its TTFT is not
comparable: one engine does the work of all).

For each policy the report gives the prefix-cache hit rate (sum of `cached_tokens` over prompt tokens,
as the engines report it), time to first token p50/p99, completed requests per second, and how the
requests spread over the workers (min and max share; an even split is 1/N each), and the gateway's CPU
time per completed request (all its processes; the bench shares the host with the engines, so a
gateway that burns CPU slows them too). Every figure leaves out the first `--warmup-secs` (2 s) of each
run: all clients send their first request at once, and that cold burst is the same for every router
(in an 11 s run its 32 requests were the whole TTFT p99). SMG's cache_aware runs
against the same engines in the same run when SMG is installed (`make bench-setup`). Engine caches are
flushed between runs.

`--instances 2 3` adds cache_aware rows for that many gateway instances behind a real HAProxy
(round robin per request), each pair once sharing state through a real redis-server
(`--mesh-redis-url`) and once without sharing, to set against the single instance's row.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import orjson

from bench.smg import Smg, find_smg
from shepherd.testing import Gateway, GrpcSim, Sim, free_ports
from shepherd.testing.databases import RedisServer
from shepherd.testing.haproxy import HAProxy
from shepherd.transport.lean import LeanTransport

WORDS = ("the quick brown fox jumps over a lazy dog while engines batch tokens and caches keep prefixes warm "
         "so that routing decisions matter for latency and throughput across every worker in the fleet").split()


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


@dataclass
class Stats:
    ttft: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completed: int = 0
    errors: int = 0
    gateway_cpu_secs: float = float("nan")  # the gateway processes' CPU time during the run


class Client:
    """Streams chat completions and records time to first token and the usage the engine reports."""

    def __init__(self, base_url: str, stats: Stats, max_tokens: int, measure_from: float = 0.0) -> None:
        self._pool = LeanTransport(connect_timeout=5, idle_timeout=30)
        self._base = base_url
        self._stats = stats
        self._max_tokens = max_tokens
        self._measure_from = measure_from  # time.monotonic(): requests started earlier are served, not counted
        self._unmeasured = Stats()

    async def chat(self, messages: list[dict[str, str]]) -> str:
        body = orjson.dumps({"model": "mock-model", "messages": messages, "max_tokens": self._max_tokens,
                             "stream": True, "stream_options": {"include_usage": True}})
        stats = self._stats if time.monotonic() >= self._measure_from else self._unmeasured
        started = time.perf_counter()
        first: float | None = None
        buffer = b""
        try:
            response = await self._pool.request("POST", self._base, "/v1/chat/completions",
                                                {"content-type": "application/json"}, body, 120)
            if response.status != 200:
                await response.read()
                stats.errors += 1
                return ""
            async for chunk in response.iter_chunks():
                buffer += chunk
                if first is None and b'"delta":{"content":' in buffer:
                    first = time.perf_counter()
        except Exception:
            stats.errors += 1
            return ""
        answer = []
        for line in buffer.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            event = orjson.loads(line[6:])
            if event.get("usage"):
                stats.prompt_tokens += event["usage"]["prompt_tokens"]
                details = event["usage"].get("prompt_tokens_details") or {}  # absent when nothing was cached
                stats.cached_tokens += details.get("cached_tokens") or 0
            for choice in event.get("choices", []):
                answer.append(choice.get("delta", {}).get("content") or "")
        stats.completed += 1
        if first is not None:
            stats.ttft.append(first - started)
        return "".join(answer)

    async def close(self) -> None:
        await self._pool.close()


async def multi_turn(client: Client, rng: random.Random, deadline: float, systems: list[str]) -> None:
    """One user at a time holding a conversation of up to 8 turns, then starting a new one."""
    while time.monotonic() < deadline:
        messages = [{"role": "system", "content": rng.choice(systems)}]
        for _ in range(8):
            messages.append({"role": "user", "content": words(rng, 60)})
            answer = await client.chat(messages)
            messages.append({"role": "assistant", "content": answer})
            if time.monotonic() >= deadline:
                return


async def shared_prefix(client: Client, rng: random.Random, deadline: float, systems: list[str]) -> None:
    while time.monotonic() < deadline:
        await client.chat([{"role": "system", "content": rng.choice(systems)},
                           {"role": "user", "content": words(rng, 20)}])


async def rag(client: Client, rng: random.Random, deadline: float, systems: list[str]) -> None:
    """A question about one of the documents; a few documents are asked about far more than others."""
    weights = [1.0 / (rank + 1) for rank in range(len(systems))]
    while time.monotonic() < deadline:
        document = rng.choices(systems, weights)[0]
        await client.chat([{"role": "system", "content": "Answer from this document. " + document},
                           {"role": "user", "content": words(rng, 25)}])


async def agent_loop(client: Client, rng: random.Random, deadline: float, systems: list[str]) -> None:
    """An agent session: each step sends the transcript so far plus the last tool result."""
    while time.monotonic() < deadline:
        messages = [{"role": "system", "content": rng.choice(systems)},
                    {"role": "user", "content": words(rng, 40)}]
        for _ in range(12):
            answer = await client.chat(messages)
            messages.append({"role": "assistant", "content": answer})
            messages.append({"role": "user", "content": "tool result: " + words(rng, 120)})
            if time.monotonic() >= deadline:
                return


# (driver, number of system prompts, words per system prompt). With the default KV capacity a worker
# can hold about a quarter of the multi-turn and shared-prefix workloads' distinct prefixes: the fleet
# can cache everything only if each prefix lives on one worker. RAG's documents need about three
# quarters of the fleet's cache; the agent sessions' transcripts outgrow it.
WORKLOADS = {
    "multi-turn chat": (multi_turn, 16, 100),
    "shared prefix": (shared_prefix, 16, 1000),
    "long-context RAG": (rag, 12, 2500),
    "agent loop": (agent_loop, 4, 300),
}


async def run_workload(url: str, name: str, concurrency: int, seconds: float, max_tokens: int,
                       warmup: float = 0.0, measuring: Callable[[], None] | None = None) -> Stats:
    """`seconds` of measured traffic after `warmup` seconds of the same traffic that is not measured;
    `measuring` is called when the measured part begins."""
    driver, count, length = WORKLOADS[name]
    seed = random.Random(42)
    systems = [f"system {i}: " + words(seed, length) for i in range(count)]
    stats = Stats()
    measure_from = time.monotonic() + warmup
    if measuring is not None:
        asyncio.get_running_loop().call_later(warmup, measuring)
    clients = [Client(url, stats, max_tokens, measure_from) for _ in range(concurrency)]
    deadline = measure_from + seconds
    await asyncio.gather(*(driver(c, random.Random(1000 + i), deadline, systems) for i, c in enumerate(clients)))
    stats_elapsed = time.monotonic() - measure_from
    for client in clients:
        await client.close()
    stats.ttft.sort()
    stats.completed = int(stats.completed)
    stats.elapsed = stats_elapsed  # type: ignore[attr-defined]
    return stats


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of these processes so far (Linux /proc; nan elsewhere)."""
    total = 0.0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")
    return total


class CpuMeter:
    """The CPU time these processes spend from `start()` on."""

    def __init__(self, pids: list[int]) -> None:
        self._pids = pids
        self._before = cpu_seconds(pids)

    def start(self) -> None:
        self._before = cpu_seconds(self._pids)

    def seconds(self) -> float:
        return cpu_seconds(self._pids) - self._before


def gateway_pids(gateway: Gateway | Smg | Fleet) -> list[int]:
    if isinstance(gateway, Fleet):
        return [g.proc.pid for g in gateway.gateways]
    return [gateway.proc.pid]


def reset(sim: Sim | GrpcSim) -> None:
    if isinstance(sim, Sim):
        for url in sim.urls:
            httpx.post(url + "/flush_cache", timeout=10)
    sim.reset()  # the gRPC simulator's reset flushes its caches too


def spread(sim: Sim | GrpcSim) -> tuple[float, float]:
    count = len(sim.targets) if isinstance(sim, GrpcSim) else len(sim.urls)
    counts = [sim.stats(i)["requests_total"] for i in range(count)]
    total = sum(counts) or 1
    return min(counts) / total, max(counts) / total


def wait_index_live(url: str, workers: int, timeout: float = 60.0) -> float:
    """Seconds until every worker's KV-event stream is live: its connect-time replay of the engine's
    history (earlier rows' traffic included) has been read. Measured apart, before the row starts,
    so that the row's figures and CPU are the routing's and not the catching up's."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = httpx.get(url + "/kv_index", timeout=10).json()["workers"]
        if len(state) >= workers and all(w["live"] for w in state.values()):
            break
        time.sleep(0.1)
    return time.monotonic() - started


def report_precise(url: str) -> None:
    """What precise_cache learned and how it spread the load (its /kv_index admin report)."""
    body = httpx.get(url + "/kv_index", timeout=10).json()
    for report in body["policies"].values():
        model = report["ttft_model"]
        shares = " ".join(f"{share:.0%}" for share in report["load_share"].values())
        print(f"    precise_cache: {report['decisions']} decisions ({report['from_kv_index']} scored from KV events), "
              f"load shares {shares}; expected hit rate {report['expected_hit_rate']:.1%}, "
              f"{report['traded_hit_rate']:.1%} traded for queues, {report['share_capped']} decisions share-capped; "
              f"learned TTFT = "
              f"{model['base_secs'] * 1000:.1f} ms + prefill ahead / {model['prefill_tokens_per_sec']:,.0f} tok/s "
              f"({model['observations']:.0f} observations)")
    urls = {w["id"]: w["url"] for w in httpx.get(url + "/workers", timeout=10).json()["workers"]}
    for worker, state in body["workers"].items():
        held = ""
        if urls.get(worker, "").startswith("http"):  # the engine's own count, to set the index against
            engine = httpx.get(urls[worker] + "/sim/kv_events", timeout=10).json()["cached_blocks"]
            held = f" (engine: {engine})"
        print(f"    kv index {worker}: live={state['live']} blocks={state['blocks']}{held} unnamed={state['unnamed']} "
              f"gaps={state['gaps']} resyncs={state['resyncs']}")
class Fleet:
    """`count` cache_aware gateways behind HAProxy, sharing state on Redis or not."""

    def __init__(self, urls: list[str], count: int, redis: RedisServer | None, extra: list[str]) -> None:
        mesh = ["--mesh-redis-url", redis.url, "--mesh-name", f"bench{free_ports(1)[0]}"] if redis else []
        self.gateways = [Gateway(urls, "--policy", "cache_aware", "--log-level", "warn", *mesh, *extra)
                         for _ in range(count)]
        self.lb = HAProxy([g.port for g in self.gateways])
        self.url = self.lb.url

    def stop(self) -> None:
        self.lb.stop()
        for gateway in self.gateways:
            gateway.stop()


def pd_flags(prefill: Sim, decode: Sim, bootstrap: list[int]) -> list[str]:
    flags = ["--pd-disaggregation"]
    for url, port in zip(prefill.urls, bootstrap, strict=True):
        flags += ["--prefill", url, str(port)]
    for url in decode.urls:
        flags += ["--decode", url]
    return flags


def _row(workload: str, label: str, stats: Stats, low: float, high: float) -> str:
    hit = stats.cached_tokens / stats.prompt_tokens if stats.prompt_tokens else 0.0
    stats.ttft.sort()
    p50 = statistics.median(stats.ttft) * 1000 if stats.ttft else float("nan")
    p99 = stats.ttft[int(len(stats.ttft) * 0.99)] * 1000 if stats.ttft else float("nan")
    rate = stats.completed / stats.elapsed  # type: ignore[attr-defined]
    cpu = stats.gateway_cpu_secs * 1000 / stats.completed if stats.completed else float("nan")
    return (f"{workload:<17} {label:<28} {hit:>8.1%} {p50:>7.0f}ms {p99:>7.0f}ms {rate:>7.1f} "
            f"{low:>10.1%} / {high:<8.1%} {cpu:>8.2f}ms {stats.errors:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=25)
    parser.add_argument("--warmup-secs", type=float, default=2.0,
                        help="traffic served before each measured run and left out of its figures: every client's "
                             "first request arrives at once, a cold burst whose queue no router can shorten, and "
                             "at --seconds 11 its thirty-two requests would be the whole TTFT p99")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--kv-capacity-tokens", type=int, default=12000)
    parser.add_argument("--policies", nargs="+",
                        default=["round_robin", "power_of_two", "prefix_hash", "cache_aware", "precise_cache"])
    parser.add_argument("--grpc", action="store_true",
                        help="gRPC engines that publish KV events (no PD runs)")
    parser.add_argument("--smg", help="path to the smg binary (default: .venv-smg/bin/smg, then PATH)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--no-smg", action="store_true", help="skip the SMG comparison")
    parser.add_argument("--no-pd", action="store_true", help="skip the prefill/decode runs")
    parser.add_argument("--instances", type=int, nargs="*", default=[],
                        help="also cache_aware on this many instances behind HAProxy, with and without the mesh")
    parser.add_argument("--kv-events", action="store_true",
                        help="HTTP engines tokenize with Qwen3 and publish KV events over ZMQ; precise_cache uses them")
    parser.add_argument("--one-worker", action="store_true",
                        help="also a row with every request on one engine with the fleet's KV capacity (the ceiling)")
    parser.add_argument("--load-monitor-interval", type=float, default=10.0,
                        help="seconds between engine load polls, for every gateway, SMG's too (both default to 10). "
                             "It matters: a fresher report makes the default overload protection veto busy cache "
                             "holders more often")
    parser.add_argument("--gateway-args", nargs=argparse.REMAINDER, default=[],
                        help="extra flags for every Shepherd gateway (must come last)")
    args = parser.parse_args()

    kv = ["--kv-capacity-tokens", str(args.kv_capacity_tokens), "--record-requests", "0"]
    polling = ["--load-monitor-interval", f"{args.load_monitor_interval:g}"]
    gateway_args = [*polling, *args.gateway_args]
    precise_flags: list[str] = []  # what precise_cache needs on top (the HTTP engines' event endpoints)
    http_flags: list[str] = []
    if args.kv_events and not args.grpc:
        from shepherd.sim.grpc.main import default_tokenizer_path

        tokenizer = default_tokenizer_path()
        ports = free_ports(2 * args.workers)
        events = [f"tcp://127.0.0.1:{p}" for p in ports[:args.workers]]
        replays = [f"tcp://127.0.0.1:{p}" for p in ports[args.workers:]]
        http_flags = ["--tokenizer-path", tokenizer, "--kv-events-endpoints", *events,
                      "--kv-events-replay-endpoints", *replays]
        precise_flags = ["--tokenizer-path", tokenizer, "--tokenizer-cache-enable-l1"]
    sim: Sim | GrpcSim = (GrpcSim(args.workers, "--model", "mock-model", *kv, timeout=90) if args.grpc
                          else Sim(args.workers, *kv, *http_flags))
    if http_flags:
        assert isinstance(sim, Sim)
        for url, event, replay in zip(sim.urls, events, replays, strict=True):
            precise_flags += ["--kv-events-endpoint", url, event, replay]
    targets_urls = sim.targets if isinstance(sim, GrpcSim) else sim.urls
    ceiling: Sim | None = None
    if args.one_worker:
        whole = ["--kv-capacity-tokens", str(args.kv_capacity_tokens * args.workers), "--record-requests", "0"]
        ceiling = Sim(1, *whole, *http_flags[:2])  # the tokenizer, as the fleet's engines have it
    args.no_pd = args.no_pd or args.grpc
    # PD: half the workers prefill (with bootstrap ports), half decode; the prefill policy is what varies.
    half = max(1, args.workers // 2)
    bootstrap = free_ports(half)
    clusters: list[Sim | GrpcSim] = [sim]
    if not args.no_pd:
        prefill = Sim(half, "--role", "prefill", "--bootstrap-ports", *map(str, bootstrap), *kv)
        decode = Sim(half, "--role", "decode", *kv)
        clusters += [prefill, decode]
    smg_binary = find_smg(args.smg)
    kind = "gRPC" if args.grpc else "HTTP"
    print(f"{args.workers} simulated {kind} engines, KV capacity {args.kv_capacity_tokens:,} tokens each; "
          f"{args.concurrency} concurrent clients, {args.seconds:.0f}s per run, {args.max_tokens} tokens per answer")
    rows = []
    targets = [(f"shepherd {p}", p, False) for p in args.policies]
    if args.one_worker:
        targets.append((f"one engine, {args.workers}x cache", "one", False))
    use_smg = bool(smg_binary) and not args.no_smg
    if use_smg:
        targets.append(("smg cache_aware", "smg", False))
    else:
        print("SMG not found: run `make bench-setup` to compare against its cache_aware")
    if not args.no_pd:
        targets += [(f"shepherd PD prefill={p}", p, True) for p in ("round_robin", "cache_aware")]
        if use_smg:
            targets.append(("smg PD prefill=cache_aware", "smg", True))
    for count in args.instances:
        targets += [(f"shepherd cache_aware x{count} mesh", f"fleet:{count}:mesh", False),
                    (f"shepherd cache_aware x{count} no sharing", f"fleet:{count}:alone", False)]
    redis = RedisServer() if args.instances else None
    try:
        for workload in args.workloads:
            for label, policy, pd in targets:
                for cluster in clusters:
                    reset(cluster)
                flags = pd_flags(prefill, decode, bootstrap) if pd else []
                if policy.startswith("fleet:"):
                    _, count, sharing = policy.split(":")
                    gateway: Gateway | Smg | Fleet = Fleet(targets_urls, int(count),
                                                           redis if sharing == "mesh" else None, gateway_args)
                elif policy == "smg":
                    gateway = Smg(smg_binary, [] if pd else targets_urls, "cache_aware",  # type: ignore[arg-type]
                                                 extra_args=[*flags, *polling])
                elif policy == "one":
                    assert ceiling is not None
                    reset(ceiling)
                    gateway = Gateway(ceiling.urls, "--policy", "round_robin", "--log-level", "warn",
                                      *gateway_args, expect_workers=1)
                elif pd:
                    gateway = Gateway([], "--prefill-policy", policy, "--decode-policy", "round_robin",
                                      "--log-level", "warn", *flags, *gateway_args, expect_workers=2 * half)
                else:
                    gateway = Gateway(targets_urls, "--policy", policy, "--log-level", "warn",
                                      *(precise_flags if policy == "precise_cache" else []), *gateway_args,
                                      expect_workers=len(targets_urls))
                try:
                    if policy == "precise_cache" and not pd and (args.grpc or args.kv_events):
                        waited = wait_index_live(gateway.url, len(targets_urls))
                        print(f"    precise_cache: every worker's event stream live after {waited:.1f}s", flush=True)
                    cpu = CpuMeter(gateway_pids(gateway))
                    stats = asyncio.run(run_workload(gateway.url, workload, args.concurrency, args.seconds,
                                                     args.max_tokens, args.warmup_secs, cpu.start))
                    stats.gateway_cpu_secs = cpu.seconds()
                    if policy == "precise_cache" and not pd:
                        report_precise(gateway.url)
                finally:
                    gateway.stop()
                low, high = spread(clusters[1] if pd else ceiling if policy == "one" and ceiling else sim)
                rows.append((workload, label, stats, low, high))
                print(f"  done: {_row(workload, label, stats, low, high)}", flush=True)
    finally:
        for cluster in clusters:
            cluster.stop()
        if ceiling is not None:
            ceiling.stop()
        if redis is not None:
            redis.stop()

    print()
    print(f"{'workload':<17} {'router':<28} {'hit rate':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'req/s':>7} "
          f"{'min/max worker share':>21} {'CPU/req':>10} {'errors':>6}")
    for row in rows:
        print(_row(*row))
    print("(PD rows: worker share is over the prefill workers; hit rate is the prefill side's, as the decode "
          "workers report it)")
    _print_fleet_ratios(rows)


def _print_fleet_ratios(rows: list[tuple[str, str, Stats, float, float]]) -> None:
    """Each multi-instance row against the single cache_aware instance of the same workload."""
    single = {workload: stats for workload, label, stats, _, _ in rows if label == "shepherd cache_aware"}
    fleet = [(workload, label, stats) for workload, label, stats, _, _ in rows if " x" in label]
    if not fleet:
        return
    print("\nInstances behind HAProxy against one instance (target with the mesh: hit rate within 3 points, "
          "TTFT p99 within 10%):")
    for workload, label, stats in fleet:
        one = single.get(workload)
        if one is None or not one.ttft or not stats.ttft or not one.prompt_tokens or not stats.prompt_tokens:
            continue
        points = (stats.cached_tokens / stats.prompt_tokens - one.cached_tokens / one.prompt_tokens) * 100
        ratio = stats.ttft[int(len(stats.ttft) * 0.99)] / one.ttft[int(len(one.ttft) * 0.99)]
        print(f"  {workload:<17} {label:<36} hit rate {points:+.1f} points, TTFT p99 {ratio:.2f}x")


if __name__ == "__main__":
    main()

"""The request lifecycle in process: a real gateway app whose workers are FakeTransport functions.

No processes and no engine: each test scripts what every worker answers and checks what the
client got, what each worker was sent, and what each breaker was told.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shepherd.app import build_app
from shepherd.config import AuthConfig, BreakerConfig, GatewayConfig, RetryConfig
from shepherd.context import AppContext, Transports
from shepherd.transport.fake import FakeCall, FakeReply, FakeTransport
from shepherd.workers.circuit_breaker import CircuitBreaker
from shepherd.workers.worker import Worker, WorkerType

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
OK = FakeReply(200, chunks=(b'{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}',))
W1, W2 = "http://w1", "http://w2"


class Gateway:
    def __init__(self, client: TestClient, context: AppContext, transport: FakeTransport) -> None:
        self.client = client
        self.context = context
        self.transport = transport

    def worker(self, url: str) -> Worker:
        worker = self.context.registry.get_by_url(url)
        assert worker is not None
        return worker

    async def chat(self, path: str = "/v1/chat/completions", **body: Any) -> tuple[int, bytes]:
        response = await self.client.post(path, data=orjson.dumps({**CHAT, **body}),
                                          headers={"Content-Type": "application/json",
                                                   "Authorization": "Bearer gateway-key"})
        return response.status, await response.read()


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[..., Any]]:
    opened: list[TestClient] = []

    async def start(workers: Sequence[tuple[str, Any]], *, kind: str = "http", **config: Any) -> Gateway:
        config.setdefault("retry", RetryConfig(max_retries=5, initial_backoff_ms=1, max_backoff_ms=2))
        config.setdefault("breaker", BreakerConfig(failure_threshold=10))
        settings = GatewayConfig(policy="round_robin", auth=_auth("gateway-key"), disable_metrics=False,
                                 **config)
        transport = FakeTransport()
        context = AppContext.create(settings, Transports(transport, transport))
        for url, reply in workers:
            transport.route(url, reply)
            worker = _worker(url, kind, settings.breaker)
            context.registry.add(worker)
        client = TestClient(TestServer(build_app(context)))
        await client.start_server()
        opened.append(client)
        return Gateway(client, context, transport)

    yield start
    for client in opened:
        await client.close()


def _auth(key: str) -> AuthConfig:
    return AuthConfig(api_keys=(key,))


def _worker(url: str, kind: str, breaker: BreakerConfig) -> Worker:
    if kind == "external":
        return Worker(id=url, url=url, model_ids=("m",), connection_mode="external", provider="openai",
                      api_key="provider-key", breaker=CircuitBreaker(breaker))
    if kind in ("prefill", "decode"):
        return Worker(id=url, url=url, model_ids=("m",), worker_type=WorkerType(kind), api_key=f"key-of-{url[7:]}",
                      bootstrap_port=9000 if kind == "prefill" else None, breaker=CircuitBreaker(breaker))
    return Worker(id=url, url=url, model_ids=("m",), api_key="worker-key", breaker=CircuitBreaker(breaker))


def _calls(gateway: Gateway) -> list[str]:
    return [call.base_url for call in gateway.transport.calls]


# -- failures before the first byte are retried ----------------------------------------------------

async def test_a_worker_that_cannot_be_reached_is_retried_on_another(gateway: Any) -> None:
    gw = await gateway([(W1, FakeReply.unreachable()), (W2, OK)])
    statuses = [(await gw.chat())[0] for _ in range(4)]
    assert statuses == [200] * 4
    assert gw.worker(W1).breaker.failures >= 1 and gw.worker(W2).breaker.failures == 0


@pytest.mark.parametrize("broken", [
    FakeReply(200, chunks=(b'{"choi', b'ces": []}'), break_after=1),  # the body breaks off
    FakeReply(200, chunks=(b"x" * 5000,)),  # the body is over --max-payload-size
], ids=["truncated", "too-large"])
async def test_a_body_that_fails_while_being_read_whole_is_retried(gateway: Any, broken: FakeReply) -> None:
    gw = await gateway([(W1, broken), (W2, OK)], max_payload_size=4096)
    results = [await gw.chat() for _ in range(2)]
    assert [status for status, _ in results] == [200, 200]
    assert _calls(gw).count(W1) >= 1 and _calls(gw).count(W2) == 2  # each failure was served by W2


async def test_a_500_is_charged_to_the_worker_only_when_another_worker_answers_better(gateway: Any) -> None:
    gw = await gateway([(W1, FakeReply(500, chunks=(b'{"error": "boom"}',))), (W2, OK)])
    assert (await gw.chat())[0] == 200
    assert gw.worker(W1).breaker.failures == 1 and gw.worker(W2).breaker.failures == 0


async def test_a_request_that_makes_every_worker_fail_is_not_charged_to_any_breaker(gateway: Any) -> None:
    poison = FakeReply(500, chunks=(b'{"error": {"message": "cannot classify false"}}',))
    gw = await gateway([(W1, poison), (W2, poison)])
    for _ in range(6):
        status, body = await gw.chat()
        assert status == 500 and b"cannot classify" in body  # the engine's own answer
    assert len(gw.transport.calls) == 12  # two attempts each, then no more retries
    for url in (W1, W2):
        assert gw.worker(url).breaker.failures == 0 and gw.worker(url).is_available


async def test_one_deadline_bounds_all_attempts(gateway: Any) -> None:
    gw = await gateway([(W1, FakeReply(hang=True)), (W2, FakeReply(hang=True))], request_timeout_secs=0.3)
    status, body = await gw.chat()
    assert status == 504
    assert len(gw.transport.calls) == 1  # the first attempt used the whole deadline: no second one


async def test_retries_back_off_between_attempts(gateway: Any) -> None:
    gw = await gateway([(W1, FakeReply(503, chunks=(b"{}",))), (W2, FakeReply(503, chunks=(b"{}",)))],
                       retry=RetryConfig(max_retries=3, initial_backoff_ms=30, max_backoff_ms=30, jitter_factor=0))
    status, _ = await gw.chat()
    assert status == 503 and len(gw.transport.calls) == 3
    metrics = gw.context.metrics
    assert metrics is not None
    backoff = metrics.retry_backoff("1").sum
    assert backoff == pytest.approx(0.03)


# -- after the first byte: the API's error frame --------------------------------------------------

@pytest.mark.parametrize("path, last", [
    ("/v1/chat/completions", b"data: [DONE]\n\n"),
    ("/v1/messages", b'"type":"api_error"'),
])
async def test_a_stream_that_breaks_off_ends_with_the_apis_error_frame(gateway: Any, path: str, last: bytes) -> None:
    chunks = (b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n', b"data: {\"choi")
    gw = await gateway([(W1, FakeReply(200, {"content-type": "text/event-stream"}, chunks, streamed=True,
                                       break_after=2))])
    status, body = await gw.chat(path, stream=True)
    assert status == 200
    assert body.startswith(chunks[0] + chunks[1] + b"\n\n")  # the half-written event is closed first
    assert last in body.rsplit(b"\n\n", 2)[-2] + b"\n\n"
    assert gw.worker(W1).breaker.failures == 1


@pytest.fixture
def client_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write the gateway's server makes to a client's socket."""
    from aiohttp.http_writer import StreamWriter

    writes: list[bytes] = []
    write, writelines = StreamWriter._write, StreamWriter._writelines
    monkeypatch.setattr(StreamWriter, "_write", lambda self, chunk: (writes.append(bytes(chunk)), write(self, chunk)))
    monkeypatch.setattr(StreamWriter, "_writelines", lambda self, chunks: (
        writes.append(b"".join(bytes(c) for c in chunks)), writelines(self, chunks)))
    return writes


async def test_the_last_chunk_and_the_end_of_the_stream_go_out_in_one_write(gateway: Any,
                                                                           client_writes: list[bytes]) -> None:
    chunks = (b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n', b"data: [DONE]\n\n")
    gw = await gateway([(W1, FakeReply(200, {"content-type": "text/event-stream"}, chunks, streamed=True))])
    status, body = await gw.chat(stream=True)
    assert status == 200 and body == b"".join(chunks)
    # The worker's body ended with its last chunk: the chunked terminator rides along (one write, not two).
    assert any(chunks[-1] in data and data.endswith(b"0\r\n\r\n") for data in client_writes), client_writes
    assert b"0\r\n\r\n" not in client_writes


@pytest.mark.parametrize("first_chunk_with_the_head", [True, False])
async def test_the_head_waits_for_the_first_chunk_only_when_it_came_with_the_workers_head(
        gateway: Any, client_writes: list[bytes], first_chunk_with_the_head: bool) -> None:
    chunks = (b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n', b"data: [DONE]\n\n")
    reply = FakeReply(200, {"content-type": "text/event-stream"}, chunks, streamed=True,
                      chunk_delay=0 if first_chunk_with_the_head else 0.05)
    gw = await gateway([(W1, reply)])
    status, body = await gw.chat(stream=True)
    assert status == 200 and body == b"".join(chunks)
    head = next(data for data in client_writes if data.startswith(b"HTTP/1.1 200"))
    if first_chunk_with_the_head:  # one write: the head and the chunk that was already there
        assert head.endswith(chunks[0] + b"\r\n"), client_writes
    else:  # a worker still working on its first token: the client gets the head at once, alone
        assert head.endswith(b"\r\n\r\n") and chunks[0] not in head, client_writes


# -- credentials ------------------------------------------------------------------------------------

async def test_the_worker_key_replaces_the_gateway_key(gateway: Any) -> None:
    gw = await gateway([(W1, OK)])
    await gw.chat()
    headers = gw.transport.calls[0].headers
    assert headers["authorization"] == "Bearer worker-key"
    assert "gateway-key" not in repr(headers)


async def test_each_pd_leg_carries_its_own_workers_key(gateway: Any) -> None:
    prefill, decode = "http://prefill", "http://decode"

    def answer(call: FakeCall) -> FakeReply:
        return OK

    gw = await gateway([], pd_disaggregation=True)
    for url, kind in ((prefill, "prefill"), (decode, "decode")):
        gw.transport.route(url, answer)
        gw.context.registry.add(_worker(url, kind, BreakerConfig()))
    assert (await gw.chat())[0] == 200
    keys = {call.base_url: call.headers["authorization"] for call in gw.transport.calls}
    assert keys == {prefill: "Bearer key-of-prefill", decode: "Bearer key-of-decode"}


# -- providers --------------------------------------------------------------------------------------

async def test_a_provider_that_refuses_is_not_asked_again_for_the_same_request(gateway: Any) -> None:
    busy = FakeReply(429, chunks=(b'{"error": {"message": "slow down", "type": "rate_limit_error"}}',))
    gw = await gateway([(W1, busy)], kind="external")
    status, _ = await gw.chat()
    assert status == 429 and len(gw.transport.calls) == 1  # one provider: its 429 is the answer


async def test_a_provider_429_hands_the_request_to_another_provider(gateway: Any) -> None:
    busy = FakeReply(429, chunks=(b'{"error": {"message": "slow down"}}',))
    gw = await gateway([(W1, busy), (W2, OK)], kind="external")
    assert (await gw.chat())[0] == 200
    assert gw.transport.calls[-1].base_url == W2
    assert gw.transport.calls[-1].headers["authorization"] == "Bearer provider-key"


@pytest.mark.parametrize("usage", [b'{"prompt_tokens": -5, "completion_tokens": 3}',
                                   b'{"prompt_tokens": true, "completion_tokens": 3}'], ids=["negative", "bool"])
async def test_token_counts_a_worker_gets_wrong_are_not_counted_and_the_answer_still_goes_out(
        gateway: Any, usage: bytes) -> None:
    answer = b'{"choices": [], "usage": ' + usage + b"}"
    gw = await gateway([(W1, FakeReply(200, chunks=(answer,)))])
    status, body = await gw.chat()
    assert status == 200 and body == answer
    metrics = gw.context.metrics
    assert metrics is not None
    assert all(child.value == 0 for child in metrics.tokens._children.values())

"""The providers' transport: proxies from the environment, a custom CA bundle, client certificates.

Real sockets throughout: an HTTP forward proxy and TLS servers run in this process on loopback,
with a certificate authority made for the test.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shepherd.testing import Gateway, Sim, free_ports, wait_until
from shepherd.transport.errors import UpstreamError
from shepherd.transport.provider import ProviderTransport, TlsSettings

# -- a test CA -------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(x509.SubjectAlternativeName([loopback]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("shepherd test CA", ca_key, None, ca_key, ca=True)
    server_key, client_key = _key(), _key()
    files = {"ca": _write(folder / "ca", ca, ca_key)[0]}
    files["server_cert"], files["server_key"] = _write(folder / "server", _cert("127.0.0.1", server_key, ca, ca_key,
                                                                               ca=False, server=True), server_key)
    files["client_cert"], files["client_key"] = _write(folder / "client", _cert("gateway", client_key, ca, ca_key,
                                                                               ca=False), client_key)
    return files


# -- servers ---------------------------------------------------------------------------------------


async def _answer(request: web.Request) -> web.Response:
    peer = request.transport.get_extra_info("peercert") if request.transport else None
    return web.json_response({"path": request.path, "client_cert": bool(peer)})


@pytest.fixture
async def tls_server(pki: dict[str, str]) -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(require_client_cert: bool) -> str:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki["server_cert"], pki["server_key"])
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(pki["ca"])
        app = web.Application()
        app.router.add_post("/v1/chat/completions", _answer)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_ports(1)[0]
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        runners.append(runner)
        return f"https://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


_REQUEST_LINE = re.compile(rb"(?:GET|POST|PUT|PATCH|DELETE) http://\S+ HTTP/1\.1")


class ForwardProxy:
    """A plain HTTP forward proxy on a thread of its own: records each request line, pipes the bytes."""

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self.request_lines: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        self.request_lines.append(line.decode().strip())
        target = httpx.URL(line.split()[1].decode())
        try:
            up_reader, up_writer = await asyncio.open_connection(target.host, target.port)
        except OSError:
            writer.close()
            return
        up_writer.write(line)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bool) -> None:
            try:
                while data := await source.read(65536):
                    if record:  # later requests on the same kept-alive connection
                        self.request_lines.extend(m.decode() for m in _REQUEST_LINE.findall(data))
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    forward = ForwardProxy()
    yield forward
    forward.stop()


# -- the transport on its own ----------------------------------------------------------------------

async def _post(transport: ProviderTransport, base_url: str) -> dict[str, Any]:
    response = await transport.request("POST", base_url, "/v1/chat/completions", {"content-type": "application/json"},
                                       b"{}", 10)
    try:
        assert response.status == 200
        return orjson.loads(await response.read())  # type: ignore[no-any-return]
    finally:
        response.close()


async def test_a_provider_signed_by_a_custom_ca_needs_that_ca(tls_server: Any, pki: dict[str, str]) -> None:
    url = await tls_server(require_client_cert=False)
    untrusting = ProviderTransport(connect_timeout=5, idle_timeout=3)
    trusting = ProviderTransport(connect_timeout=5, idle_timeout=3, tls=TlsSettings(ca_cert_paths=(pki["ca"],)))
    try:
        with pytest.raises(UpstreamError, match="TLS|certificate"):
            await _post(untrusting, url)
        assert (await _post(trusting, url))["path"] == "/v1/chat/completions"
    finally:
        await untrusting.close()
        await trusting.close()


async def test_a_client_certificate_is_presented_when_the_provider_asks(tls_server: Any, pki: dict[str, str]) -> None:
    url = await tls_server(require_client_cert=True)
    anonymous = ProviderTransport(connect_timeout=5, idle_timeout=3, tls=TlsSettings(ca_cert_paths=(pki["ca"],)))
    identified = ProviderTransport(connect_timeout=5, idle_timeout=3, tls=TlsSettings(
        ca_cert_paths=(pki["ca"],), client_cert_path=pki["client_cert"], client_key_path=pki["client_key"]))
    try:
        with pytest.raises(UpstreamError):
            await _post(anonymous, url)
        assert (await _post(identified, url))["client_cert"] is True
    finally:
        await anonymous.close()
        await identified.close()


async def test_http_proxy_and_no_proxy_come_from_the_environment(proxy: ForwardProxy,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    target = f"http://127.0.0.1:{port}"
    transport = ProviderTransport(connect_timeout=5, idle_timeout=3)
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        await _post(transport, target)
        assert proxy.request_lines == [f"POST {target}/v1/chat/completions HTTP/1.1"]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        await _post(transport, target)
        assert len(proxy.request_lines) == 1  # NO_PROXY: straight to the provider
    finally:
        await transport.close()
        await runner.cleanup()


# -- through the gateway ---------------------------------------------------------------------------


def test_providers_go_through_the_proxy_and_local_engines_never_do(proxy: ForwardProxy) -> None:
    local = Sim(1, "--model", "local-model", "--engine", "canned")
    provider = Sim(1, "--provider", "openai", "--api-key", "pk", "--model", "gpt-proxied", "--engine", "canned")
    gateway = Gateway(local.urls, "--external-provider", f"{provider.urls[0]}=openai,key_env=PROXIED_KEY",
                      expect_workers=2, env={"PROXIED_KEY": "pk", "HTTP_PROXY": proxy.url, "NO_PROXY": ""})
    try:
        for model in ("local-model", "gpt-proxied"):
            answer = httpx.post(gateway.url + "/v1/chat/completions", timeout=10,
                                json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 200, answer.text
        wait_until(lambda: any("/chat/completions" in line for line in proxy.request_lines), 5)
        assert all(provider.urls[0] in line for line in proxy.request_lines), proxy.request_lines
        assert any(line.startswith("GET ") and "/models" in line for line in proxy.request_lines)  # discovery too
        assert not any(local.urls[0] in line for line in proxy.request_lines)
    finally:
        gateway.stop()
        local.stop()
        provider.stop()

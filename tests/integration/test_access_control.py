"""API keys, control-plane keys and JWTs, TLS and CORS, end to end through a real gateway process."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import httpx
import jwt
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from shepherd.testing import Gateway, Sim, free_ports

SERVE_KEY, ADMIN_KEY, VIEWER_KEY = "serve-key-123", "admin-key-456", "viewer-key-789"
ISSUER, AUDIENCE = "https://issuer.test", "shepherd"
CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


SIGNING_KEY, OTHER_KEY = _rsa_key(), _rsa_key()


class _Jwks(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(SIGNING_KEY.public_key()))
        body = json.dumps({"keys": [{**public, "kid": "k1", "alg": "RS256", "use": "sig"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def token(role: str = "platform-admins", *, key: rsa.RSAPrivateKey = SIGNING_KEY, expires_in: int = 300) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "someone", "roles": [role], "iat": now, "exp": now + expires_in}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[Sim, Gateway]]:
    port = free_ports(1)[0]
    jwks = ThreadingHTTPServer(("127.0.0.1", port), _Jwks)
    threading.Thread(target=jwks.serve_forever, daemon=True).start()
    sim = Sim(1)
    gw = Gateway(sim.urls, "--api-key", SERVE_KEY, "--control-plane-api-keys", f"ops:Ops Team:admin:{ADMIN_KEY}",
                 f"viewer:Viewer:user:{VIEWER_KEY}", "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE,
                 "--jwt-jwks-uri", f"http://127.0.0.1:{port}/jwks.json", "--jwt-role-mapping", "platform-admins=admin",
                 admin_key=ADMIN_KEY)
    yield sim, gw
    gw.stop()
    sim.stop()
    jwks.shutdown()


def _bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_serving_routes_need_the_serving_key(secured: tuple[Sim, Gateway]) -> None:
    sim, gw = secured
    url = gw.url + "/v1/chat/completions"
    missing = httpx.post(url, json=CHAT)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert httpx.post(url, json=CHAT, headers=_bearer("wrong")).json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(url, json=CHAT, headers=_bearer(ADMIN_KEY)).status_code == 401  # admin keys don't serve
    assert httpx.post(url, json=CHAT, headers=_bearer(SERVE_KEY)).status_code == 200
    assert httpx.post(url, json=CHAT, headers={"x-api-key": SERVE_KEY}).status_code == 200
    for public in ("/health", "/liveness", "/readiness", "/v1/models", "/v1/models/mock-model"):
        assert httpx.get(gw.url + public).status_code == 200, public
    # The gateway's key never reaches the worker.
    seen = {k.lower(): v for k, v in sim.requests()[-1]["headers"].items()}
    assert "authorization" not in seen and "x-api-key" not in seen


def test_official_sdks_authenticate_with_the_serving_key(secured: tuple[Sim, Gateway]) -> None:
    _, gw = secured
    chat = openai.OpenAI(base_url=gw.url + "/v1", api_key=SERVE_KEY, max_retries=0).chat.completions.create(
        model="mock-model", messages=CHAT["messages"], max_tokens=2)
    assert chat.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="nope", max_retries=0).chat.completions.create(
            model="mock-model", messages=CHAT["messages"], max_tokens=2)
    # Model cards are public, like the list (engines' own /v1/models needs no key either).
    assert openai.OpenAI(base_url=gw.url + "/v1", api_key="nope", max_retries=0).models.retrieve("mock-model").id
    message = anthropic.Anthropic(base_url=gw.url, api_key=SERVE_KEY, max_retries=0).messages.create(
        model="mock-model", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gw.url, api_key="nope", max_retries=0).messages.create(
            model="mock-model", max_tokens=2, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("headers, status, code", [
    ({}, 401, "missing_credentials"),
    (_bearer("wrong"), 401, "invalid_credentials"),
    (_bearer(SERVE_KEY), 401, "invalid_credentials"),  # a serving key on an admin route
    (_bearer(VIEWER_KEY), 403, "insufficient_role"),
    (_bearer(ADMIN_KEY), 200, None),
])
def test_admin_routes_need_an_admin_key(secured: tuple[Sim, Gateway], headers: dict, status: int,
                                        code: str | None) -> None:
    _, gw = secured
    response = httpx.get(gw.url + "/workers", headers=headers)
    assert response.status_code == status
    if code:
        assert response.json()["error"]["code"] == code
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer realm="control-plane"'


def test_admin_routes_with_jwts(secured: tuple[Sim, Gateway]) -> None:
    _, gw = secured

    def call(tok: str) -> httpx.Response:
        return httpx.post(gw.url + "/flush_cache", headers=_bearer(tok))

    assert call(token()).status_code == 200  # platform-admins maps to admin
    assert call(token("readers")).status_code == 403
    expired = call(token(expires_in=-60))
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "token_expired"
    forged = call(token(key=OTHER_KEY))
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "invalid_token"
    assert call(token()[:-4] + "abcd").status_code == 401


def test_keys_are_never_logged(secured: tuple[Sim, Gateway]) -> None:
    _, gw = secured
    httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=_bearer(SERVE_KEY))
    httpx.get(gw.url + "/workers", headers=_bearer("wrong-admin-guess"))
    output = gw.output()
    for secret in (SERVE_KEY, ADMIN_KEY, VIEWER_KEY, "wrong-admin-guess"):
        assert secret not in output


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = _rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_on_the_main_listener(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    sim = Sim(1)
    gw = Gateway(sim.urls, "--tls-cert-path", str(cert), "--tls-key-path", str(key), scheme="https")
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=10) as http:
            assert http.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused by a verifying client
            httpx.get(gw.url + "/health", timeout=5)
        with pytest.raises(httpx.RemoteProtocolError):  # and plain HTTP gets no answer on the TLS port
            httpx.get(gw.url.replace("https", "http") + "/health", timeout=5)
    finally:
        gw.stop()
        sim.stop()


def test_cors_for_allowed_origins_only() -> None:
    sim = Sim(1)
    gw = Gateway(sim.urls, "--cors-allowed-origins", "https://app.example")
    try:
        preflight = httpx.options(gw.url + "/v1/chat/completions", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        denied = httpx.options(gw.url + "/v1/chat/completions", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert denied.status_code == 403
        plain = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers={"Origin": "https://app.example"})
        assert plain.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in plain.headers["access-control-expose-headers"]
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                          headers={"Origin": "https://app.example"}) as streamed:
            assert streamed.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        gw.stop()
        sim.stop()

"""The full transport, for external providers: aiohttp with proxies, a CA bundle and client certificates.

Providers live across the internet, behind the same egress rules as any other client of the
operator's network, so this client does what a general HTTP client does and the lean one does not:
it honours `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` from the environment, verifies TLS against the
system's trust store plus any `--ca-cert-paths`, and presents `--client-cert-path` /
`--client-key-path` when a provider (or a corporate proxy) asks for a client certificate.
Local engines never go through it: they stay on the lean transport.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from shepherd.transport.errors import UpstreamError, UpstreamTimeout


@dataclass(frozen=True)
class TlsSettings:
    ca_cert_paths: tuple[str, ...] = ()  # trusted besides the system's store
    client_cert_path: str | None = None
    client_key_path: str | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        for path in self.ca_cert_paths:
            context.load_verify_locations(cafile=path)
        if self.client_cert_path:
            context.load_cert_chain(self.client_cert_path, self.client_key_path)
        return context


class ProviderResponse:
    __slots__ = ("status", "headers", "content_length", "_response", "_complete")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.status = response.status
        self.headers: CIMultiDictProxy[str] = response.headers
        self.content_length = response.content_length
        self._response = response
        self._complete = False

    @property
    def body_done(self) -> bool:
        return self._response.content.at_eof()

    @property
    def body_ready(self) -> bool:
        return False  # aiohttp's reader does not say without reaching into it; providers are slow anyway

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError:
            raise UpstreamTimeout("the provider did not finish answering within the request timeout") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamError(f"the provider broke off: {exc.__class__.__name__}: {exc}") from None
        self._complete = True

    async def read(self, limit: int | None = None) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self.iter_chunks():
            size += len(chunk)
            if limit is not None and size > limit:
                raise ValueError("response body over the limit")
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if self._complete:
            self._response.release()
        else:
            self._response.close()  # an unfinished body: drop the connection rather than drain it


class ProviderTransport:
    def __init__(self, *, connect_timeout: float, idle_timeout: float, tls: TlsSettings | None = None) -> None:
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._ssl = (tls or TlsSettings()).context()
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client session (created on first use, inside the running loop); model discovery uses it too,
        so a provider's model list goes through the same proxy and TLS settings as its requests."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl, keepalive_timeout=self._idle_timeout,
                                             ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=True, auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                timeout=aiohttp.ClientTimeout(sock_connect=self._connect_timeout))
        return self._session

    async def request(
        self,
        method: str,
        base_url: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes | None,
        total_timeout: float | None,
    ) -> ProviderResponse:
        timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=self._connect_timeout)
        try:
            response = await self.session.request(method, base_url.rstrip("/") + path,
                                                  headers=dict(headers) if not isinstance(headers, Mapping)
                                                  else headers, data=body, timeout=timeout, allow_redirects=False)
        except TimeoutError:
            raise UpstreamTimeout("the provider did not answer within the request timeout") from None
        except aiohttp.ClientSSLError as exc:
            raise UpstreamError(f"TLS with the provider failed: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"cannot reach the provider: {exc.__class__.__name__}: {exc}") from None
        return ProviderResponse(response)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)  # let the connector close its transports

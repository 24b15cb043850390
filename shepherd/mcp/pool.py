"""The gateway's MCP connections: configured servers by name, per-request servers in a bounded LRU.

Configured servers connect at launch (a `required` one that fails stops the launch) and stay open;
a broken one reconnects on its next use. Per-request servers (a Responses tool with `server_url`)
are keyed by URL and a hash of their headers, so two clients with different credentials never share
a connection; the least recently used is closed when the pool is full. Everything closes on shutdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import socket
from collections import OrderedDict
from collections.abc import Mapping
from urllib.parse import urlsplit

from shepherd.mcp.config import McpConfig, ServerSpec
from shepherd.mcp.connection import McpConnection, McpUnavailable
from shepherd.mcp.request_tools import McpToolRefused, McpToolSpec

log = logging.getLogger(__name__)


class McpUrlRefused(McpToolRefused):
    """A per-request server URL the gateway will not connect to."""


class McpPool:
    def __init__(self, config: McpConfig) -> None:
        self.config = config
        self.static: dict[str, McpConnection] = {
            spec.name: McpConnection(spec, config.tool_list_ttl_secs) for spec in config.servers}
        self._dynamic: OrderedDict[tuple[str, str], McpConnection] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connect the configured servers: the required ones before returning (one that fails raises),
        the others in the background (one that fails is logged, and retried when a request needs it)."""
        async def one(connection: McpConnection) -> None:
            try:
                await connection.tools()
            except (McpUnavailable, TimeoutError) as exc:
                if connection.spec.required:
                    raise McpUnavailable(f"required MCP server {connection.spec.name!r}: {exc}") from exc
                log.warning("MCP server %r not connected at launch (it is retried on use): %s",
                            connection.spec.name, exc)
        for connection in self.static.values():
            if not connection.spec.required:
                task = asyncio.create_task(one(connection))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        await asyncio.gather(*(one(c) for c in self.static.values() if c.spec.required))

    async def for_url(self, label: str, url: str, headers: Mapping[str, str]) -> McpConnection:
        """A per-request server's connection, reused while its URL and headers stay the same."""
        limits = self.config.request_servers
        await check_url(url, limits.allow_private_networks)
        digest = hashlib.sha256(repr(sorted(headers.items())).encode()).hexdigest()
        key = (url, digest)
        connection = self._dynamic.get(key)
        if connection is not None:
            self._dynamic.move_to_end(key)
            return connection
        transport = "sse" if urlsplit(url).path.rstrip("/").endswith("/sse") else "streamable"
        spec = ServerSpec(name=label, transport=transport, url=url, headers=dict(headers),
                          connect_timeout_secs=limits.connect_timeout_secs,
                          call_timeout_secs=limits.call_timeout_secs)
        connection = McpConnection(spec, self.config.tool_list_ttl_secs)
        self._dynamic[key] = connection
        while len(self._dynamic) > limits.max_pooled:
            _, evicted = self._dynamic.popitem(last=False)
            task = asyncio.create_task(evicted.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return connection

    async def for_request(self, specs: list[McpToolSpec]) -> list[tuple[McpToolSpec, McpConnection]]:
        """The connections of a Responses request's mcp tools. A spec without `server_url` refers to a
        configured server. Raises McpUrlRefused (a 400 for the client) for an unknown label, too many
        servers or a refused URL."""
        found: list[tuple[McpToolSpec, McpConnection]] = []
        dynamic = 0
        for spec in specs:
            if spec.url is None:
                if spec.label not in self.static:
                    raise McpUrlRefused(f"no configured MCP server is named {spec.label!r}")
                found.append((spec, self.static[spec.label]))
                continue
            dynamic += 1
            if dynamic > self.config.request_servers.max_per_request:
                raise McpUrlRefused(f"at most {self.config.request_servers.max_per_request} MCP servers "
                                    "with a server_url per request")
            found.append((spec, await self.for_url(spec.label, spec.url, spec.headers)))
        return found

    async def close(self) -> None:
        connections = [*self.static.values(), *self._dynamic.values()]
        self._dynamic.clear()
        for task in self._closing:
            task.cancel()
        await asyncio.gather(*(c.close() for c in connections), *self._closing, return_exceptions=True)


async def check_url(url: str, allow_private: bool) -> None:
    """Refuse what a client could use to reach the gateway's own network: non-http(s) schemes,
    credentials in the URL, and (unless allowed) hosts resolving to loopback, private, link-local,
    multicast, reserved or unspecified addresses. (A DNS answer that changes between this check and
    the connect is not caught; deployments that need that put an egress proxy in front.)"""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise McpUrlRefused("server_url must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise McpUrlRefused("server_url must not carry credentials; use headers")
    if len(url) > 2048:
        raise McpUrlRefused("server_url is longer than 2048 characters")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443,
                                                             type=socket.SOCK_STREAM)
    except OSError as exc:
        raise McpUrlRefused(f"server_url host {parts.hostname!r} does not resolve") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
                or address.is_reserved or address.is_unspecified):
            raise McpUrlRefused(f"server_url host {parts.hostname!r} is on a private or local network")

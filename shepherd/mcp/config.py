"""The --mcp-config-path file: which MCP servers the gateway connects to, and the loop's limits.

Nothing of the client's request (its keys, its headers) and nothing of the gateway's environment
reaches a server: it gets only what its entry here names (url, token, headers, env).

Shape (SMG's, `protocol` or `transport` both name the transport; unknown keys are errors):

    servers:
      - name: time                       # the label the model and the client see
        protocol: stdio                  # stdio | sse | streamable
        command: mcp-server-time         # stdio
        args: [--local-timezone, UTC]
        env: {TZ: UTC}                   # (or `envs`) merged over a minimal environment, never the gateway's
      - name: search
        protocol: streamable
        url: http://127.0.0.1:9000/mcp   # sse/streamable
        token: "..."                     # sent as Authorization: Bearer <token>
        headers: {X-Api-Key: "..."}
        allowed_tools: [search]          # none: every tool; denied_tools wins over allowed_tools
        denied_tools: [delete_all]
        connect_timeout_secs: 10
        call_timeout_secs: 30
        required: false                  # true: launch fails when it cannot connect
    tool_list_ttl_secs: 300              # tool lists re-read after this long (or after a reconnect)
    max_tool_calls: 10                   # the default bound of gateway-executed calls per request
    request_servers:                     # per-request servers (Responses `{"type": "mcp", "server_url"}`)
      max_per_request: 4
      max_pooled: 32
      connect_timeout_secs: 10
      call_timeout_secs: 30
      allow_private_networks: false      # loopback/private/link-local targets refused unless true
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shepherd.config import ConfigError
from shepherd.yaml_file import read_yaml_file

TRANSPORTS = ("stdio", "sse", "streamable")


class McpConfigError(ConfigError):
    pass


@dataclass(frozen=True)
class ServerSpec:
    name: str
    transport: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    allowed_tools: frozenset[str] | None = None
    denied_tools: frozenset[str] = frozenset()
    connect_timeout_secs: float = 10.0
    call_timeout_secs: float = 30.0
    required: bool = False

    @property
    def key(self) -> str:
        """What identifies the server's connection: the URL, or the command line."""
        return self.url if self.url is not None else " ".join((self.command or "", *self.args))

    def exposes(self, tool: str) -> bool:
        if tool in self.denied_tools:
            return False
        return self.allowed_tools is None or tool in self.allowed_tools


@dataclass(frozen=True)
class RequestServerLimits:
    max_per_request: int = 4
    max_pooled: int = 32
    connect_timeout_secs: float = 10.0
    call_timeout_secs: float = 30.0
    allow_private_networks: bool = False


@dataclass(frozen=True)
class McpConfig:
    servers: tuple[ServerSpec, ...] = ()
    tool_list_ttl_secs: float = 300.0
    max_tool_calls: int = 10
    request_servers: RequestServerLimits = field(default_factory=RequestServerLimits)


_SERVER_KEYS = {"name", "protocol", "transport", "command", "args", "env", "envs", "url", "token", "headers",
                "allowed_tools", "denied_tools", "connect_timeout_secs", "call_timeout_secs",
                "required"}
_TOP_KEYS = {"servers", "tool_list_ttl_secs", "max_tool_calls", "request_servers"}
_LIMIT_KEYS = {"max_per_request", "max_pooled", "connect_timeout_secs", "call_timeout_secs", "allow_private_networks"}


def load_mcp_config(path: str) -> McpConfig:
    data = read_yaml_file(path, "--mcp-config-path", McpConfigError)
    return parse_mcp_config(data if data is not None else {})


def parse_mcp_config(data: Any) -> McpConfig:
    if not isinstance(data, dict):
        raise McpConfigError("MCP config: the top level must be a mapping")
    _no_unknown(data, _TOP_KEYS, "MCP config")
    raw_servers = data.get("servers") or []
    if not isinstance(raw_servers, list):
        raise McpConfigError("MCP config: 'servers' must be a list")
    servers = tuple(_server(entry, i) for i, entry in enumerate(raw_servers))
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise McpConfigError("MCP config: server names must be unique")
    limits_raw = data.get("request_servers") or {}
    if not isinstance(limits_raw, dict):
        raise McpConfigError("MCP config: 'request_servers' must be a mapping")
    _no_unknown(limits_raw, _LIMIT_KEYS, "MCP config request_servers")
    defaults = RequestServerLimits()
    limits = RequestServerLimits(
        max_per_request=_int(limits_raw, "max_per_request", defaults.max_per_request, 0, 64),
        max_pooled=_int(limits_raw, "max_pooled", defaults.max_pooled, 1, 10_000),
        connect_timeout_secs=_secs(limits_raw, "connect_timeout_secs", defaults.connect_timeout_secs),
        call_timeout_secs=_secs(limits_raw, "call_timeout_secs", defaults.call_timeout_secs),
        allow_private_networks=_bool(limits_raw, "allow_private_networks", False),
    )
    return McpConfig(servers=servers,
                     tool_list_ttl_secs=_secs(data, "tool_list_ttl_secs", 300.0),
                     max_tool_calls=_int(data, "max_tool_calls", 10, 1, 1000),
                     request_servers=limits)


def _server(entry: Any, index: int) -> ServerSpec:
    where = f"MCP config servers[{index}]"
    if not isinstance(entry, dict):
        raise McpConfigError(f"{where}: must be a mapping")
    _no_unknown(entry, _SERVER_KEYS, where)
    name = entry.get("name")
    if not isinstance(name, str) or not name or len(name) > 64 or not name.replace("-", "_").isidentifier():
        raise McpConfigError(f"{where}: 'name' must be 1-64 letters, digits, '_' or '-'")
    where = f"MCP server {name!r}"
    transport = entry.get("protocol", entry.get("transport"))
    if transport not in TRANSPORTS:
        raise McpConfigError(f"{where}: 'protocol' must be one of {', '.join(TRANSPORTS)}")
    headers = dict(_str_map(entry, "headers", where))
    token = entry.get("token")
    if token is not None:
        if not isinstance(token, str):
            raise McpConfigError(f"{where}: 'token' must be a string")
        headers["Authorization"] = f"Bearer {token}"
    command, url = entry.get("command"), entry.get("url")
    if transport == "stdio":
        if not isinstance(command, str) or not command:
            raise McpConfigError(f"{where}: stdio needs 'command'")
        if url is not None or headers:
            raise McpConfigError(f"{where}: stdio takes no 'url', 'headers' or 'token'")
    else:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise McpConfigError(f"{where}: {transport} needs an http(s) 'url'")
        if command is not None:
            raise McpConfigError(f"{where}: {transport} takes no 'command'")
    env = _str_map(entry, "env", where) or _str_map(entry, "envs", where)
    allowed = entry.get("allowed_tools")
    return ServerSpec(
        name=name, transport=transport, command=command, args=_str_list(entry, "args", where), env=env, url=url,
        headers=headers,
        allowed_tools=None if allowed is None else frozenset(_str_list(entry, "allowed_tools", where)),
        denied_tools=frozenset(_str_list(entry, "denied_tools", where)),
        connect_timeout_secs=_secs(entry, "connect_timeout_secs", 10.0),
        call_timeout_secs=_secs(entry, "call_timeout_secs", 30.0),
        required=_bool(entry, "required", False))


def _no_unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise McpConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")


def _str_map(data: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = data.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise McpConfigError(f"{where}: '{key}' must map strings to strings")
    return dict(value)


def _str_list(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise McpConfigError(f"{where}: '{key}' must be a list of strings")
    return tuple(value)


def _secs(data: Mapping[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise McpConfigError(f"MCP config: '{key}' must be a number of seconds in (0, 3600]")
    return float(value)


def _int(data: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise McpConfigError(f"MCP config: '{key}' must be an integer in [{low}, {high}]")
    return value


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise McpConfigError(f"MCP config: '{key}' must be true or false")
    return value

"""A Responses request's `{"type": "mcp"}` tools, checked (no network, no SDK import: request parsing uses it).

OpenAI's shape: `server_label`, `server_url` (absent: the configured server of that name),
`headers`, `authorization` (sent as `Authorization: Bearer ...`), `allowed_tools` (a list of names or
a `{tool_names, read_only}` filter) and `require_approval` (`"always"`, `"never"`, or
`{"always": filter, "never": filter}`). As on OpenAI, a tool needs approval unless `require_approval`
says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_KEYS = frozenset({"type", "server_label", "server_url", "headers", "authorization", "allowed_tools",
                   "require_approval", "server_description"})


class McpToolRefused(ValueError):
    """An mcp tool entry the gateway will not use (a 400 for the client)."""


@dataclass(frozen=True)
class ToolFilter:
    """OpenAI's tool filter: a tool matches when it is named (if names are given) and its read-only
    hint is as asked (if asked)."""
    names: frozenset[str] | None = None
    read_only: bool | None = None

    def matches(self, name: str, read_only: bool) -> bool:
        return (self.names is None or name in self.names) and (self.read_only is None or read_only == self.read_only)


@dataclass(frozen=True)
class Approval:
    always: ToolFilter | None = None
    never: ToolFilter | None = None
    default: bool = True  # needed when neither filter matches

    def required(self, name: str, read_only: bool) -> bool:
        if self.never is not None and self.never.matches(name, read_only):
            return False
        if self.always is not None and self.always.matches(name, read_only):
            return True
        return self.default


ALWAYS = Approval(default=True)
NEVER = Approval(default=False)


@dataclass(frozen=True)
class McpToolSpec:
    label: str
    url: str | None  # None: the configured server named `label`
    headers: Mapping[str, str]
    allowed: ToolFilter | None
    approval: Approval

    def exposes(self, name: str, read_only: bool) -> bool:
        return self.allowed is None or self.allowed.matches(name, read_only)


def parse_mcp_tools(tools: Any) -> list[McpToolSpec]:
    """The mcp entries of a `tools` list, in order (other entries are not looked at)."""
    specs: list[McpToolSpec] = []
    for index, tool in enumerate(tools if isinstance(tools, list) else []):
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            specs.append(_spec(tool, f"tools[{index}]"))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise McpToolRefused("each mcp tool needs its own 'server_label'")
    return specs


def _spec(tool: dict[str, Any], where: str) -> McpToolSpec:
    unknown = sorted(set(tool) - _KEYS)
    if unknown:
        raise McpToolRefused(f"{where}: unsupported mcp tool field(s): {', '.join(unknown)}")
    label, url = tool.get("server_label"), tool.get("server_url")
    if not isinstance(label, str) or not label or len(label) > 64:
        raise McpToolRefused(f"{where}: an mcp tool needs a 'server_label' of 1-64 characters")
    if url is not None and not isinstance(url, str):
        raise McpToolRefused(f"{where}: 'server_url' must be a string")
    headers = tool.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in headers.items()):
        raise McpToolRefused(f"{where}: an mcp tool's 'headers' must map strings to strings")
    headers = dict(headers)
    authorization = tool.get("authorization")
    if authorization is not None:
        if not isinstance(authorization, str):
            raise McpToolRefused(f"{where}: 'authorization' must be a string")
        headers["Authorization"] = f"Bearer {authorization}"
    if url is None and headers:
        raise McpToolRefused(f"{where}: 'headers' and 'authorization' need a 'server_url' "
                             "(a configured server uses its own)")
    allowed = tool.get("allowed_tools")
    return McpToolSpec(label=label, url=url, headers=headers,
                       allowed=None if allowed is None else _filter(allowed, f"{where}.allowed_tools"),
                       approval=_approval(tool.get("require_approval"), f"{where}.require_approval"))


def _filter(raw: Any, where: str) -> ToolFilter:
    if isinstance(raw, list):
        raw = {"tool_names": raw}
    if not isinstance(raw, dict) or set(raw) - {"tool_names", "read_only"}:
        raise McpToolRefused(f"{where}: must be a list of tool names or {{\"tool_names\", \"read_only\"}}")
    names, read_only = raw.get("tool_names"), raw.get("read_only")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise McpToolRefused(f"{where}: 'tool_names' must be a list of strings")
    if read_only is not None and not isinstance(read_only, bool):
        raise McpToolRefused(f"{where}: 'read_only' must be true or false")
    return ToolFilter(None if names is None else frozenset(names), read_only)


def _approval(raw: Any, where: str) -> Approval:
    if raw is None or raw == "always":
        return ALWAYS
    if raw == "never":
        return NEVER
    if not isinstance(raw, dict) or not raw or set(raw) - {"always", "never"}:
        raise McpToolRefused(f"{where}: must be \"always\", \"never\" or {{\"always\": ..., \"never\": ...}}")
    always = _filter(raw["always"], f"{where}.always") if raw.get("always") is not None else None
    never = _filter(raw["never"], f"{where}.never") if raw.get("never") is not None else None
    # Only `always` named: the rest run without asking; otherwise what is not exempted asks.
    return Approval(always=always, never=never, default=never is not None or always is None)


_SERVER_KEYS = frozenset({"type", "url", "name", "authorization_token", "tool_configuration"})


def parse_mcp_servers(raw: Any) -> list[McpToolSpec]:
    """Anthropic Messages `mcp_servers` (the MCP connector: `[{"type": "url", url, name,
    authorization_token, tool_configuration: {allowed_tools, enabled}}]`). A server with
    `enabled: false` offers nothing. Messages has no approval step: the tools run when called."""
    if not isinstance(raw, list):
        raise McpToolRefused("'mcp_servers' must be a list")
    specs: list[McpToolSpec] = []
    for index, server in enumerate(raw):
        where = f"mcp_servers[{index}]"
        if not isinstance(server, dict) or server.get("type") != "url":
            raise McpToolRefused(f"{where}: must be an object with \"type\": \"url\"")
        unknown = sorted(set(server) - _SERVER_KEYS)
        if unknown:
            raise McpToolRefused(f"{where}: unsupported field(s): {', '.join(unknown)}")
        name, url, token = server.get("name"), server.get("url"), server.get("authorization_token")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise McpToolRefused(f"{where}: 'name' must be a string of 1-64 characters")
        if not isinstance(url, str):
            raise McpToolRefused(f"{where}: 'url' must be a string")
        if token is not None and not isinstance(token, str):
            raise McpToolRefused(f"{where}: 'authorization_token' must be a string")
        config = server.get("tool_configuration") or {}
        if not isinstance(config, dict) or set(config) - {"allowed_tools", "enabled"}:
            raise McpToolRefused(f"{where}: 'tool_configuration' takes 'allowed_tools' and 'enabled'")
        enabled = config.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise McpToolRefused(f"{where}: 'tool_configuration.enabled' must be true or false")
        allowed = config.get("allowed_tools")
        tool_filter = None if allowed is None else _filter(allowed, f"{where}.tool_configuration.allowed_tools")
        if enabled is False:
            tool_filter = ToolFilter(names=frozenset())
        specs.append(McpToolSpec(label=name, url=url, headers={"Authorization": f"Bearer {token}"} if token else {},
                                 allowed=tool_filter, approval=NEVER))
    if len({s.label for s in specs}) != len(specs):
        raise McpToolRefused("each of 'mcp_servers' needs its own 'name'")
    return specs

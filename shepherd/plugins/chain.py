"""Run the plugins attached to one hook, in order, on one pool thread.

The whole chain runs in one hop off the event loop. Each plugin sees what the plugins before it
left. A failing plugin is counted; fail-open moves on without its changes, fail-closed stops the
chain and the caller answers with an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from shepherd.plugins.abi import (
    REQUEST_HOOK,
    RESPONSE_HOOK,
    Action,
    HookRequest,
    HookResponse,
    InvalidAction,
    Modification,
    Rejection,
    parse_action,
    visible_headers,
)
from shepherd.plugins.runtime import PluginFailure

if TYPE_CHECKING:
    from shepherd.plugins.registry import Plugin

log = logging.getLogger("shepherd.plugins")


@dataclass(slots=True)
class ChainResult:
    headers: CIMultiDict[str]  # the full header set after the chain (credentials untouched)
    body: str
    status: int = 0  # responses only
    changed: bool = False
    rejection: tuple[Plugin, Rejection] | None = None
    failure: tuple[Plugin, PluginFailure] | None = None


def _apply(result: ChainResult, change: Modification) -> None:
    headers = result.headers
    for name in change.remove_headers:
        headers.popall(name, None)
    replaced: set[str] = set()
    for name, value in change.set_headers:
        if name not in replaced:
            headers.popall(name, None)
            replaced.add(name)
        headers.add(name, value)
    for name, value in change.add_headers:
        headers.add(name, value)
    if change.body is not None:
        result.body = change.body
    if change.status is not None:
        result.status = change.status
    result.changed = True


def _call(plugin: Plugin, hook: str, value: HookRequest | HookResponse) -> Action | PluginFailure:
    started = time.perf_counter()
    try:
        action = parse_action(plugin.compiled.call(hook, value), hook, plugin.compiled.max_body_size)
    except PluginFailure as failure:
        plugin.stats.record(hook, failure.kind, time.perf_counter() - started)
        return failure
    except InvalidAction as exc:
        plugin.stats.record(hook, "invalid_action", time.perf_counter() - started)
        return PluginFailure("invalid_action", str(exc))
    except Exception as exc:  # a host-side surprise is still this plugin's failure, not the gateway's
        log.exception("plugin %s (%s): unexpected error on %s", plugin.spec.name, plugin.id, hook)
        plugin.stats.record(hook, "host_error", time.perf_counter() - started)
        return PluginFailure("host_error", f"{exc.__class__.__name__} in the plugin host")
    plugin.stats.record(hook, action.kind, time.perf_counter() - started)
    return action


def _failed(result: ChainResult, plugin: Plugin, hook: str, failure: PluginFailure, request_id: str) -> bool:
    """Log and decide: True when the chain must stop (fail-closed)."""
    log.warning("plugin %s (%s) failed on %s for request %s: %s: %s", plugin.spec.name, plugin.id, hook,
                request_id, failure.kind, failure)
    if plugin.spec.failure_mode == "fail-closed":
        result.failure = (plugin, failure)
        return True
    return False


def skip_chain(plugins: Sequence[Plugin], hook: str) -> Plugin | None:
    """The chain could not run (the pool is saturated): count it as a `busy` failure of each plugin
    and return the first fail-closed one, which makes the request fail."""
    for plugin in plugins:
        plugin.stats.record(hook, "busy", 0.0)
    return next((p for p in plugins if p.spec.failure_mode == "fail-closed"), None)


def run_request_chain(plugins: Sequence[Plugin], method: str, path: str, query: str,
                      headers: CIMultiDict[str], body: str, request_id: str) -> ChainResult:
    result = ChainResult(headers=headers, body=body)
    return _run_chain(plugins, REQUEST_HOOK, result, request_id, lambda r: HookRequest(
        method, path, query, visible_headers(r.headers.items()), r.body, request_id))


def run_response_chain(plugins: Sequence[Plugin], status: int, headers: CIMultiDict[str], body: str,
                       request_id: str, unreadable: PluginFailure | None = None) -> ChainResult:
    """`unreadable`: the body cannot be shown to plugins (too big, not text); each plugin then
    fails that way, by its own failure mode."""
    result = ChainResult(headers=headers, body=body, status=status)
    return _run_chain(plugins, RESPONSE_HOOK, result, request_id, lambda r: HookResponse(
        r.status, visible_headers(r.headers.items()), r.body, request_id), unreadable)


def _run_chain(plugins: Sequence[Plugin], hook: str, result: ChainResult, request_id: str,
               value_of: Callable[[ChainResult], HookRequest | HookResponse],
               unreadable: PluginFailure | None = None) -> ChainResult:
    """Each plugin in order sees what the ones before it left: a rejection ends the chain, a
    modification carries on, a failure ends it or not by the plugin's failure mode."""
    for plugin in plugins:
        outcome: Action | PluginFailure
        if unreadable is not None:
            plugin.stats.record(hook, unreadable.kind, 0.0)
            outcome = unreadable
        else:
            outcome = _call(plugin, hook, value_of(result))
        if isinstance(outcome, PluginFailure):
            if _failed(result, plugin, hook, outcome, request_id):
                return result
            continue
        if outcome.reject is not None:
            result.rejection = (plugin, outcome.reject)
            return result
        if outcome.modify is not None:
            _apply(result, outcome.modify)
    return result

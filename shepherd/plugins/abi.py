"""The plugin ABI (wit/plugin.wit) on the host side: values in, validated actions out.

wasmtime's Python bindings have no generated bindings for a WIT world: marshal.py builds and reads
the values; this module says what they mean. Everything a guest returns is checked before it
touches a request: an action that breaks a rule raises InvalidAction, which the caller handles
like any other plugin failure (by the plugin's failure mode).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from wasmtime.component import Variant

WIT_PACKAGE = "shepherd:plugin"
ABI_VERSIONS = ("0.1.0",)  # the versions of wit/plugin.wit this host accepts
HOOKS_INTERFACE = "hooks"
REQUEST_HOOK = "on-request"
RESPONSE_HOOK = "on-response"

# Credentials are the gateway's: plugins neither see nor set them. Framing headers belong to the
# gateway too (a body replacement re-computes Content-Length).
HIDDEN_HEADERS = frozenset({"authorization", "x-api-key", "proxy-authorization"})
PROTECTED_HEADERS = HIDDEN_HEADERS | frozenset({"content-length", "transfer-encoding", "host", "connection",
                                                "keep-alive", "upgrade", "te", "trailer"})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-zA-Z]+$")
_MAX_HEADERS = 256  # per list in one action
MAX_HEADER_VALUE = 8192  # bytes; what HTTP servers commonly accept per field


def export_names() -> list[str]:
    """The component export names of the hooks interface, newest ABI first."""
    return [f"{WIT_PACKAGE}/{HOOKS_INTERFACE}@{version}" for version in ABI_VERSIONS]


class InvalidAction(ValueError):
    """A guest returned something the ABI does not allow."""


@dataclass(frozen=True, slots=True)
class HookRequest:
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: str
    request_id: str


@dataclass(frozen=True, slots=True)
class HookResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: str
    request_id: str


@dataclass(frozen=True, slots=True)
class Modification:
    status: int | None = None
    set_headers: tuple[tuple[str, str], ...] = ()
    add_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    body: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""


@dataclass(frozen=True, slots=True)
class Action:
    """What a plugin answered: continue (both None), modify, or reject."""

    modify: Modification | None = None
    reject: Rejection | None = None
    kind: str = field(default="continue")


CONTINUE = Action()


def visible_headers(pairs: Any) -> tuple[tuple[str, str], ...]:
    """(lower-case name, value) pairs a plugin may see: everything but credentials."""
    out = []
    for name, value in pairs:
        lower = name.lower()
        if lower not in HIDDEN_HEADERS:
            out.append((lower, value))
    return tuple(out)


def parse_action(value: Any, hook: str, max_body: int = 1 << 62) -> Action:
    """Validate what the guest returned from `hook` and turn it into an Action. A body it
    returns is held to `max_body` bytes, like the bodies it is shown."""
    if not isinstance(value, Variant):
        raise InvalidAction(f"expected an action variant, got {type(value).__name__}")
    if value.tag == "continue":
        return CONTINUE
    if value.tag == "modify":
        change = _modification(value.payload, hook)
        _check_body(change.body, max_body)
        return Action(modify=change, kind="modify")
    if value.tag == "reject":
        rejection = _rejection(value.payload)
        _check_body(rejection.body, max_body)
        return Action(reject=rejection, kind="reject")
    raise InvalidAction(f"unknown action {value.tag!r}")


def _check_body(body: str | None, max_body: int) -> None:
    # len() of the text is a lower bound on its UTF-8 size: encode only when it might be too big.
    if body is not None and len(body) * 4 > max_body and len(body.encode()) > max_body:
        raise InvalidAction(f"the body it returned exceeds the {max_body}-byte limit")


def _modification(payload: Any, hook: str) -> Modification:
    status = payload.status
    if status is not None:
        if hook == REQUEST_HOOK:
            raise InvalidAction("on-request may not set a status (reject instead)")
        if not 100 <= status <= 599:
            raise InvalidAction(f"status {status} is not an HTTP status")
    removed = tuple(_header_name(name) for name in _bounded(getattr(payload, "remove-headers"), "remove-headers"))
    return Modification(
        status=status,
        set_headers=_headers(getattr(payload, "set-headers"), "set-headers"),
        add_headers=_headers(getattr(payload, "add-headers"), "add-headers"),
        remove_headers=removed,
        body=payload.body,
    )


def _rejection(payload: Any) -> Rejection:
    if not 400 <= payload.status <= 599:
        raise InvalidAction(f"a rejection needs a 4xx or 5xx status, got {payload.status}")
    return Rejection(status=payload.status, headers=_headers(payload.headers, "headers"), body=payload.body)


def _bounded(items: list[Any], what: str) -> list[Any]:
    if len(items) > _MAX_HEADERS:
        raise InvalidAction(f"{what} has {len(items)} entries; at most {_MAX_HEADERS} are allowed")
    return items


def _headers(records: list[Any], what: str) -> tuple[tuple[str, str], ...]:
    out = []
    for record in _bounded(records, what):
        name = _header_name(record.name)
        value = record.value
        if "\r" in value or "\n" in value or "\0" in value:
            raise InvalidAction(f"the value of header {name!r} contains CR, LF or NUL")
        if len(value) > MAX_HEADER_VALUE:
            raise InvalidAction(f"the value of header {name!r} is longer than {MAX_HEADER_VALUE} characters")
        out.append((name, value))
    return tuple(out)


def _header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise InvalidAction(f"{name!r} is not a valid header name")
    lower = name.lower()
    if lower in PROTECTED_HEADERS:
        raise InvalidAction(f"plugins may not change the {lower} header")
    return lower

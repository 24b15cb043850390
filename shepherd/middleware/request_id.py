"""Request ids: reuse the client's, or mint one whose prefix says what kind of request it is."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

_PREFIXES = (
    ("/chat/completions", "chatcmpl-"),
    ("/completions", "cmpl-"),
    ("/generate", "gnt-"),
    ("/responses", "resp-"),
    ("/messages", "msg_"),
)
MAX_REQUEST_ID_LENGTH = 128
_ID_HEX = 24  # hex digits of randomness per id

# Random hex for the next ids, from os.urandom 256 ids at a time: one getrandom syscall per id was
# a tenth of a proxied request's syscalls. It is the kernel's CSPRNG output either way, so ids stay
# unpredictable. list.pop is atomic, so no two callers get the same piece, on any thread; a forked
# child starts with none of its parent's (two processes must never mint the same ids).
_random_hex: list[str] = []


def _next_random_hex() -> str:
    try:
        return _random_hex.pop()
    except IndexError:
        block = os.urandom(256 * _ID_HEX // 2).hex()
        _random_hex.extend(block[i:i + _ID_HEX] for i in range(0, len(block), _ID_HEX))
        return _random_hex.pop()


os.register_at_fork(after_in_child=_random_hex.clear)


def new_request_id(path: str) -> str:
    prefix = "req-"
    for suffix, candidate in _PREFIXES:
        if path.endswith(suffix):
            prefix = candidate
            break
    return prefix + _next_random_hex()


def is_valid_request_id(value: str) -> bool:
    """1-128 visible ASCII characters: anything else could break logs or header injection."""
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and value.isascii() and value.isprintable() and " " not in value


def resolve_request_id(headers: Mapping[str, str], path: str, header_names: Sequence[str]) -> str:
    for name in header_names:
        value = headers.get(name)
        if value and is_valid_request_id(value):
            return value
    return new_request_id(path)

"""Calling a hook without the generic component-value conversion of wasmtime's Python API.

wasmtime's `component.Func.__call__` re-reads the function's type on every call and, for every
record it converts (one per header), re-reads the record's fields through the C API: about half a
millisecond for a request with ten headers. The hooks' types are fixed and checked when a plugin
loads (shape.py), so here the C values are built and read directly, by position, in a few ctypes
calls per string. This is the one module that knows wasmtime-py's C-API layer (`wasmtime._ffi`);
the package is pinned to one major version for that reason.

Every string is encoded before anything is allocated on the C side, so a value that cannot be
converted raises before there is anything to free. Both value trees (the argument and the result)
are owned by the C side and freed with one delete each.
"""

from __future__ import annotations

import ctypes
from ctypes import byref
from typing import Any

from wasmtime import Store
from wasmtime import _ffi as ffi
from wasmtime.component import Func, Record, Variant
from wasmtime.component._enter import enter_wasm

from shepherd.plugins.abi import HookRequest, HookResponse

_Val = ffi.wasmtime_component_val_t
_STRING = ffi.WASMTIME_COMPONENT_STRING.value
_LIST = ffi.WASMTIME_COMPONENT_LIST.value
_RECORD = ffi.WASMTIME_COMPONENT_RECORD.value
_VARIANT = ffi.WASMTIME_COMPONENT_VARIANT.value
_OPTION = ffi.WASMTIME_COMPONENT_OPTION.value
_U16 = ffi.WASMTIME_COMPONENT_U16.value

# Our own handle on wasm_byte_vec_new that takes bytes directly (wasmtime's wrapper wants a ctypes
# array, which costs a copy and an allocation per string).
_byte_vec_new = ffi.dll["wasm_byte_vec_new"]
_byte_vec_new.restype = None
_byte_vec_new.argtypes = [ctypes.POINTER(ffi.wasm_byte_vec_t), ctypes.c_size_t, ctypes.c_char_p]

_REQUEST_FIELDS = (b"method", b"path", b"query", b"headers", b"body", b"request-id")
_RESPONSE_FIELDS = (b"status", b"headers", b"body", b"request-id")
_HEADER_FIELDS = (b"name", b"value")


def _utf8(text: str) -> bytes:
    # Header values arrive from aiohttp as str; one that does not round-trip (a lone surrogate)
    # is shown with replacement characters rather than failing the call.
    return text.encode("utf-8", "replace")


def _string(val: Any, data: bytes) -> None:
    val.kind = _STRING
    _byte_vec_new(byref(val.of.string), len(data), data)


def _headers(val: Any, headers: list[tuple[bytes, bytes]]) -> None:
    val.kind = _LIST
    items = val.of.list
    ffi.wasmtime_component_vallist_new_uninit(byref(items), len(headers))
    data = items.data
    for i, (name, value) in enumerate(headers):
        entry = data[i]
        entry.kind = _RECORD
        record = entry.of.record
        ffi.wasmtime_component_valrecord_new_uninit(byref(record), 2)
        fields = record.data
        for j, (field, text) in enumerate(((b"name", name), (b"value", value))):
            _byte_vec_new(byref(fields[j].name), len(field), field)
            _string(fields[j].val, text)


def _record(val: Any, names: tuple[bytes, ...], values: list[Any]) -> None:
    """values: bytes (a string), int (a u16) or a header list."""
    val.kind = _RECORD
    record = val.of.record
    ffi.wasmtime_component_valrecord_new_uninit(byref(record), len(names))
    entries = record.data
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        entry = entries[i]
        _byte_vec_new(byref(entry.name), len(name), name)
        if isinstance(value, bytes):
            _string(entry.val, value)
        elif isinstance(value, int):
            entry.val.kind = _U16
            entry.val.of.u16 = value
        else:
            _headers(entry.val, value)


def _encoded_headers(headers: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    return [(_utf8(name), _utf8(value)) for name, value in headers]


def call_request(func: Func, store: Store, request: HookRequest) -> Any:
    values = [_utf8(request.method), _utf8(request.path), _utf8(request.query), _encoded_headers(request.headers),
              request.body.encode(), _utf8(request.request_id)]
    return _call(func, store, _REQUEST_FIELDS, values)


def call_response(func: Func, store: Store, response: HookResponse) -> Any:
    values = [response.status, _encoded_headers(response.headers), response.body.encode(),
              _utf8(response.request_id)]
    return _call(func, store, _RESPONSE_FIELDS, values)


def _call(func: Func, store: Store, names: tuple[bytes, ...], values: list[Any]) -> Any:
    param = _Val()
    _record(param, names, values)
    result = _Val()
    try:
        enter_wasm(lambda: ffi.wasmtime_component_func_call(byref(func._func), store._context(), byref(param), 1,
                                                            byref(result), 1))
    finally:
        ffi.wasmtime_component_val_delete(byref(param))
    try:
        return _action(result)
    finally:
        ffi.wasmtime_component_val_delete(byref(result))


# -- reading the action (positions follow wit/plugin.wit; shape.py checked them at load) ----------

def _text(val: Any) -> str:
    if val.kind != _STRING:
        raise TypeError("expected a string")
    vec = val.of.string
    return ctypes.string_at(vec.data, vec.size).decode() if vec.size else ""


def _fields(val: Any, count: int) -> Any:
    if val.kind != _RECORD or val.of.record.size != count:
        raise TypeError("unexpected record")
    return val.of.record.data


def _list(val: Any) -> list[Any]:
    if val.kind != _LIST:
        raise TypeError("expected a list")
    items = val.of.list
    return [items.data[i] for i in range(items.size)]


def _header_list(val: Any) -> list[Record]:
    out = []
    for item in _list(val):
        fields = _fields(item, 2)
        record = Record()
        record.name, record.value = _text(fields[0].val), _text(fields[1].val)  # type: ignore[attr-defined]
        out.append(record)
    return out


def _option(val: Any) -> Any:
    if val.kind != _OPTION:
        raise TypeError("expected an option")
    pointer = val.of.option
    return pointer.contents if pointer else None


def _action(val: Any) -> Variant:
    """The result as the public API would give it: Variant(tag, Record with kebab-case fields)."""
    if val.kind != _VARIANT:
        raise TypeError("expected an action variant")
    variant = val.of.variant
    tag = ctypes.string_at(variant.discriminant.data, variant.discriminant.size).decode()
    if tag == "continue":
        return Variant("continue")
    payload = variant.val.contents
    record = Record()
    if tag == "modify":
        fields = _fields(payload, 5)
        status = _option(fields[0].val)
        record.status = None if status is None else int(status.of.u16)  # type: ignore[attr-defined]
        setattr(record, "set-headers", _header_list(fields[1].val))
        setattr(record, "add-headers", _header_list(fields[2].val))
        setattr(record, "remove-headers", [_text(item) for item in _list(fields[3].val)])
        body = _option(fields[4].val)
        record.body = None if body is None else _text(body)  # type: ignore[attr-defined]
    elif tag == "reject":
        fields = _fields(payload, 3)
        record.status = int(fields[0].val.of.u16)  # type: ignore[attr-defined]
        record.headers = _header_list(fields[1].val)  # type: ignore[attr-defined]
        record.body = _text(fields[2].val)  # type: ignore[attr-defined]
    return Variant(tag, record)

"""Check, at load time, that a component's hook functions have the types wit/plugin.wit gives them.

A component built against another version of the WIT would otherwise fail on its first call, in
the request path; here it is refused when it is added, with a message that says what differs.
"""

from __future__ import annotations

from typing import Any

from wasmtime import component

from shepherd.plugins.abi import REQUEST_HOOK

Shape = Any  # nested tuples: ("string",), ("u16",), ("list", s), ("option", s), ("record", ((name, s), ...)), ...

_STRING = ("string",)
_HEADERS = ("list", ("record", (("name", _STRING), ("value", _STRING))))
_REQUEST = ("record", (("method", _STRING), ("path", _STRING), ("query", _STRING), ("headers", _HEADERS),
                       ("body", _STRING), ("request-id", _STRING)))
_RESPONSE = ("record", (("status", ("u16",)), ("headers", _HEADERS), ("body", _STRING),
                        ("request-id", _STRING)))
_MODIFICATION = ("record", (("status", ("option", ("u16",))), ("set-headers", _HEADERS), ("add-headers", _HEADERS),
                            ("remove-headers", ("list", _STRING)), ("body", ("option", _STRING))))
_REJECTION = ("record", (("status", ("u16",)), ("headers", _HEADERS), ("body", _STRING)))
_ACTION = ("variant", (("continue", None), ("modify", _MODIFICATION), ("reject", _REJECTION)))

_SCALARS: tuple[tuple[type, str], ...] = (
    (component.String, "string"), (component.U8, "u8"), (component.U16, "u16"), (component.U32, "u32"),
    (component.U64, "u64"), (component.S8, "s8"), (component.S16, "s16"), (component.S32, "s32"),
    (component.S64, "s64"), (component.Bool, "bool"), (component.F32, "f32"), (component.F64, "f64"),
    (component.Char, "char"),
)


def shape_of(valtype: Any) -> Shape:
    for cls, name in _SCALARS:
        if isinstance(valtype, cls):
            return (name,)
    if isinstance(valtype, component.ListType):
        return ("list", shape_of(valtype.element))
    if isinstance(valtype, component.OptionType):
        return ("option", shape_of(valtype.payload))
    if isinstance(valtype, component.RecordType):
        return ("record", tuple((name, shape_of(ty)) for name, ty in valtype.fields))
    if isinstance(valtype, component.VariantType):
        return ("variant", tuple((name, None if ty is None else shape_of(ty)) for name, ty in valtype.cases))
    return (type(valtype).__name__,)


def check_hook_type(hook: str, func_type: component.FuncType) -> str | None:
    """None when the function matches the WIT, else what differs."""
    params = func_type.params
    expected = _REQUEST if hook == REQUEST_HOOK else _RESPONSE
    if len(params) != 1:
        return f"it takes {len(params)} parameters, not 1"
    got = shape_of(params[0][1])
    if got != expected:
        return f"its parameter is {_describe(got)}, expected {_describe(expected)}"
    result = func_type.result
    got = None if result is None else shape_of(result)
    if got != _ACTION:
        return f"it returns {_describe(got)}, expected {_describe(_ACTION)}"
    return None


def _describe(shape: Shape) -> str:
    if shape is None:
        return "nothing"
    kind = shape[0]
    if kind in ("record", "variant"):
        inner = ", ".join(f"{name}: {_describe(s)}" if s is not None else name for name, s in shape[1])
        return f"{kind} {{{inner}}}"
    if kind in ("list", "option"):
        return f"{kind}<{_describe(shape[1])}>"
    return str(kind)

"""Plugin guests for tests and benchmarks, built from WebAssembly text at run time (no binaries kept).

Each guest is a component exporting `shepherd:plugin/hooks@0.1.0` (shepherd/plugins/wit/plugin.wit):
a core module with the guest's code, lifted with the canonical ABI, wrapped the way wit-component
wraps an exported interface (a small shim component that names the interface's types).

Core-module conventions used below:
* memory 0..16 is scratch; the action a hook returns is written at RESULT (the canonical ABI
  returns a variant this size through memory); static data starts at DATA; the heap (what the host
  allocates for arguments through cabi_realloc) starts at HEAP and is reset by the post-return
  function, so a pooled instance does not grow call after call.
* on-request gets 12 i32s: method, path, query, headers, body, request-id, each (pointer, length).
  on-response gets 7: status, headers (ptr, len), body (ptr, len), request-id (ptr, len).
* action layout: tag u8 at +0 (0 continue, 1 modify, 2 reject), payload at +4.
  modification: status option<u16> +4 (tag u8, value u16 at +6), set-headers +8, add-headers +16,
  remove-headers +24 (each pointer, length), body option<string> +32 (tag u8; ptr +36, len +40).
  rejection: status u16 +4, headers +8 (ptr, len), body +16 (ptr, len).
"""

from __future__ import annotations

import hashlib
import struct

import wasmtime

RESULT = 16
DATA = 1024
HEAP = 16384

_SHIM = """
  (component $shim
    (type $header0 (record (field "name" string) (field "value" string)))
    (import "import-type-header" (type $header (eq $header0)))
    (type $req0 (record (field "method" string) (field "path" string) (field "query" string)
      (field "headers" (list $header)) (field "body" string) (field "request-id" string)))
    (import "import-type-http-request" (type $req (eq $req0)))
    (type $resp0 (record (field "status" u16) (field "headers" (list $header)) (field "body" string)
      (field "request-id" string)))
    (import "import-type-http-response" (type $resp (eq $resp0)))
    (type $mod0 (record (field "status" (option u16)) (field "set-headers" (list $header))
      (field "add-headers" (list $header)) (field "remove-headers" (list string)) (field "body" (option string))))
    (import "import-type-modification" (type $mod (eq $mod0)))
    (type $rej0 (record (field "status" u16) (field "headers" (list $header)) (field "body" string)))
    (import "import-type-rejection" (type $rej (eq $rej0)))
    (type $action0 (variant (case "continue") (case "modify" $mod) (case "reject" $rej)))
    (import "import-type-action" (type $action (eq $action0)))
    (import "import-func-on-request" (func $f1 (param "req" $req) (result $action)))
    (import "import-func-on-response" (func $f2 (param "resp" $resp) (result $action)))
    (export $header-e "header" (type $header))
    (type $req1 (record (field "method" string) (field "path" string) (field "query" string)
      (field "headers" (list $header-e)) (field "body" string) (field "request-id" string)))
    (export $req-e "http-request" (type $req1))
    (type $resp1 (record (field "status" u16) (field "headers" (list $header-e)) (field "body" string)
      (field "request-id" string)))
    (export $resp-e "http-response" (type $resp1))
    (type $mod1 (record (field "status" (option u16)) (field "set-headers" (list $header-e))
      (field "add-headers" (list $header-e)) (field "remove-headers" (list string)) (field "body" (option string))))
    (export $mod-e "modification" (type $mod1))
    (type $rej1 (record (field "status" u16) (field "headers" (list $header-e)) (field "body" string)))
    (export $rej-e "rejection" (type $rej1))
    (type $action1 (variant (case "continue") (case "modify" $mod-e) (case "reject" $rej-e)))
    (export $action-e "action" (type $action1))
    (export "on-request" (func $f1) (func (param "req" $req-e) (result $action-e)))
    (export "on-response" (func $f2) (func (param "resp" $resp-e) (result $action-e)))
  )
"""

_TYPES = """
  (type $header (record (field "name" string) (field "value" string)))
  (type $req (record (field "method" string) (field "path" string) (field "query" string)
    (field "headers" (list $header)) (field "body" string) (field "request-id" string)))
  (type $resp (record (field "status" u16) (field "headers" (list $header)) (field "body" string)
    (field "request-id" string)))
  (type $mod (record (field "status" (option u16)) (field "set-headers" (list $header))
    (field "add-headers" (list $header)) (field "remove-headers" (list string)) (field "body" (option string))))
  (type $rej (record (field "status" u16) (field "headers" (list $header)) (field "body" string)))
  (type $action (variant (case "continue") (case "modify" $mod) (case "reject" $rej)))
"""

_REQUEST_PARAMS = "(param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)"
_RESPONSE_PARAMS = "(param i32 i32 i32 i32 i32 i32 i32) (result i32)"

CONTINUE = f"(i32.store8 (i32.const {RESULT}) (i32.const 0)) (i32.const {RESULT})"


def _wat_bytes(data: bytes) -> str:
    return "".join(f"\\{b:02x}" for b in data)


class Data:
    """Static data laid out from DATA: strings, header records and whole actions."""

    def __init__(self) -> None:
        self._blob = bytearray()

    def put(self, data: bytes, align: int = 4) -> int:
        while len(self._blob) % align:
            self._blob.append(0)
        offset = DATA + len(self._blob)
        self._blob += data
        assert DATA + len(self._blob) < HEAP, "static data overflows into the heap"
        return offset

    def string(self, text: str) -> tuple[int, int]:
        raw = text.encode()
        return self.put(raw, 1), len(raw)

    def headers(self, pairs: list[tuple[str, str]]) -> tuple[int, int]:
        records = b"".join(struct.pack("<IIII", *self.string(name), *self.string(value)) for name, value in pairs)
        return (self.put(records) if records else 0), len(pairs)

    def segment(self) -> str:
        return f'(data (i32.const {DATA}) "{_wat_bytes(bytes(self._blob))}")' if self._blob else ""


def modify_action(data: Data, *, add: list[tuple[str, str]] = (), set_: list[tuple[str, str]] = (),  # type: ignore[assignment]
                  remove: list[str] = (), status: int | None = None,  # type: ignore[assignment]
                  body: str | None = None) -> int:
    """A static modify action; returns its offset."""
    removed = b"".join(struct.pack("<II", *data.string(name)) for name in remove)
    remove_at = data.put(removed) if removed else 0
    action = struct.pack("<BxxxBxH", 1, 0 if status is None else 1, status or 0)
    action += struct.pack("<II", *data.headers(list(set_))) + struct.pack("<II", *data.headers(list(add)))
    new_body = struct.pack("<BxxxII", 1, *data.string(body)) if body is not None else struct.pack("<BxxxII", 0, 0, 0)
    action += struct.pack("<II", remove_at, len(remove)) + new_body
    return data.put(action)


def reject_action(data: Data, status: int, body: str, headers: list[tuple[str, str]] = ()) -> int:  # type: ignore[assignment]
    action = struct.pack("<BxxxHxx", 2, status) + struct.pack("<II", *data.headers(list(headers)))
    action += struct.pack("<II", *data.string(body))
    return data.put(action)


def component(on_request: str, on_response: str = CONTINUE, data: Data | None = None, memory_pages: int = 1,
              helpers: str = "") -> bytes:
    """Build a guest component whose hooks run the given core-wasm instruction sequences."""
    segment = data.segment() if data is not None else ""
    wat = f"""
(component
  (core module $m
    (memory (export "memory") {memory_pages})
    (global $heap (mut i32) (i32.const {HEAP}))
    {segment}
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32) (local $need i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (local.set $need (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (if (i32.gt_s (local.get $need) (i32.const 0))
        (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $need) (i32.const 16)) (i32.const 1)))
                          (i32.const -1))
                (then unreachable))))
      (local.get $p))
    (func (export "post-return") (param i32) (global.set $heap (i32.const {HEAP})))
    {helpers}
    (func (export "on-request") {_REQUEST_PARAMS} {on_request})
    (func (export "on-response") {_RESPONSE_PARAMS} {on_response})
  )
  (core instance $i (instantiate $m))
  (alias core export $i "memory" (core memory $mem))
  (alias core export $i "cabi_realloc" (core func $realloc))
  {_TYPES}
  (func $on-req (param "req" $req) (result $action)
    (canon lift (core func $i "on-request") (memory $mem) (realloc $realloc) string-encoding=utf8
      (post-return (core func $i "post-return"))))
  (func $on-resp (param "resp" $resp) (result $action)
    (canon lift (core func $i "on-response") (memory $mem) (realloc $realloc) string-encoding=utf8
      (post-return (core func $i "post-return"))))
  {_SHIM}
  (instance $hooks (instantiate $shim
    (with "import-func-on-request" (func $on-req))
    (with "import-func-on-response" (func $on-resp))
    (with "import-type-header" (type $header))
    (with "import-type-http-request" (type $req))
    (with "import-type-http-response" (type $resp))
    (with "import-type-modification" (type $mod))
    (with "import-type-rejection" (type $rej))
    (with "import-type-action" (type $action))))
  (export "shepherd:plugin/hooks@0.1.0" (instance $hooks))
)
"""
    return bytes(wasmtime.wat2wasm(wat))


def sha256(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


# -- the guests ------------------------------------------------------------------------------------

def noop() -> bytes:
    return component(CONTINUE, CONTINUE)


def header_adder(name: str = "x-plugin-tag", value: str = "wasm-was-here",
                 response_name: str = "x-plugin-response", response_value: str = "seen") -> bytes:
    """Adds a header to every request (the worker sees it) and to every response."""
    data = Data()
    on_request = modify_action(data, add=[(name, value)])
    on_response = modify_action(data, add=[(response_name, response_value)])
    return component(f"(i32.const {on_request})", f"(i32.const {on_response})", data)


def header_rewriter() -> bytes:
    """Replaces one header and removes another on each request: the benchmark's realistic plugin."""
    data = Data()
    on_request = modify_action(data, set_=[("x-tenant", "rewritten")], remove=["x-debug"])
    return component(f"(i32.const {on_request})", CONTINUE, data)


def rejecter(status: int = 403, message: str | None = "blocked by the policy plugin") -> bytes:
    """Rejects every request with an OpenAI-style error body (message None: an empty body, which the
    gateway fills in)."""
    data = Data()
    body = "" if message is None else ('{"error":{"message":"' + message + '","type":"permission_error",'
                                       '"param":null,"code":"policy_blocked"}}')
    action = reject_action(data, status, body, [("x-rejected-by", "policy-plugin")])
    return component(f"(i32.const {action})", CONTINUE, data)


# Replaces every "secret" in the body with "******", in place (the body the host passed lives in
# guest memory until post-return), and returns it as the new body.
_REDACT = """
    (func $redact (param $ptr i32) (param $len i32) (result i32)
      (local $i i32) (local $end i32)
      (local.set $end (i32.sub (i32.add (local.get $ptr) (local.get $len)) (i32.const 5)))
      (local.set $i (local.get $ptr))
      (block $done
        (loop $scan
          (br_if $done (i32.ge_s (local.get $i) (local.get $end)))
          (if (i32.and
                (i32.eq (i32.load (local.get $i)) (i32.const 0x72636573))          ;; "secr"
                (i32.eq (i32.load16_u (i32.add (local.get $i) (i32.const 4))) (i32.const 0x7465)))  ;; "et"
            (then
              (i32.store (local.get $i) (i32.const 0x2a2a2a2a))
              (i32.store16 (i32.add (local.get $i) (i32.const 4)) (i32.const 0x2a2a))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $scan)))
      ;; modify { status: none, no header changes, body: some(body) }
      (memory.fill (i32.const 16) (i32.const 0) (i32.const 44))
      (i32.store8 (i32.const 16) (i32.const 1))
      (i32.store8 (i32.const 48) (i32.const 1))
      (i32.store (i32.const 52) (local.get $ptr))
      (i32.store (i32.const 56) (local.get $len))
      (i32.const 16))
"""


def redactor() -> bytes:
    """Rewrites request and response bodies: every "secret" becomes "******"."""
    return component("(call $redact (local.get 8) (local.get 9))", "(call $redact (local.get 3) (local.get 4))",
                     helpers=_REDACT)


def spinner() -> bytes:
    """Loops forever on each request: only its time limit stops it."""
    return component(f"(loop $forever (br $forever)) (i32.const {RESULT})")


def memory_hog() -> bytes:
    """Grows its memory 1 MiB at a time until the host refuses, then fails like an allocator would."""
    return component("""
      (block $refused
        (loop $more
          (br_if $refused (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
          (br $more)))
      unreachable""")


def big_initial_memory(pages: int) -> bytes:
    """Asks for more memory up front than a store allows: refused when it is added."""
    return component(CONTINUE, CONTINUE, memory_pages=pages)


def response_replacer(body: str, status: int) -> bytes:
    """Answers every buffered response with its own status and body (of another length)."""
    data = Data()
    action = modify_action(data, status=status, body=body, set_=[("content-type", "application/json")])
    return component(CONTINUE, f"(i32.const {action})", data)


def credential_setter() -> bytes:
    """Tries to set Authorization: an action the host refuses (invalid_action)."""
    data = Data()
    action = modify_action(data, set_=[("authorization", "Bearer stolen")])
    return component(f"(i32.const {action})", CONTINUE, data)


def python_guest(name: str, out_dir: str) -> bytes:
    """Build tests/plugin_guests/NAME/app.py into a component with componentize-py (tens of seconds:
    it bundles a Python interpreter)."""
    import os
    import subprocess
    import sys

    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugin_guests", name)
    wit = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shepherd", "plugins", "wit")
    out = os.path.join(out_dir, f"{name}.wasm")
    tool = os.path.join(os.path.dirname(sys.executable), "componentize-py")
    subprocess.run([tool, "-d", wit, "-w", "plugin", "componentize", "--stub-wasi", "-p", source, "app", "-o", out],
                   check=True, capture_output=True, timeout=600)
    with open(out, "rb") as handle:
        return handle.read()

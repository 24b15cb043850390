from __future__ import annotations

import os
import re

from multidict import CIMultiDict, CIMultiDictProxy

from shepherd.middleware.request_id import is_valid_request_id, new_request_id, resolve_request_id
from shepherd.routers.common.headers import client_response_headers, upstream_request_headers


def _proxy(**headers: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))


def test_upstream_headers_drop_hop_by_hop_and_connection_listed() -> None:
    headers = upstream_request_headers(
        _proxy(host="gw", connection="keep-alive, X-Secret", x_secret="1", te="trailers", upgrade="h2c",
               content_length="10", x_keep="yes", authorization="Bearer client"),
        "rid-1", worker_api_key="worker-key")
    assert headers == {"x-keep": "yes", "authorization": "Bearer client", "x-request-id": "rid-1",
                       "content-type": "application/json"}


def test_gateway_key_is_replaced_by_worker_key() -> None:
    headers = upstream_request_headers(_proxy(authorization="Bearer gw-key"), "r", "worker-key",
                                       gateway_keys=frozenset({"gw-key"}))
    assert headers["authorization"] == "Bearer worker-key"
    stripped = upstream_request_headers(_proxy(authorization="Bearer gw-key"), "r", None,
                                        gateway_keys=frozenset({"gw-key"}), has_body=False)
    assert "authorization" not in stripped and "content-type" not in stripped


def test_client_request_id_header_replaces_any_other_spelling() -> None:
    headers = upstream_request_headers(_proxy(x_request_id="client"), "resolved", None)
    assert headers["x-request-id"] == "resolved"


def test_response_headers_drop_hop_by_hop_and_server_owned() -> None:
    upstream = CIMultiDictProxy(CIMultiDict([("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked"),
                                             ("Content-Length", "5"), ("Date", "x"), ("Server", "uvicorn"),
                                             ("X-Engine", "a"), ("X-Engine", "b")]))
    headers = client_response_headers(upstream)
    assert list(headers.items()) == [("Content-Type", "text/event-stream"), ("X-Engine", "a"), ("X-Engine", "b")]


def test_request_ids() -> None:
    assert new_request_id("/v1/chat/completions").startswith("chatcmpl-")
    assert new_request_id("/v1/completions").startswith("cmpl-")
    assert new_request_id("/v1/messages").startswith("msg_")
    assert new_request_id("/v1/embeddings").startswith("req-")
    assert new_request_id("/generate") != new_request_id("/generate")
    assert not is_valid_request_id("") and not is_valid_request_id("a b") and not is_valid_request_id("x" * 129)
    assert not is_valid_request_id("caf\u00e9")
    names = ("x-request-id", "x-correlation-id")
    assert resolve_request_id({"x-correlation-id": "c-1"}, "/generate", names) == "c-1"
    assert resolve_request_id({"x-request-id": "bad\nid", "x-correlation-id": "c-2"}, "/g", names) == "c-2"


def test_minted_ids_are_distinct_random_hex_across_refills() -> None:
    ids = [new_request_id("/v1/embeddings") for _ in range(1000)]  # several batches of random bytes
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch("req-[0-9a-f]{24}", i) for i in ids)


def test_a_forked_child_mints_none_of_its_parents_next_ids() -> None:
    new_request_id("/generate")  # the parent holds random bytes for its next ids
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running the parent's cleanup
        os.write(writer, " ".join(new_request_id("/generate") for _ in range(5)).encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(pid, 0)
    with os.fdopen(reader) as pipe:
        child = set(pipe.read().split())
    parent = {new_request_id("/generate") for _ in range(5)}
    assert len(child) == 5 and not child & parent

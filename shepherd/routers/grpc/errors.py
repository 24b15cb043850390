"""gRPC status codes from a worker, as the HTTP errors a client sees."""

from __future__ import annotations

import grpc

from shepherd.errors import GatewayError

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.CANCELLED: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


def worker_error(exc: grpc.aio.AioRpcError, url: str) -> GatewayError:
    code = exc.code()
    status = http_status(code)
    name = "invalid_request" if status == 400 else f"worker_{code.name.lower()}"
    return GatewayError(status, name, f"Worker {url} answered {code.name}: {exc.details() or 'no details'}")

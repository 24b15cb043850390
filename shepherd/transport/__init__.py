"""How the gateway talks HTTP to workers: one small interface, two clients, and a fake for tests.

* `LeanTransport` (lean.py): the hot path to local engines; a keep-alive HTTP/1.1 client on
  httptools that forwards bytes it never inspects.
* `ProviderTransport` (provider.py): external providers over the internet; a full client (aiohttp)
  that honours HTTP(S)_PROXY / NO_PROXY, a custom CA bundle and a client certificate.
* `FakeTransport` (fake.py): scripted workers in process, for router tests.

Routers see only `Transport` and `TransportResponse` (base.py) and the errors in errors.py.
"""

from shepherd.transport.base import Transport, TransportResponse
from shepherd.transport.errors import UpstreamError, UpstreamTimeout

__all__ = ["Transport", "TransportResponse", "UpstreamError", "UpstreamTimeout"]

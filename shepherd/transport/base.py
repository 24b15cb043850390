"""The interface between routers and whatever carries their requests to a worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Protocol


class TransportResponse(Protocol):
    """The head of a worker's response; the body follows, read whole or as it arrives."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive."""
        ...

    @property
    def content_length(self) -> int | None: ...

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; raises UpstreamError if the worker breaks off."""
        ...

    @property
    def body_done(self) -> bool:
        """Every byte of the body has arrived and been handed out: the chunk `iter_chunks` gave last
        was the last one (a relay can end its own stream in the same write). False when unknown."""
        ...

    @property
    def body_ready(self) -> bool:
        """Body bytes (or its end) have arrived and not been handed out yet: the next step of
        `iter_chunks` gives them without waiting on the worker. False when unknown."""
        ...

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; with `limit`, ValueError once more than that arrived."""
        ...

    def close(self) -> None:
        """Done with the response: a complete one frees its connection, an unfinished one aborts it
        (which tells the worker nobody is listening)."""
        ...


class Transport(Protocol):
    async def request(
        self,
        method: str,
        base_url: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes | None,
        total_timeout: float | None,
    ) -> TransportResponse:
        """Send a request; return once the response head arrived. UpstreamError (or UpstreamTimeout)
        when the worker gave none. `total_timeout` bounds the whole exchange, body included."""
        ...

    async def close(self) -> None:
        ...

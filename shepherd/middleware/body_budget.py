"""A bound on the request-body bytes the gateway holds at once, across all requests.

Each request body is read whole before it is routed (and kept until its response is done, so a
retry can resend it). `--max-payload-size` bounds one body; this bounds their sum, so many large
uploads at once cannot take the gateway's memory: a body that does not fit gets a 503 with
Retry-After instead of being read.
"""

from __future__ import annotations


class BodyBudget:
    __slots__ = ("limit", "held")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0  # bytes reserved by the bodies of requests still being handled

    def take(self, size: int) -> bool:
        """Reserve `size` bytes; False (nothing reserved) when they do not fit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size

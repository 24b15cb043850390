"""What a transport raises when a worker gave no (complete) answer."""

from __future__ import annotations

import asyncio


class UpstreamError(Exception):
    """The worker could not be reached or broke the connection."""


class UpstreamTimeout(UpstreamError, asyncio.TimeoutError):
    """The worker did not answer (or finish answering) within the deadline."""

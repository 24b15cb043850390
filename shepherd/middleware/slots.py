"""A bounded number of slots with FIFO queues in front: the one waiting mechanism admission uses.

At most `limit` holders at once. A caller that finds no free slot (or others already waiting) waits in
the queue of its class; a released slot goes straight to the oldest waiter of the highest class, so a
slot is never free while someone waits. The gateway-wide admission controller (one queue per priority
class), the PD router's per-prefill-worker admission and its decode running-window gate each hold one.
Bounds on the queues (how many may wait) are the owners' decision; this class only counts them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class SlotQueue:
    __slots__ = ("limit", "in_flight", "queued", "_queues")

    def __init__(self, limit: int, classes: int = 1) -> None:
        self.limit = limit
        self.in_flight = 0
        self.queued = 0  # waiters in all queues
        self._queues: list[deque[asyncio.Future[None]]] = [deque() for _ in range(classes)]

    def waiting(self, rank: int = 0) -> int:
        return len(self._queues[rank])

    def try_take(self) -> bool:
        """Take a free slot if there is one and nobody waits for it."""
        if self.in_flight < self.limit and not self.queued:
            self.in_flight += 1
            return True
        return False

    async def wait(self, rank: int, within: float) -> bool:
        """Queue in class `rank` for a slot: True once it is the caller's, False if `within` seconds passed first.
        A waiter preempted (`preempt_below`) gets the exception it was given; a caller cancelled while
        waiting leaves the queue, and a slot handed to it in that instant goes on to the next waiter."""
        queue = self._queues[rank]
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        self.queued += 1
        try:
            await asyncio.wait_for(asyncio.shield(waiter), within)
        except TimeoutError:
            if waiter.done():  # the slot (or a preemption) arrived just as the wait timed out
                waiter.result()
                return True
            self._leave(queue, waiter)
            return False
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()
            elif not waiter.done():
                self._leave(queue, waiter)
            raise
        return True

    def release(self) -> None:
        """Hand a slot back: to the oldest waiter of the highest class, else it is free."""
        for queue in reversed(self._queues):
            if queue:
                queue.popleft().set_result(None)
                self.queued -= 1
                return
        self.in_flight -= 1

    def resize(self, limit: int) -> None:
        """A new limit; slots it frees go to waiters at once (a shrink takes effect as holders leave)."""
        self.limit = limit
        while self.queued and self.in_flight < self.limit:
            self.in_flight += 1
            self.release()

    def preempt_below(self, rank: int, error: Callable[[], BaseException]) -> bool:
        """Answer the newest waiter of the lowest class below `rank` with `error()`; False when there is none."""
        for queue in self._queues[:rank]:
            if queue:
                queue.pop().set_exception(error())
                self.queued -= 1
                return True
        return False

    def _leave(self, queue: deque[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
        queue.remove(waiter)  # queues are bounded by their owners: a scan is cheap
        self.queued -= 1
        waiter.cancel()


class Slot:
    """A slot held on a SlotQueue (or nothing, where no limit applies); `release()` may be called again."""

    __slots__ = ("_queue",)

    def __init__(self, queue: SlotQueue | None = None) -> None:
        self._queue = queue

    def release(self) -> None:
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.release()

"""Control-plane loops stop when told to, even when code inside them catches the cancellation."""

from __future__ import annotations

import asyncio
import logging

from shepherd.periodic import BackgroundTask, Periodic

log = logging.getLogger("test")


async def _stopped_within(task: BackgroundTask, seconds: float) -> bool:
    """Whether task.stop() returned within `seconds` (a regression fails the test, not hangs it)."""
    stopping = asyncio.ensure_future(task.stop())
    done, _ = await asyncio.wait({stopping}, timeout=seconds)
    return stopping in done


async def test_a_loop_whose_round_catches_the_cancel_still_stops() -> None:
    rounds = 0
    swallowing = True  # turned off at the end, so that even a regression's loop ends with the test

    async def round_() -> None:  # as a client library that retries on any error might
        nonlocal rounds
        rounds += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if not swallowing:
                raise

    loop = Periodic("swallower", 0.01, round_, log)
    loop.start()
    await asyncio.sleep(0.05)
    try:
        assert await _stopped_within(loop, 5)
        assert not loop.running and rounds == 1  # no round after the one the cancel hit
    finally:
        swallowing = False


async def test_a_task_that_catches_every_cancel_but_one_is_cancelled_until_it_ends() -> None:
    class Stubborn(BackgroundTask):
        caught = 0
        give_up = False  # set at the end, so that even a regression's task ends with the test

        async def _run(self) -> None:
            while True:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    self.caught += 1
                    if self.caught == 3 or self.give_up:
                        raise

    task = Stubborn()
    task.start()
    await asyncio.sleep(0)
    try:
        assert await _stopped_within(task, 10)
        assert not task.running and task.caught == 3
    finally:
        task.give_up = True


async def test_stop_still_raises_what_the_task_raised() -> None:
    class Broken(BackgroundTask):
        async def _run(self) -> None:
            raise RuntimeError("boom")

    task = Broken()
    task.start()
    await asyncio.sleep(0)
    try:
        await task.stop()
    except RuntimeError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("stop() hid the task's error")

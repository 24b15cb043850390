"""The supervisor's restart loop: a child it spawns while a stop signal arrives is stopped too."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from shepherd import supervisor as supervisor_module
from shepherd.config import GatewayConfig, ProcessConfig
from shepherd.supervisor import Supervisor


class _FakeChild:
    def __init__(self, pid: int, exits_at_once: bool) -> None:
        self.pid = pid
        self.returncode: int | None = 1 if exits_at_once else None
        self.signals: list[int] = []
        self._exited = asyncio.Event()
        if exits_at_once:
            self._exited.set()

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.returncode = -sig
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode


async def test_a_child_spawned_while_the_stop_signal_arrives_is_told_to_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor = Supervisor(GatewayConfig(process=ProcessConfig(workers=1)), ["launch"])
    children: list[_FakeChild] = []

    async def spawn(*args: Any, **kwargs: Any) -> _FakeChild:
        first = not children
        if not first:  # the restart: SIGTERM reaches the supervisor while the child is being spawned
            supervisor._on_signal(signal.SIGTERM)
        child = _FakeChild(1000 + len(children), exits_at_once=first)
        children.append(child)
        return child

    monkeypatch.setattr(supervisor_module.asyncio, "create_subprocess_exec", spawn)
    monkeypatch.setattr(supervisor_module, "INITIAL_BACKOFF_SECS", 0.01)
    keep = asyncio.ensure_future(supervisor._keep(0))
    done, _ = await asyncio.wait({keep}, timeout=5)
    assert keep in done, "the supervisor waits for a child nobody told to stop"
    assert len(children) == 2 and children[1].signals == [signal.SIGTERM]

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shepherd.testing import Gateway, Sim
from shepherd.testing.databases import PostgresServer, RedisServer

_MARKS = {"unit": "unit", "integration": "integration", "contract": "integration"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test by its folder: tests/unit -> unit; tests/integration and tests/contract
    (real processes and sockets) -> integration. `pytest -m unit` runs the fast ones only."""
    root = Path(__file__).parent
    for item in items:
        folder = Path(str(item.path)).relative_to(root).parts[0]
        item.add_marker(_MARKS[folder])


@pytest.fixture(scope="session", autouse=True)
def _private_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Gateways built in tests (in-process or child processes) keep default SQLite history in a temp
    dir, never in the user's ~/.local/share/shepherd."""
    previous = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("data-home"))
    yield
    if previous is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = previous


@pytest.fixture(scope="session")
def sims() -> Iterator[Sim]:
    """Two realistic simulated engines serving `mock-model`, shared by the session (reset per test)."""
    sim = Sim(2, "--model", "mock-model", "--output-tokens", "16")
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def gateway(sims: Sim) -> Iterator[Gateway]:
    gw = Gateway(sims.urls, "--policy", "round_robin")
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _reset_shared_sims(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sims" in request.fixturenames:
        request.getfixturevalue("sims").reset()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on loopback for the session (tests namespace their keys)."""
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL cluster on loopback for the session (tests that need a clean one create a database)."""
    server = PostgresServer()
    yield server
    server.stop()

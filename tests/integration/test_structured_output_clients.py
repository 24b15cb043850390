"""Structured-output clients against `make run`'s demo (`shepherd demo`: the gateway in front of two
simulated engines, started as `make run` starts it): instructor in its JSON, JSON_SCHEMA, MD_JSON,
TOOLS and TOOLS_STRICT modes and streamed partials, and langchain's `with_structured_output`.

instructor lives in .venv-instructor (`make test-clients`; it cannot share the test venv, see
tests/clients/instructor-requirements.txt), so it runs as a child process with that venv's Python."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from shepherd.testing import Process, free_ports
from shepherd.testing.processes import ROOT

pytestmark = pytest.mark.integration

INSTRUCTOR_VENV = Path(ROOT) / ".venv-instructor"
INSTRUCTOR_PYTHON = INSTRUCTOR_VENV / "bin" / "python"
INSTRUCTOR_SCRIPT = Path(ROOT) / "tests" / "clients" / "instructor_extract.py"
MODEL = "mock-model"


class City(BaseModel):
    name: str
    population: int
    coastal: bool
    districts: list[str]


def _two_free_ports_in_a_row() -> int:
    """The demo's engines take --worker-port and the ports after it."""
    for _ in range(50):
        (base,) = free_ports(1)
        with socket.socket() as after:
            try:
                after.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise AssertionError("no two consecutive free ports on loopback")


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    port, metrics_port = free_ports(2)
    # The demo's gateway takes the rest of its launch flags from the environment, as `shepherd launch`
    # does: a free metrics port keeps it off the default one another test's gateway may hold, and the
    # timing ones only make it start and stop sooner.
    process = Process(["demo", "--port", str(port), "--worker-port", str(_two_free_ports_in_a_row())],
                      f"http://127.0.0.1:{port}/readiness", timeout=60,
                      env={"SHEPHERD_PROMETHEUS_PORT": str(metrics_port), "SHEPHERD_SHUTDOWN_SETTLE_SECS": "0",
                           "SHEPHERD_WORKER_STARTUP_CHECK_INTERVAL": "0.2"})
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.stop()


def test_instructor_modes(demo: str) -> None:
    if not (INSTRUCTOR_VENV / ".installed").exists():  # the stamp: the venv is whole, not half installed
        pytest.fail(f"{INSTRUCTOR_VENV} is missing or incomplete: run `make test-clients` "
                    "(instructor needs a venv of its own)")
    done = subprocess.run([str(INSTRUCTOR_PYTHON), str(INSTRUCTOR_SCRIPT), demo, MODEL], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    results = {(r["mode"], r["stream"]): r for r in map(json.loads, done.stdout.splitlines())}
    assert set(results) == {("json", False), ("json_schema", False), ("md_json", False), ("tools", False),
                            ("tools_strict", False), ("json", True)}
    for key, result in results.items():
        assert "error" not in result, f"instructor {key}: {result['error']}"
        city = City.model_validate(result["city"])
        assert city.name, key
    # JSON modes (MD_JSON: the schema in the prompt, the answer in a ```json block): every field filled,
    # the list included.
    for mode in ("json", "json_schema", "md_json"):
        assert results[(mode, False)]["type"] == "City" and results[(mode, False)]["city"]["districts"]
    # Tool modes: the forced call's arguments (the prompt's last word for a string) came back as the model.
    for mode in ("tools", "tools_strict"):
        assert results[(mode, False)]["city"]["name"] == "Lisbon"
    assert results[("json", True)]["partials"] > 1  # streamed: instructor saw the object grow


def test_langchain_with_structured_output(demo: str) -> None:
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model=MODEL, base_url=demo, api_key="unused", max_retries=0)
    for method in ("json_schema", "json_mode", "function_calling"):
        city = model.with_structured_output(City, method=method).invoke(
            f"Describe a city as JSON matching {json.dumps(City.model_json_schema())}")
        assert isinstance(city, City), method


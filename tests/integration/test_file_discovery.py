"""File discovery: the gateway's worker set follows a YAML/JSON file; a bad file keeps the last good set."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import yaml

from shepherd.testing import Gateway, Sim, wait_until
from tests.integration.test_kubernetes_discovery import Load


def _write(path: Path, text: str) -> None:
    """Atomically, as the docs tell writers to: a temp file, then a rename."""
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def _urls(gateway: Gateway) -> set[str]:
    return {w["url"] for w in gateway.workers()}


def test_file_discovery_follows_the_file(tmp_path: Path) -> None:
    sim = Sim(3, "--model", "mock-model", "--output-tokens", "8")
    manual, first, second = sim.urls
    path = tmp_path / "workers.yaml"
    gw = Gateway([manual], "--discovery-provider", "file", "--discovery-file", str(path),
                 "--discovery-check-interval-secs", "30", "--worker-drain-timeout-secs", "10", expect_workers=1)
    load = None
    try:
        assert _urls(gw) == {manual}  # the file does not exist yet: nothing discovered, nothing removed

        _write(path, yaml.safe_dump([{"id": "first", "url": first.removeprefix("http://"), "labels": {"zone": "a"}},
                                     {"url": second, "priority": 7}]))
        wait_until(lambda: _urls(gw) == {manual, first, second}, 20, message="the file's workers")
        workers = {w["url"]: w for w in gw.workers()}
        assert workers[first]["labels"]["zone"] == "a"
        assert workers[first]["labels"]["shepherd.ai/discovery-id"] == "first"
        assert workers[second]["priority"] == 7

        load = Load(gw.url)
        wait_until(lambda: load.ok >= 5, 20, message="requests to flow")

        # A broken file (bad YAML, an unknown field, a duplicate) changes nothing.
        for count, bad in enumerate(("[{url: ", orjson.dumps([{"url": first, "colour": "red"}]).decode(),
                    orjson.dumps({"version": 1, "workers": [{"url": first}, {"url": first}]}).decode()), 1):
            _write(path, bad)
            wait_until(lambda count=count: gw.output().count("rejected, keeping the last good worker set") >= count, 20,
                       message="the bad file to be reported")
        assert "colour" in gw.output() and "duplicate url" in gw.output()
        assert _urls(gw) == {manual, first, second}

        # JSON with a version works too; the dropped worker is drained and removed under traffic.
        _write(path, orjson.dumps({"version": 1, "workers": [{"id": "first", "url": first,
                                                               "labels": {"zone": "a"}}]}).decode())
        wait_until(lambda: _urls(gw) == {manual, first}, 20, message="the second worker to be removed")
        served = load.ok
        wait_until(lambda: load.ok >= served + 5, 20, message="requests to keep flowing")

        # A changed entry is re-registered with the new spec.
        _write(path, yaml.safe_dump([{"id": "first", "url": first, "labels": {"zone": "b"}}]))
        wait_until(lambda: [w["labels"].get("zone") for w in gw.workers() if w["url"] == first] == ["b"], 20,
                   message="the changed worker")

        # The file is removed: a missing file keeps the last good set as well.
        path.unlink()
        wait_until(lambda: "No such file" in gw.output(), 20, message="the missing file to be reported")
        assert _urls(gw) == {manual, first}
        load.stop()
        assert load.errors == []
    finally:
        if load is not None:
            load.stop()
        gw.stop()
        sim.stop()

"""File discovery: a YAML or JSON list of worker specs, re-read when it changes.

The file is either a list of worker entries or `{"version": 1, "workers": [...]}`. Parsing is
strict: an unknown field, a bad value, or a duplicate id or URL rejects the whole file, and the last
good set stays in force (a half-written or broken file never removes workers). The file may be
missing at start-up and appear later. Writers should replace it atomically (write, then rename).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import Any

import yaml

from shepherd.discovery.reconciler import DesiredWorker, Reconciler
from shepherd.periodic import BackgroundTask
from shepherd.workers.spec import SpecError, WorkerSpec
from shepherd.workers.worker import WorkerType

log = logging.getLogger("shepherd.discovery")

_ENTRY_FIELDS = frozenset({"id", "url", "worker_type", "bootstrap_port", "model_id", "models", "runtime_type",
                           "labels", "priority", "cost", "kv_connector", "kv_engine_id", "kv_role"})
_MAX_FILE_BYTES = 16 * 1024 * 1024  # a discovery file larger than this is refused, not read into memory
_STAT_POLL_SECS = 1.0  # how often the file's identity is checked for a change


class DiscoveryFileError(ValueError):
    """The file is not a valid worker list; the message says where."""


def parse_worker_file(text: str, *, pd_disaggregation: bool, api_key: str | None) -> list[DesiredWorker]:
    try:
        data = yaml.safe_load(text) if text.strip() else []
    except yaml.YAMLError as exc:
        raise DiscoveryFileError(f"not valid YAML or JSON: {exc}") from None
    if isinstance(data, dict):
        unknown = set(data) - {"version", "workers"}
        if unknown:
            raise DiscoveryFileError(f"unknown top-level fields: {', '.join(sorted(map(str, unknown)))}")
        if data.get("version", 1) != 1:
            raise DiscoveryFileError(f"unsupported version {data.get('version')!r} (expected 1)")
        data = data.get("workers") or []
    if not isinstance(data, list):
        raise DiscoveryFileError("expected a list of workers, or an object with 'version' and 'workers'")
    workers: list[DesiredWorker] = []
    ids: set[str] = set()
    urls: set[str] = set()
    for index, entry in enumerate(data):
        where = f"workers[{index}]"
        try:
            want = _parse_entry(entry, pd_disaggregation, api_key)
        except (SpecError, DiscoveryFileError) as exc:
            raise DiscoveryFileError(f"{where}: {exc}") from None
        if want.spec.url in urls:
            raise DiscoveryFileError(f"{where}: duplicate url {want.spec.url!r}")
        if want.source_id in ids:
            raise DiscoveryFileError(f"{where}: duplicate id {want.source_id!r}")
        ids.add(want.source_id)
        urls.add(want.spec.url)
        workers.append(want)
    return workers


def _parse_entry(entry: Any, pd_disaggregation: bool, api_key: str | None) -> DesiredWorker:
    if isinstance(entry, str):
        entry = {"url": entry}
    if not isinstance(entry, dict):
        raise DiscoveryFileError("each worker is a URL or an object")
    unknown = set(entry) - _ENTRY_FIELDS
    if unknown:
        raise DiscoveryFileError(f"unknown fields: {', '.join(sorted(map(str, unknown)))}")
    url = entry.get("url")
    if not isinstance(url, str) or not url:
        raise DiscoveryFileError("'url' is required")
    if "://" not in url:
        url = "http://" + url  # host:port and [v6]:port
    if re.search(r"@\d+/?$", url):
        raise DiscoveryFileError("a data-parallel '@rank' suffix is not allowed; use --dp-aware")
    if pd_disaggregation and "worker_type" not in entry:
        raise DiscoveryFileError("'worker_type' is required with --pd-disaggregation")
    if entry.get("bootstrap_port") is not None and entry.get("worker_type") != WorkerType.PREFILL.value:
        raise DiscoveryFileError("'bootstrap_port' is only allowed on prefill workers")
    spec = WorkerSpec.from_json({**entry, "url": url})
    if spec.runtime_type == "external":
        raise DiscoveryFileError("external providers are configured with --external-provider, not discovered")
    spec.api_key = api_key
    source_id = entry.get("id")
    if source_id is None:
        source_id = spec.url
    elif not isinstance(source_id, str) or not source_id:
        raise DiscoveryFileError("'id' must be a non-empty string")
    return DesiredWorker(source_id, spec)


class FileDiscovery(BackgroundTask):
    def __init__(self, path: str, check_interval_secs: float, reconciler: Reconciler, *,
                 pd_disaggregation: bool, api_key: str | None) -> None:
        self.path = path
        self._interval = check_interval_secs
        self._reconciler = reconciler
        self._pd = pd_disaggregation
        self._api_key = api_key
        self._seen: tuple[int, int, int, int] | None = None  # (inode, size, mtime_ns, ctime_ns)
        self._last_error: str | None = None

    def load(self) -> bool:
        """Read the file; apply it if valid. False (and the last good set kept) otherwise."""
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(_MAX_FILE_BYTES + 1)
            if len(raw) > _MAX_FILE_BYTES:
                raise DiscoveryFileError(f"larger than {_MAX_FILE_BYTES // (1024 * 1024)} MiB")
            workers = parse_worker_file(raw.decode("utf-8"), pd_disaggregation=self._pd, api_key=self._api_key)
        except (OSError, UnicodeDecodeError, DiscoveryFileError) as exc:
            message = str(exc) if isinstance(exc, DiscoveryFileError) else f"{exc.__class__.__name__}: {exc}"
            if message != self._last_error:  # once per distinct problem, not every tick
                log.error("discovery file %s rejected, keeping the last good worker set: %s", self.path, message)
                self._last_error = message
            return False
        if self._last_error is not None:
            log.info("discovery file %s is valid again", self.path)
        self._last_error = None
        self._reconciler.set_desired(workers)
        return True

    def _identity(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_full = 0.0
        while True:
            identity = self._identity()
            now = loop.time()
            if identity != self._seen or now >= next_full:
                self._seen = identity
                next_full = now + self._interval
                try:
                    self.load()
                except Exception:
                    log.exception("discovery file %s: reload failed", self.path)
            await asyncio.sleep(min(_STAT_POLL_SECS, self._interval))

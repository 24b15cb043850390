"""The local channel: the processes of one `--workers N` gateway without Redis share namespaces as
JSON files in their supervisor's folder, each write under an exclusive flock and renamed into
place, so a reader never sees half a file. File work is small and runs in a thread."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import os
from typing import Any

import orjson

from shepherd.mesh.store import SharedStore


class FileStore(SharedStore):
    kind = "local"

    def __init__(self, folder: str) -> None:
        self._folder = folder

    def _path(self, namespace: str) -> str:
        return os.path.join(self._folder, f"mesh-{namespace}.json")

    def _load(self, namespace: str) -> dict[str, Any]:
        try:
            with open(self._path(namespace), "rb") as file:
                data: dict[str, Any] = orjson.loads(file.read())
                return data
        except FileNotFoundError:
            return {"version": 0, "entries": {}}

    def _read(self, namespace: str) -> tuple[int, dict[str, bytes]]:
        data = self._load(namespace)
        return int(data["version"]), {k: base64.b64decode(v) for k, v in data["entries"].items()}

    def _write(self, namespace: str, key: str, value: bytes | None, only_if_absent: bool) -> bool:
        path = self._path(namespace)
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._load(namespace)
            entries = data["entries"]
            if only_if_absent and key in entries:
                return False
            if value is None:
                entries.pop(key, None)
            else:
                entries[key] = base64.b64encode(value).decode()
            data["version"] = int(data["version"]) + 1
            temporary = f"{path}.{os.getpid()}.tmp"
            with open(temporary, "wb") as file:
                file.write(orjson.dumps(data))
            os.replace(temporary, path)
        return True

    async def generation(self, namespace: str) -> str:
        return "local"  # the supervisor's folder lives as long as every process that reads it

    async def version(self, namespace: str) -> int:
        return (await asyncio.to_thread(self._read, namespace))[0]

    async def read(self, namespace: str) -> tuple[int, dict[str, bytes]]:
        return await asyncio.to_thread(self._read, namespace)

    async def write(self, namespace: str, key: str, value: bytes | None, *, only_if_absent: bool = False) -> bool:
        return await asyncio.to_thread(self._write, namespace, key, value, only_if_absent)

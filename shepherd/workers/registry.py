"""The worker registry: the one place that knows which workers exist.

The control plane mutates it; the data plane only reads. Reads return immutable tuples that are
rebuilt on every mutation (mutations are rare, reads happen on every request), so a routing decision
never copies, locks or awaits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import TypeVar

from shepherd.workers.worker import Worker, WorkerType


class RegistryEvent(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    UPDATED = "updated"


K = TypeVar("K")

Listener = Callable[[RegistryEvent, Worker], None]


class WorkerRegistry:
    def __init__(self, model_aliases: Mapping[str, str] | None = None) -> None:
        # --model-alias: alias -> canonical model. An alias answers for its model's workers; a worker that
        # serves a model under the alias's own name wins over it.
        self._aliases = dict(model_aliases or {})
        self.has_aliases = bool(self._aliases)
        self._by_id: dict[str, Worker] = {}
        self._by_url: dict[str, Worker] = {}
        self._by_model: dict[str, tuple[Worker, ...]] = {}
        self._by_type: dict[WorkerType, tuple[Worker, ...]] = {}
        self._all: tuple[Worker, ...] = ()
        self._served: frozenset[str] = frozenset()  # names workers serve themselves (ids and their own aliases)
        self._listeners: list[Listener] = []
        # (model, type, connection mode) -> its workers, worked out on first read after a mutation
        # (reads are on every request; walking 256 workers' fields each time cost tens of us)
        self._views: dict[tuple[str | None, WorkerType, str | None], tuple[Worker, ...]] = {}

    # -- reads (data plane) -------------------------------------------------------------------

    def get(self, worker_id: str) -> Worker | None:
        return self._by_id.get(worker_id)

    def get_by_url(self, url: str) -> Worker | None:
        return self._by_url.get(url)

    def all(self) -> tuple[Worker, ...]:
        return self._all

    def of_type(self, worker_type: WorkerType) -> tuple[Worker, ...]:
        return self._by_type.get(worker_type, ())

    def for_model(self, model: str | None, worker_type: WorkerType = WorkerType.REGULAR,
                  connection_mode: str | None = None) -> tuple[Worker, ...]:
        """Workers of `worker_type` (and `connection_mode`, when given) that serve `model`; every
        worker of that type when model is None. The same tuple until the registry changes."""
        key = (model, worker_type, connection_mode)
        view = self._views.get(key)
        if view is None:
            view = self._for_model(model, worker_type)
            if connection_mode is not None:
                view = tuple(w for w in view if w.connection_mode == connection_mode)
            if len(self._views) >= 1024:  # names a client made up (unknown models): bounded
                self._views.clear()
            self._views[key] = view
        return view

    def _for_model(self, model: str | None, worker_type: WorkerType) -> tuple[Worker, ...]:
        if model is None:
            return self._by_type.get(worker_type, ())
        workers = self._by_model.get(model, ())
        if worker_type is WorkerType.REGULAR and all(w.worker_type is worker_type for w in workers):
            return workers
        return tuple(w for w in workers if w.worker_type is worker_type)

    def serves(self, model: str) -> bool:
        """Whether any registered worker serves `model` (by id or alias)."""
        return model in self._by_model

    def models(self) -> list[str]:
        return list(self._by_model)

    def canonical(self, model: str) -> str:
        """The model a requested name stands for: the canonical id of a --model-alias, else the name."""
        target = self._aliases.get(model)
        return target if target is not None and model not in self._served else model

    def aliases_of(self, model: str) -> list[str]:
        """The --model-alias names that currently stand for `model`."""
        return [alias for alias, target in self._aliases.items() if target == model and alias not in self._served]

    def __len__(self) -> int:
        return len(self._by_id)

    # -- mutations (control plane) ------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def add(self, worker: Worker) -> None:
        if worker.url in self._by_url:
            raise ValueError(f"a worker is already registered at {worker.url}")
        self._by_id[worker.id] = worker
        self._by_url[worker.url] = worker
        self._rebuild()
        self._notify(RegistryEvent.ADDED, worker)

    def replace(self, worker: Worker) -> None:
        """Swap in a new Worker object with the same id (e.g. after PATCH)."""
        old = self._by_id[worker.id]
        del self._by_url[old.url]
        self._by_id[worker.id] = worker
        self._by_url[worker.url] = worker
        self._rebuild()
        self._notify(RegistryEvent.UPDATED, worker)

    def remove(self, worker_id: str) -> Worker | None:
        worker = self._by_id.pop(worker_id, None)
        if worker is None:
            return None
        del self._by_url[worker.url]
        self._rebuild()
        self._notify(RegistryEvent.REMOVED, worker)
        return worker

    def _rebuild(self) -> None:
        workers = tuple(self._by_id.values())
        by_model: dict[str, list[Worker]] = {}
        by_type: dict[WorkerType, list[Worker]] = {}
        for worker in workers:
            by_type.setdefault(worker.worker_type, []).append(worker)
            for model in dict.fromkeys((*worker.model_ids, *worker.aliases)):
                by_model.setdefault(model, []).append(worker)
        self._served = frozenset(by_model)
        for alias, canonical in self._aliases.items():
            if alias not in self._served and canonical in by_model:
                by_model[alias] = by_model[canonical]
        self._all = workers
        self._by_model = _freeze(by_model.items())
        self._by_type = _freeze(by_type.items())
        self._views = {}

    def _notify(self, event: RegistryEvent, worker: Worker) -> None:
        for listener in self._listeners:
            listener(event, worker)


def _freeze(items: Iterable[tuple[K, list[Worker]]]) -> dict[K, tuple[Worker, ...]]:
    return {key: tuple(value) for key, value in items}
